"""Curation by rank: 2 ranks write the same shards as 1, the merge checks them against the plan."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from data_curation.curate import CurateConfig, curate, merge
from data_curation.curate_plan import plan_pairs, plan_shards, resolve_rank, shards_of_rank
from track2view.synthetic import generate

CONFIG = CurateConfig(pairs_per_scene=2, seed=0, num_tracks=32, samples_per_shard=1, min_valid_tracks=4)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    base = tmp_path_factory.mktemp("ranks")
    root = generate(base / "synthetic", scenes=2, cameras=2, height=32, width=48, frames=9, seed=2,
                    lenses=("f24_aperture5",))
    out = base / "one"
    manifest = curate(root, out, CONFIG)
    return root, out, manifest


def _cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "data_curation.curate", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _without_run_times(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("throughput", "run")}


def test_two_ranks_write_the_same_shards_and_manifest_as_one(one_rank, tmp_path):
    root, one, manifest = one_rank
    assert manifest["complete"] and manifest["counts"]["shards"] == 4 and manifest["counts"]["accepted"] == 4
    two = tmp_path / "two"
    args = ["--root", root, "--out", two, "--pairs-per-scene", 2, "--num-tracks", 32, "--samples-per-shard", 1,
            "--min-valid-tracks", 4]
    r1 = _cli(*args, RANK="1", WORLD_SIZE="2")  # torchrun's variables; rank 1 first: the manifest must wait
    assert r1.returncode == 0, r1.stderr
    lines = r1.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["[rank 1/2] shard-000001.tar", "[rank 1/2] shard-000003.tar"]
    assert "1 samples, 0 rejected" in lines[0] and "pairs/h); 1/2 shards of this rank" in lines[0]
    assert "2 of 2 shards written now" in lines[2] and "pairs/h" in lines[2]
    assert "2 shards of other ranks not written yet" in r1.stdout and not (two / "manifest.json").exists()
    r0 = _cli(*args, SLURM_PROCID="0", SLURM_NTASKS="2")  # a SLURM step's variables
    assert r0.returncode == 0, r0.stderr
    assert "[rank 0/2] shard-000000.tar" in r0.stdout and "-> " in r0.stdout  # the last rank merges
    names = sorted(p.name for p in one.glob("shard-*.tar"))
    assert names == sorted(p.name for p in two.glob("shard-*.tar")) and len(names) == 4
    for name in names:  # shards are byte-identical, whichever rank wrote them
        assert (one / name).read_bytes() == (two / name).read_bytes()
    merged = json.loads((two / "manifest.json").read_text())
    assert merged["config"] == manifest["config"]
    assert _without_run_times(merged) == _without_run_times({k: v for k, v in manifest.items() if k != "complete"})
    assert merged["throughput"]["pairs"] == 4


def test_merge_checks_that_nothing_is_missing_or_duplicated(one_rank, tmp_path):
    root, one, manifest = one_rank
    out = tmp_path / "copy"
    shutil.copytree(one, out)
    assert _without_run_times(merge(root, out, CONFIG)) == _without_run_times(manifest)
    (out / "shard-000002.tar").unlink()  # a rank that has not finished
    with pytest.raises(ValueError, match=r"cannot merge .*1 shards are not written yet \(shard-000002.tar\)"):
        merge(root, out, CONFIG)
    r = _cli("--root", root, "--out", out, "--pairs-per-scene", 2, "--num-tracks", 32, "--samples-per-shard", 1,
             "--min-valid-tracks", 4, "--merge")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot merge") and len(r.stderr.splitlines()) == 1
    shutil.copy(one / "shard-000002.tar", out / "shard-000002.tar")
    # a summary that lists a key twice (and so misses its own)
    info_path = out / "shard-000003.json"
    info = json.loads(info_path.read_text())
    info["samples"] = json.loads((out / "shard-000002.json").read_text())["samples"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"shard-000003.tar: 1 planned pairs missing, 1 not planned there"):
        merge(root, out, CONFIG)
    shutil.copy(one / "shard-000003.json", info_path)
    shutil.copy(one / "shard-000000.tar", out / "shard-000009.tar")  # a shard outside the plan
    with pytest.raises(ValueError, match=r"shards outside the plan: \['shard-000009.tar'\]"):
        merge(root, out, CONFIG)


def test_ranks_split_the_shards_and_resolve_from_the_environment(one_rank):
    root, _, _ = one_rank
    jobs = plan_shards(plan_pairs(root, 2, 0), 1)
    parts = [shards_of_rank(jobs, r, 3) for r in range(3)]
    assert sorted(j.index for p in parts for j in p) == list(range(len(jobs)))  # each shard once
    assert [j.index for j in parts[1]] == [1]
    assert resolve_rank(environ={}) == (0, 1)
    assert resolve_rank(environ={"RANK": "3", "WORLD_SIZE": "8", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (3, 8)
    assert resolve_rank(environ={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
                                 "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_NTASKS": "1"}) == (4, 8)
    assert resolve_rank(environ={"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    assert resolve_rank(2, 4, environ={"RANK": "0", "WORLD_SIZE": "1"}) == (2, 4)  # flags win
    with pytest.raises(ValueError, match=r"--rank 2 must be in \[0, --world-size 2\)"):
        resolve_rank(2, 2)
