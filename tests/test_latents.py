"""Latent encoding helpers and the precompute stage, with the tiny real Wan VAE / UMT5 (CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import (pickle_payload, read_shard, stage1_sample, truncate_in_member, write_manifest, write_shard,
                           write_stage1_shards)
from track2view.data import schema
from track2view.data.latents import CenterCrop, encode_prompt, encode_video, resize_and_crop
from track2view.io import read_video


@pytest.fixture(scope="module")
def wan(tiny_wan_dir):
    from diffusers import AutoencoderKLWan, WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    return pipe, AutoencoderKLWan.from_pretrained(Path(tiny_wan_dir) / "vae").eval()


def _normalized_mode(vae, x):
    z = vae.encode(x).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (z - mean) / std


def test_resize_and_crop_moves_a_marker_where_center_crop_maps_its_uv():
    h0, w0, h, w = 48, 96, 32, 32
    frames = np.zeros((1, h0, w0, 3), np.uint8)
    frames[:, 20:24, 60:64] = 255  # a block centred at pixel (x=62, y=22)
    video = resize_and_crop(frames, h, w)
    assert video.shape == (3, 1, h, w) and video.min() >= -1 and video.max() <= 1
    crop = CenterCrop((h0, w0), (h, w))
    assert crop.resized == (32, 64) and crop.offset == (0, 16)
    x, y = crop.apply_uv(np.array([62 / w0, 22 / h0])) * [w, h]
    weight = video[0, 0] + 1
    cy, cx = [(weight.sum(1 - a) * (torch.arange(n) + 0.5)).sum() / weight.sum() for a, n in ((0, h), (1, w))]
    assert abs(cx - x) < 0.5 and abs(cy - y) < 0.5


def test_center_crop_intrinsics_agree_with_uv_mapping():
    crop = CenterCrop((720, 1280), (480, 832))
    k = np.array([[0.7, 0.0, 0.52], [0.0, 1.2, 0.48], [0, 0, 1]], np.float32)
    p = np.array([0.3, -0.2, 1.0], np.float32)  # (x/z, y/z, 1)
    np.testing.assert_allclose(crop.apply_intrinsics(k) @ p, [*crop.apply_uv((k @ p)[:2]), 1.0], atol=1e-6)


def test_encode_video_equals_normalized_vae_encode(wan):
    _, vae = wan
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    latents = encode_video(vae, x)
    assert latents.shape == (2, 16, 2, 4, 4) and latents.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(latents, _normalized_mode(vae, x))
        torch.testing.assert_close(latents[1:], _normalized_mode(vae, x[1:]))  # videos are encoded independently
    with pytest.raises(ValueError, match="4k\\+1"):
        encode_video(vae, x[:, :, :4])


def test_encode_prompt_equals_wan_pipeline_trimmed(wan):
    pipe, _ = wan
    prompts = ["a red car moving on the street", "", "  the  camera view &amp; a room  "]
    ours = encode_prompt(pipe.tokenizer, pipe.text_encoder, prompts)
    with torch.no_grad():
        theirs, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512)
    assert theirs.shape[1] == 512
    for e, t, n in zip(ours, theirs, (8, 1, 7)):  # words + </s>; "&amp;" -> "&" and spaces cleaned as Wan does
        assert e.shape == (n, pipe.text_encoder.config.d_model)
        torch.testing.assert_close(e, t[:n])
        assert (t[n:] == 0).all()


# ---- precompute ---------------------------------------------------------------------------------------------
H, W, T = 32, 32, 9


def _precompute(tmp_path, tiny_wan_dir, *extra, status=0):
    from data_curation.precompute import main

    rc = main(["--shards", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", str(tiny_wan_dir),
               "--height", str(H), "--width", str(W), "--num-frames", str(T), "--batch-size", "2", "--device", "cpu",
               "--dtype", "float32", *extra])
    assert rc == status
    return json.loads((tmp_path / "out" / "manifest.json").read_text()) if rc == 0 else None


def test_precompute_matches_direct_encoding_and_resumes(tmp_path, tiny_wan_dir, wan, capsys):
    pipe, vae = wan
    shards = write_stage1_shards(tmp_path / "in", num_shards=2, per_shard=2, num_frames=11, height=48, width=64)
    short = stage1_sample("f24-scene9-cam01-cam02", num_frames=5, seed=9)  # fewer frames than --num-frames
    write_shard(tmp_path / "in" / "shard-000002.tar", [short, stage1_sample("f24-scene9-cam01-cam03", seed=10)])

    manifest = _precompute(tmp_path, tiny_wan_dir)
    assert (manifest["shards"], manifest["samples"], manifest["skipped"]) == (3, 5, {"too_short": 1})

    stage1, stage2 = read_shard(shards[0])[1], read_shard(tmp_path / "out" / shards[0].name)[1]
    assert stage2["__key__"] == stage1["__key__"]
    assert schema.SOURCE_VIDEO not in stage2 and schema.PROMPT_EMBEDS in stage2
    s, d1 = schema.decode_sample(stage2), schema.decode_sample(stage1)
    with torch.no_grad():
        for view, member in ((schema.SOURCE_LATENTS, schema.SOURCE_VIDEO),
                             (schema.TARGET_LATENTS, schema.TARGET_VIDEO)):
            path = tmp_path / "clip.mp4"
            path.write_bytes(stage1[member])
            frames, _ = read_video(path)
            direct = _normalized_mode(vae, resize_and_crop(frames[:T], H, W)[None])[0]
            assert s[view].dtype == np.float16 and s[view].shape == (16, (T - 1) // 4 + 1, H // 8, W // 8)
            np.testing.assert_allclose(s[view].astype(np.float32), direct.numpy(), atol=2e-3, rtol=2e-3)
        theirs, _ = pipe.encode_prompt(d1[schema.CAPTION], do_classifier_free_guidance=False, max_sequence_length=512)
    n = s[schema.PROMPT_EMBEDS].shape[0]
    assert s[schema.CAPTION] == d1[schema.CAPTION] and n == len(d1[schema.CAPTION].split()) + 1
    np.testing.assert_allclose(s[schema.PROMPT_EMBEDS].astype(np.float32), theirs[0, :n].numpy(), atol=2e-3, rtol=2e-3)

    # tracks and intrinsics cut to T frames and mapped into the 32x32 centre crop of the 48x64 frames
    crop = CenterCrop((48, 64), (H, W))
    uv0 = d1[schema.TRACKS]["uv"][:, :T]
    np.testing.assert_allclose(s[schema.TRACKS]["uv"], crop.apply_uv(uv0), atol=1e-6)
    inside = ((s[schema.TRACKS]["uv"] >= 0) & (s[schema.TRACKS]["uv"] <= 1)).all(-1)
    np.testing.assert_array_equal(s[schema.TRACKS]["valid"], d1[schema.TRACKS]["valid"][:, :T] & inside)
    assert 0 < inside.mean() < 1  # the crop really removed some points
    np.testing.assert_allclose(s[schema.CAMERAS]["intrinsics"],
                               crop.apply_intrinsics(d1[schema.CAMERAS]["intrinsics"][:, :T]), atol=1e-6)
    assert s[schema.META]["latents"]["num_frames"] == T

    # resume: nothing is recomputed; a removed output shard is recomputed alone
    out = tmp_path / "out"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    capsys.readouterr()
    _precompute(tmp_path, tiny_wan_dir)
    assert '"shard"' not in capsys.readouterr().out
    (out / shards[1].name).unlink()
    manifest = _precompute(tmp_path, tiny_wan_dir)
    assert [json.loads(line)["shard"] for line in capsys.readouterr().out.splitlines()[:-1]] == [shards[1].name]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.name != shards[1].name} == \
        {k: v for k, v in stamps.items() if k != shards[1].name}
    assert manifest["samples"] == 5
    capsys.readouterr()
    _precompute(tmp_path, tiny_wan_dir, "--max-text-len", "16", status=2)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "other settings" in last, last


def test_precompute_splits_shards_over_ranks_and_keeps_videos(tmp_path, tiny_wan_dir):
    write_stage1_shards(tmp_path / "in", num_shards=3, per_shard=1, num_frames=9, height=32, width=32)
    manifest = _precompute(tmp_path, tiny_wan_dir, "--rank", "1", "--world-size", "2", "--keep-videos")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["shard-000001.tar"]
    assert manifest["shards"] == 1
    assert schema.SOURCE_VIDEO in read_shard(tmp_path / "out" / "shard-000001.tar")[0]


def test_precompute_never_writes_a_broken_shard_counts_its_samples_and_never_unpickles(tmp_path, tiny_wan_dir,
                                                                                        capsys):
    """Issue 15 item 3: an input shard that breaks off is not written under its final name nor marked done, the run
    exits 1 with one line, its samples are counted as lost (3, from the curation manifest: not 1 per shard), and a
    re-run after the repair writes it."""
    marker, kw = tmp_path / "pwned", dict(num_frames=9, height=32, width=32)
    good = stage1_sample("f24-scene0-cam01-cam02", seed=0, **kw)
    good["evil.pyd"] = pickle_payload(marker)
    write_shard(tmp_path / "in" / "shard-000000.tar", [good])
    broken = [stage1_sample(f"f24-scene1-cam01-cam{j + 2:02d}", seed=j + 1, **kw) for j in range(3)]
    truncate_in_member(write_shard(tmp_path / "in" / "shard-000001.tar", broken), broken[1]["__key__"],
                       schema.TARGET_VIDEO)
    write_manifest(tmp_path / "in", {"shard-000000.tar": 1, "shard-000001.tar": 3}, kind="curation")
    capsys.readouterr()
    _precompute(tmp_path, tiny_wan_dir, status=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 1 input shards could not be read to the end") and "3 samples lost" in err[-1]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tar" or ".tmp" in p.name) == ["shard-000000.tar"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["shards"], manifest["samples"], manifest["lost_samples"]) == (1, 1, 3)
    assert manifest["failed_shards"]["shard-000001.tar"]["lost"] == 3
    (sample,) = read_shard(out / "shard-000000.tar")
    assert sample["__key__"] == good["__key__"] and "evil.pyd" not in sample and not marker.exists()

    _precompute(tmp_path, tiny_wan_dir, status=1)  # not marked done: retried, and still broken
    write_shard(tmp_path / "in" / "shard-000001.tar", broken)  # repaired
    manifest = _precompute(tmp_path, tiny_wan_dir)
    assert (manifest["shards"], manifest["samples"], manifest["lost_samples"]) == (2, 4, 0)
    assert manifest["failed_shards"] == {}


def test_a_sample_the_encoder_fails_on_is_skipped_and_counted_not_the_run(tmp_path, tiny_wan_dir, monkeypatch):
    """Fault injection into the third-party VAE: NaN latents for one video, an error (as CUDA out of memory) for
    another; both samples are skipped with their reason, every other sample and shard is written."""
    from diffusers import AutoencoderKLWan

    write_stage1_shards(tmp_path / "in", num_shards=2, per_shard=3, num_frames=9, height=32, width=32)
    encode, calls = AutoencoderKLWan.encode, []

    def faulty_encode(self, x, *args, **kwargs):  # batch size 1: calls 2k, 2k+1 are sample k's source, target
        calls.append(len(calls))
        if calls[-1] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        out = encode(self, x, *args, **kwargs)
        if calls[-1] == 1:
            out.latent_dist.mean.fill_(float("nan"))
        return out

    monkeypatch.setattr(AutoencoderKLWan, "encode", faulty_encode)
    manifest = _precompute(tmp_path, tiny_wan_dir, "--batch-size", "1")
    assert (manifest["shards"], manifest["samples"]) == (2, 4)
    assert manifest["skipped"] == {"non_finite": 1, "encode_error": 1} and not manifest["shard_errors"]
    record = json.loads((tmp_path / "out" / "manifest.d" / "shard-000000.tar.json").read_text())
    assert record["skipped_keys"] == [["f24-scene0-cam01-cam02", "non_finite"],
                                      ["f24-scene0-cam01-cam03", "encode_error"]]
    assert [s["__key__"] for s in read_shard(tmp_path / "out" / "shard-000000.tar")] == ["f24-scene0-cam01-cam04"]


def _precompute_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "data_curation.precompute", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_bad_input_exits_2_with_one_error_line_and_no_output(tmp_path, tiny_wan_dir):
    argv = ["--shards", tmp_path / "nope", "--out", tmp_path / "out", "--model", tiny_wan_dir, "--device", "cpu"]
    r = _precompute_cli(*argv)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors == [r.stderr.strip().splitlines()[-1]] and errors[0].startswith("error: shards not found"), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
    r = _precompute_cli(*argv, T2V_TRACEBACK="1")
    assert r.returncode == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr
