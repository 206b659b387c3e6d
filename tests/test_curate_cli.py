"""curate's command line: every bad value one line and exit 2 before any work; a run that yields no sample fails;
settings written by a run that wrote no shard do not bind the next run."""

import json

import pytest

from data_curation.curate import SETTINGS, main


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from track2view.synthetic import random_scene, write_scene

    root = tmp_path_factory.mktemp("scenes") / "train"
    for i in range(2):
        write_scene(root, random_scene(seed=i, index=i + 1, num_cameras=2, height=32, width=48, num_frames=9,
                                       lens="f24_aperture5"), supersample=1)
    return root


def one_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--num-frames", "0"], "--num-frames must be >= 5"),
    (["--num-tracks", "2000000"], "--num-tracks must be in [2, 65536]"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--min-valid-tracks", "0"], "--min-valid-tracks must be >= 1"),
    (["--tracker", "spatialtracker_v2"], "needs repo_dir"),
])
def test_bad_values_fail_before_any_work(scenes, tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    assert main(["--root", str(scenes), "--out", str(out), "--tracker", "oracle", *args]) == 2
    assert needle in one_error(capsys)
    assert not out.exists()


def test_a_run_that_yields_no_sample_fails_and_its_settings_do_not_bind(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    rejecting = ["--root", str(scenes), "--out", str(out), "--tracker", "oracle", "--num-tracks", "32",
                 "--min-valid-tracks", "1000"]  # more valid tracks than there are tracks: every pair rejected
    assert main(rejecting) == 2
    assert "every pair was rejected" in one_error(capsys)
    assert json.loads((out / "manifest.json").read_text())["counts"]["accepted"] == 0
    # the rejected run wrote shards (empty ones): its settings bind, and other settings are refused
    assert main([*rejecting[:-2], "--min-valid-tracks", "4"]) == 2
    assert "other settings" in one_error(capsys)
    # a run killed before its first shard leaves only its settings: another run may take the folder
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / SETTINGS).write_text(json.dumps({"num_tracks": 7}))
    assert main(["--root", str(scenes), "--out", str(fresh), "--tracker", "oracle", "--num-tracks", "32",
                 "--min-valid-tracks", "4"]) == 0
    assert json.loads((fresh / "manifest.json").read_text())["counts"]["accepted"] > 0
