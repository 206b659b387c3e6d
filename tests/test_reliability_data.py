"""Issue 15, the data side. Every bad input of `python -m track2view.synthetic`, `data_curation.precompute` and the
loader is refused before any work with one line (items 7, 8, 10); an output that aliases an input is refused
(item 2); killed writers' temporaries are cleaned and precompute's tars are byte-reproducible (item 9); every kind
of shard corruption is skipped and counted (items 3, 4). The cases are the tables of docs/reliability.md."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import (member_offset, object_npy_payload, pickle_payload, read_shard, sample_members,
                           stage1_sample, stage2_arrays, stage2_sample, truncate_in_member, write_manifest,
                           write_raw_tar, write_shard, write_stage1_shards, write_stage2_shards)
from track2view.data import schema
from track2view.data.datamodule import Track2ViewDataModule
from track2view.data.loader import make_loader
from track2view.synthetic.generate import main as synthetic_main


def _one_error_line(err: str, prefix: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err[-2000:]
    return lines[0]


# ---- synthetic -------------------------------------------------------------------------------------------------
SYNTHETIC = [  # (arguments, what the one line says)
    (["--scenes", "0"], "--scenes 0 must be >= 1"),
    (["--size", "15"], "image size 15x15: height and width must be even"),
    (["--size", "16", "--width", "0"], "image size 16x0"),
    (["--frames", "1"], "--frames 1 must be >= 2"),
    (["--cameras", "1"], "--cameras 1 must be in [2, 99]"),
    (["--cameras", "100"], "--cameras 100 must be in [2, 99]"),
    (["--supersample", "0"], "--supersample 0 must be >= 1"),
    (["--fps", "0"], "--fps 0.0 must be a finite number > 0"),
    (["--fps", "nan"], "--fps nan must be a finite number > 0"),
    (["--seed", "-1"], "--seed -1 must be >= 0"),
    (["--workers", "0"], "--workers 0 must be >= 1"),
    (["--workers", "-3"], "--workers -3 must be >= 1"),
    (["--crf", "99"], "--crf 99 must be in [0, 51]"),
    (["--split", "../../escape"], "--split '../../escape' must be one plain folder name"),
    (["--split", ""], "--split '' must be one plain folder name"),
    (["--lenses", "../../f24_evil"], "--lenses: '../../f24_evil' must be one plain folder name"),
    (["--lenses", "wide"], "cannot read a focal length from lens folder 'wide'"),
    (["--lenses", ","], "--lenses is empty"),
    (["--size", "100000"], "casts 10000000000 rays per frame, above 4194304"),
    (["--size", "2048", "--frames", "200"], "pixels per video, above 536870912"),
]


@pytest.mark.parametrize("args,message", SYNTHETIC, ids=[" ".join(a) for a, _ in SYNTHETIC])
def test_synthetic_refuses_bad_values_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "a" / "b" / "out"
    argv = ["--out", str(out), "--scenes", "1", "--cameras", "2", "--size", "16", "--frames", "3", *args]
    assert synthetic_main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, "python -m track2view.synthetic: error: ")
    assert message in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written, inside --out or outside


def test_synthetic_refuses_an_out_it_cannot_write(tmp_path, capsys):
    (tmp_path / "file").write_text("a file in the way")
    assert synthetic_main(["--out", str(tmp_path / "file"), "--scenes", "1", "--size", "16", "--frames", "3"]) == 2
    assert "cannot write scenes to" in _one_error_line(capsys.readouterr().err, "python -m track2view.synthetic: ")
    if os.geteuid() != 0:  # root writes into a read-only directory anyway
        (tmp_path / "ro").mkdir(mode=0o555)
        assert synthetic_main(["--out", str(tmp_path / "ro"), "--scenes", "1", "--size", "16", "--frames", "3"]) == 2
        assert "Permission denied" in _one_error_line(capsys.readouterr().err, "python -m track2view.synthetic: ")


def test_synthetic_removes_a_killed_writers_temporaries(tmp_path):
    scene = tmp_path / "train" / "f24_aperture5" / "scene1" / "videos"
    scene.mkdir(parents=True)
    stale = scene / ".cam01.mp4.tmp4242-0123abcd.mp4"  # what track2view.io.atomic_path names a temporary
    stale.write_bytes(b"half a video")
    keep = scene / "notes.txt"
    keep.write_text("not ours")
    assert synthetic_main(["--out", str(tmp_path), "--scenes", "1", "--cameras", "2", "--size", "16", "--frames", "3",
                           "--lenses", "f24_aperture5"]) == 0
    assert not stale.exists() and keep.exists() and (scene / "cam01.mp4").is_file()


# ---- precompute ------------------------------------------------------------------------------------------------
@pytest.fixture()
def curated(tmp_path):
    write_stage1_shards(tmp_path / "in", num_shards=1, per_shard=1, num_frames=9, height=32, width=32)
    return write_manifest(tmp_path / "in", {"shard-000000.tar": 1}, kind="curation")


def _precompute(tmp_path, tiny_wan_dir, *extra, out=None, shards=None):
    from data_curation.precompute import main

    return main(["--shards", str(shards or tmp_path / "in"), "--out", str(out or tmp_path / "out"), "--model",
                 str(tiny_wan_dir), "--height", "32", "--width", "32", "--num-frames", "9", "--device", "cpu",
                 "--dtype", "float32", *extra])


PRECOMPUTE = [  # (arguments, what the one line says); {in} is the stage-1 shard directory
    (["--out", "{in}"], "is the directory of --shards"),
    (["--out", "{in}/latents"], "lies inside the directory of --shards"),
    (["--out", "{in}/.."], "holds the directory of --shards"),
    (["--out", "{model}/latents"], "lies inside the directory of --model"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "meta"], "precompute runs on cpu or cuda"),
    (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
    (["--max-text-len", "0"], "--max-text-len 0 must be >= 1"),
    (["--world-size", "0"], "--world-size 0 must be >= 1"),
    (["--rank", "2", "--world-size", "2"], "--rank 2 must be in [0, --world-size 2)"),
    (["--num-frames", "8"], "--num-frames"),
    (["--height", "30"], "--height=30 is not a positive multiple of 16"),
    (["--shards", "pipe:cat {in}/shard-000000.tar"], "is a pipe: URL"),
    (["--shards", "{in}/nope-{{0..1}}.tar"], "shards not found"),
    (["--model", "{in}"], "--model must be a diffusers Wan-2.1 directory"),
]
if not torch.cuda.is_available():
    PRECOMPUTE.append((["--device", "cuda"], "--device cuda: this torch is built without CUDA"
                       if torch.version.cuda is None else "--device cuda: no CUDA device is visible"))


@pytest.mark.parametrize("args,message", PRECOMPUTE, ids=[" ".join(a) for a, _ in PRECOMPUTE])
def test_precompute_refuses_bad_values_and_aliasing_with_one_line(tmp_path, tiny_wan_dir, curated, capsys, args,
                                                                  message):
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    args = [a.format(**{"in": tmp_path / "in", "model": tiny_wan_dir}) for a in args]
    assert _precompute(tmp_path, tiny_wan_dir, *args) == 2
    assert message in _one_error_line(capsys.readouterr().err, "error: ")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and not (tmp_path / "out").exists()  # curation's manifest.json untouched, nothing new
    assert not (Path(tiny_wan_dir) / "latents").exists()


@pytest.mark.parametrize("change", [["--dtype", "bfloat16"], ["--vae-dtype", "bfloat16"], ["--keep-videos"]])
def test_precompute_refuses_to_mix_settings_in_one_output(tmp_path, tiny_wan_dir, curated, capsys, change):
    assert _precompute(tmp_path, tiny_wan_dir) == 0
    (tmp_path / "out" / "shard-000000.tar").unlink()  # a shard left to do: a resumed run with other settings
    capsys.readouterr()
    assert _precompute(tmp_path, tiny_wan_dir, *change) == 2
    line = _one_error_line(capsys.readouterr().err, "error: ")
    key = change[0][2:].replace("-", "_")
    assert "holds shards precomputed with other settings" in line and key in line, line
    assert not (tmp_path / "out" / "shard-000000.tar").exists()


def test_precompute_cleans_temporaries_writes_reproducible_tars_and_counts_duplicates(tmp_path, tiny_wan_dir):
    samples = [stage1_sample(f"f24-scene0-cam01-cam{j + 2:02d}", num_frames=9, height=32, width=32, seed=j)
               for j in range(2)]
    members = sample_members(samples[0]) + sample_members(samples[1]) + sample_members(samples[0])  # key 0 twice
    (tmp_path / "in").mkdir()
    write_raw_tar(tmp_path / "in" / "shard-000000.tar", members)
    out = tmp_path / "out"
    (out / "manifest.d").mkdir(parents=True)
    stale = [out / ".shard-000000.tar.tmp4242-0123abcd.tar", out / "manifest.d" / ".shard-000000.tar.json.tmp4242"
             "-0123abcd.json"]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    assert _precompute(tmp_path, tiny_wan_dir) == 0
    assert not any(p.exists() for p in stale)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["samples"], manifest["skipped"]) == (2, {"duplicate_key": 1})
    assert [s["__key__"] for s in read_shard(out / "shard-000000.tar")] == [s["__key__"] for s in samples]
    time.sleep(1.1)  # a later second: the tar headers' mtime would differ
    assert _precompute(tmp_path, tiny_wan_dir, out=tmp_path / "again") == 0
    assert (out / "shard-000000.tar").read_bytes() == (tmp_path / "again" / "shard-000000.tar").read_bytes()


def test_precompute_reads_pipe_urls_only_when_allowed(tmp_path, tiny_wan_dir, curated):
    url = f"pipe:cat {tmp_path / 'in' / 'shard-000000.tar'}"
    assert _precompute(tmp_path, tiny_wan_dir, shards=url) == 2
    assert _precompute(tmp_path, tiny_wan_dir, "--allow-pipe-urls", shards=url) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["samples"] == 1


# ---- the loader and the data module -----------------------------------------------------------------------------
LOADER = [  # (Track2ViewDataModule arguments, what the message says)
    (dict(num_tracks=100000), "data.num_tracks=100000 must be in [1, 16384]"),
    (dict(num_tracks=0), "data.num_tracks=0 must be in [1, 16384]"),
    (dict(batch_size=0), "data.batch_size=0 must be >= 1"),
    (dict(val_batch_size=0), "data.val_batch_size=0 must be >= 1"),
    (dict(max_text_len=0), "data.max_text_len=0 must be >= 1"),
    (dict(num_workers=-1), "data.num_workers=-1 must be >= 0"),
    (dict(prefetch_factor=0), "data.prefetch_factor=0 must be >= 1"),
    (dict(temporal_stride=0), "data.temporal_stride=0 must be >= 1"),
    (dict(latent_channels=0), "data.latent_channels=0 must be >= 1"),
    (dict(seed=-1), "data.seed=-1 must be >= 0"),
    (dict(conditioning="depth"), "data.conditioning='depth' is not one of"),
]


@pytest.mark.parametrize("kwargs,message", LOADER, ids=[str(k) for k, _ in LOADER])
def test_datamodule_refuses_bad_values_up_front(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as e:
        Track2ViewDataModule(train_shards=str(tmp_path), **kwargs)
    assert message in str(e.value)


def test_train_py_reports_a_bad_data_value_in_one_line(tmp_path, tiny_wan_dir, capsys):
    import train

    write_stage2_shards(tmp_path, num_shards=1, per_shard=1)
    rc = train.main(["fit", "--config", "configs/demo.yaml", "--model.model_path", str(tiny_wan_dir),
                     "--data.train_shards", str(tmp_path), "--data.num_tracks", "100000",
                     "--trainer.default_root_dir", str(tmp_path / "run")])
    assert rc == 2 and "data.num_tracks=100000" in _one_error_line(capsys.readouterr().err, "train.py: error: ")


def test_loader_refuses_pipe_urls_unless_allowed_and_batches_that_do_not_fit_in_memory(tmp_path):
    (path,) = write_stage2_shards(tmp_path, num_shards=1, per_shard=2)
    url = f"pipe:cat {path}"
    with pytest.raises(ValueError, match="is a pipe: URL"):
        make_loader(url, batch_size=1, num_tracks=4, num_workers=0)
    loader = make_loader(url, batch_size=2, num_tracks=4, num_workers=0, resampled=False, allow_pipe_urls=True)
    assert [len(b["key"]) for b in loader] == [2]
    with pytest.raises(ValueError, match="GiB for the 2 batches in flight"):
        make_loader(tmp_path, batch_size=10**7, num_tracks=4, num_workers=0)


# ---- corruptions ------------------------------------------------------------------------------------------------
def _twelve(root, name="shard-000000.tar", manifest=True):
    samples = [stage2_sample(f"f24-scene0-cam01-c{j:02d}", seed=j) for j in range(12)]
    path = write_shard(Path(root) / name, samples)
    if manifest:
        write_manifest(root, {name: 12})
    return path, samples


def _with(sample: dict, member: str, data) -> dict:
    return {**sample, member: data if isinstance(data, bytes) else schema.encode_npz(data)
            if member.endswith(".npz") else schema.encode_npy(data)}


def _corrupt(kind: str, root: Path) -> None:
    """Write the shards of one corruption kind under root (docs/reliability.md, "corruptions")."""
    if kind in ("truncated", "truncated_no_manifest"):
        path, s = _twelve(root, manifest=kind == "truncated")
        truncate_in_member(path, s[3]["__key__"], schema.SOURCE_LATENTS)
    elif kind == "cut_between_samples":
        path, s = _twelve(root)
        path.write_bytes(path.read_bytes()[:member_offset(path, f"{s[3]['__key__']}.cameras.npz")])
    elif kind == "corrupt_header":
        path, s = _twelve(root)
        data, at = bytearray(path.read_bytes()), member_offset(path, f"{s[3]['__key__']}.cameras.npz")
        data[at:at + 512] = np.random.default_rng(0).bytes(512)
        path.write_bytes(bytes(data))
    elif kind in ("garbage_file", "empty_file"):
        path, _ = _twelve(root)
        path.write_bytes(np.random.default_rng(0).bytes(4096) if kind == "garbage_file" else b"")
    else:
        s = [stage2_sample(f"f24-scene0-cam01-c{j:02d}", seed=j) for j in range(3)]
        if kind == "duplicate_key_in_shard":
            write_raw_tar(root / "shard-000000.tar", [m for x in (s[0], s[1], s[0], s[2]) for m in sample_members(x)])
        elif kind == "duplicate_key_across_shards":
            write_shard(root / "shard-000000.tar", s)
            write_shard(root / "shard-000001.tar", [s[1]])
        elif kind == "duplicate_member":
            members = sample_members(s[0])
            write_raw_tar(root / "shard-000000.tar", members + [members[-1]] + sample_members(s[1]) +
                          sample_members(s[2]))
        else:
            s[1] = _sample_corruption(kind, s[1], root)
            write_shard(root / "shard-000000.tar", s)


def _sample_corruption(kind: str, sample: dict, root: Path) -> dict:
    a = stage2_arrays(seed=1)
    if kind == "int64_latents":
        return _with(sample, schema.SOURCE_LATENTS, a["source_latents"].astype(np.int64))
    if kind == "fractional_valid":
        return _with(sample, schema.TRACKS, {**a["tracks"], "valid": a["tracks"]["valid"] * 0.5})
    if kind == "other_frame_count":
        return stage2_sample(sample["__key__"], seed=1, latent_frames=2)
    if kind == "other_text_width":
        return stage2_sample(sample["__key__"], seed=1, text_dim=16)
    if kind == "other_channels":
        return _with(sample, schema.SOURCE_LATENTS, a["source_latents"][:8])
    if kind == "nan_latents":
        a["target_latents"][0, 0, 0, 0] = np.nan
        return _with(sample, schema.TARGET_LATENTS, a["target_latents"])
    if kind == "object_npy":
        return _with(sample, schema.PROMPT_EMBEDS, object_npy_payload(root / "pwned"))
    if kind == "garbage_npz":
        return _with(sample, schema.TRACKS, b"not an npz")
    if kind == "missing_member":
        return {k: v for k, v in sample.items() if k != schema.TARGET_LATENTS}
    if kind == "track_frame_count":
        return _with(sample, schema.TRACKS, stage2_arrays(seed=1, latent_frames=4)["tracks"])
    if kind == "pickle_member":
        return {**sample, "evil.pyd": pickle_payload(root / "pwned")}
    if kind == "extra_npz_key":
        return _with(sample, schema.TRACKS, {**a["tracks"], "confidence": np.ones_like(a["tracks"]["depth"])})
    raise AssertionError(kind)


CORRUPTIONS = {  # kind: (samples arriving, the non-zero counters besides `samples`)
    "truncated": (3, dict(unreadable_shard=9, damaged_shards=1)),
    "truncated_no_manifest": (3, dict(unreadable_shard=1, damaged_shards=1)),
    "cut_between_samples": (3, dict(unreadable_shard=9, damaged_shards=1)),
    "corrupt_header": (3, dict(unreadable_shard=9, damaged_shards=1)),
    "garbage_file": (0, dict(unreadable_shard=12, damaged_shards=1)),
    "empty_file": (0, dict(unreadable_shard=12, damaged_shards=1)),
    "duplicate_key_in_shard": (3, dict(shards=1, duplicate_key=1)),
    "duplicate_key_across_shards": (3, dict(shards=2, duplicate_key=1)),
    "duplicate_member": (3, dict(shards=1, duplicate_key=1)),
    "int64_latents": (2, dict(shards=1, bad_dtype=1)),
    "fractional_valid": (2, dict(shards=1, bad_dtype=1)),
    "other_frame_count": (2, dict(shards=1, shape_mismatch=1)),
    "other_text_width": (2, dict(shards=1, shape_mismatch=1)),
    "other_channels": (2, dict(shards=1, bad_shape=1)),
    "nan_latents": (2, dict(shards=1, non_finite=1)),
    "object_npy": (2, dict(shards=1, decode_error=1)),
    "garbage_npz": (2, dict(shards=1, decode_error=1)),
    "missing_member": (2, dict(shards=1, missing_member=1)),
    "track_frame_count": (2, dict(shards=1, frame_count=1)),
    "pickle_member": (3, dict(shards=1)),
    "extra_npz_key": (3, dict(shards=1)),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_corruption_is_skipped_and_counted_per_sample(tmp_path, kind):
    _corrupt(kind, tmp_path)
    loader = make_loader(tmp_path, batch_size=2, num_tracks=8, num_workers=0, resampled=False)
    keys = [k for batch in loader for k in batch["key"]]
    arriving, counts = CORRUPTIONS[kind]
    stats = loader.dataset.stats.as_dict()
    assert len(keys) == len(set(keys)) == arriving == stats["samples"]
    expected = {"shards": 0, **counts}
    assert {k: v for k, v in stats.items() if v and k not in ("samples", "skipped")} == {
        k: v for k, v in expected.items() if v}, stats
    assert not (tmp_path / "pwned").exists()


def test_a_shard_cut_after_it_was_indexed_loses_only_the_samples_behind_the_cut(tmp_path):
    path, samples = _twelve(tmp_path)
    loader = make_loader(tmp_path, batch_size=4, num_tracks=8, num_workers=0, resampled=False)
    truncate_in_member(path, samples[6]["__key__"], schema.META)
    keys = [k for batch in loader for k in batch["key"]]
    assert keys == [s["__key__"] for s in samples[:6]]
    assert loader.dataset.stats.as_dict()["unreadable_shard"] == 6


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_batches_stay_full_and_in_schedule_order_around_odd_samples(tmp_path, num_workers):
    """Collate-level problems skip the sample, not the run: every training batch is full, the odd samples are
    replaced (counted), and the stream is the same sequence whatever the number of workers."""
    s = [stage2_sample(f"f24-scene0-cam01-c{j:02d}", seed=j) for j in range(6)]
    s[2] = stage2_sample(s[2]["__key__"], seed=2, latent_frames=2)  # another frame count than its batch
    s[4] = stage2_sample(s[4]["__key__"], seed=4, text_dim=16)  # another text width
    write_shard(tmp_path / "shard-000000.tar", s)

    def stream(workers, start=0, n=8):
        loader = make_loader(tmp_path, batch_size=3, num_tracks=8, num_workers=workers, start=start,
                             persistent_workers=False)
        it = iter(loader)
        batches = [next(it) for _ in range(n)]
        return [k for b in batches for k in b["key"]], batches, loader.dataset.stats.as_dict()

    keys, batches, stats = stream(num_workers)
    assert all(b["source_latents"].shape == (3, 16, 3, 4, 6) for b in batches)
    assert s[2]["__key__"] not in keys and s[4]["__key__"] not in keys and stats["shape_mismatch"] >= 4
    reference, _, _ = stream(0)
    assert keys == reference
    assert stream(0, start=9, n=5)[0] == reference[9:]  # a resumed stream is the continuation
