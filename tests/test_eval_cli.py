"""evaluate.py end to end on the synthetic benchmark: manifest -> generate (tiny random-init Wan, oracle tracker)
-> FID reference -> score -> tables and contact sheet; resuming; and the one-line errors of bad input."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval_fixtures import (SYN_FRAMES, SYN_HEIGHT, SYN_WIDTH, inception_file, synthetic_benchmark,  # noqa: F401
                           tiny_clip_dir, tiny_dino_dir)
from track2view.io import read_video, write_video

ROOT = Path(__file__).resolve().parents[1]
METRICS = "fid,clip,matched_pixels,camera_accuracy,temporal_flickering,subject_consistency,background_consistency," \
          "reference_pixels"


def evaluate_process(*args, timeout=300):
    """evaluate.py in its own process (generation: the pipeline's state stays out of the test process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def evaluate(*args):
    """evaluate.py's main in this process (no second start-up of torch and transformers): (status, stderr)."""
    import contextlib
    import io

    import evaluate as cli

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main([str(a) for a in args])
    return subprocess.CompletedProcess(args, status, "", stderr.getvalue())


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def bad(result, message):
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error:") and message in lines[0], lines
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, synthetic_benchmark, tiny_wan_dir, inception_file, tiny_clip_dir, tiny_dino_dir):
    """manifest + generated clips + FID reference + scores, each written once by the command line."""
    tmp = tmp_path_factory.mktemp("evaluate")
    manifest, generated = tmp / "manifest.json", tmp / "generated"
    ok(evaluate("manifest", "synthetic", "--root", synthetic_benchmark, "--out", manifest))
    ok(evaluate_process("generate", "--manifest", manifest, "--out", generated, "--model", tiny_wan_dir, "--tracker",
                        "oracle", "--height", SYN_HEIGHT, "--width", SYN_WIDTH, "--steps", 2, "--num-queries", 64,
                        "--device", "cpu"))
    reference = tmp / "fid_reference.npz"
    ok(evaluate("reference", "--manifest", manifest, "--inception", inception_file, "--out", reference,
                "--num-frames", SYN_FRAMES, "--frames-per-clip", 3, "--height", SYN_HEIGHT, "--width", SYN_WIDTH,
                "--device", "cpu"))
    weights = ["--inception", inception_file, "--fid-reference", reference, "--clip", tiny_clip_dir,
               "--dino", tiny_dino_dir, "--device", "cpu", "--pose-threads", 1]
    scores = tmp / "scores"
    ok(evaluate("score", "--manifest", manifest, "--generated", generated, "--out", scores, "--metrics", METRICS,
                "--frames", f"5,{SYN_FRAMES}", *weights))
    return {"tmp": tmp, "manifest": manifest, "generated": generated, "scores": scores, "weights": weights,
            "model": tiny_wan_dir}


def test_generate_writes_one_folder_per_clip(workspace):
    manifest = json.loads(workspace["manifest"].read_text())
    for clip in manifest["clips"]:
        folder = workspace["generated"] / clip["key"]
        frames, _ = read_video(folder / "video.mp4")
        assert frames.shape == (SYN_FRAMES, SYN_HEIGHT, SYN_WIDTH, 3)
        poses = json.loads((folder / "target_poses.json").read_text())["poses"]
        np.testing.assert_allclose(poses, clip["target_c2w"], atol=1e-9)
        with np.load(folder / "tracks.npz") as tracks:
            assert tracks["uv"].shape[:2] == (2, SYN_FRAMES)
        assert json.loads((folder / "clip.json").read_text())["key"] == clip["key"]
    record = json.loads((workspace["generated"] / "generation.json").read_text())
    assert record["tracker"] == "oracle" and len(record["manifest_fingerprint"]) == 16


def test_score_writes_per_clip_json_tables_and_contact_sheet(workspace):
    scores = workspace["scores"]
    keys = [c["key"] for c in json.loads(workspace["manifest"].read_text())["clips"]]
    records = [json.loads((scores / "clips" / f"{k}.json").read_text()) for k in keys]
    for record in records:
        assert set(record["scores"]) == {"5", str(SYN_FRAMES)}
        full = record["scores"][str(SYN_FRAMES)]
        assert 0 <= full["temporal_flickering"] <= 1 and full["pixel_error"] > 0 and "clip_v" in full
        assert full["pose_failed"] in (0.0, 1.0)
    with open(scores / "results.csv") as f:
        rows = list(csv.DictReader(f))
    groups = {(r["split"], r["frames"]) for r in rows}
    assert ("all", "5") in groups and ("all", str(SYN_FRAMES)) in groups
    full_all = next(r for r in rows if r["split"] == "all" and r["frames"] == str(SYN_FRAMES))
    assert int(full_all["clips"]) == len(keys) and float(full_all["fid"]) >= 0
    failed = sum(r["scores"][str(SYN_FRAMES)]["pose_failed"] for r in records)
    assert int(full_all["pose_failed"]) == failed  # failed reconstructions are counted, not dropped
    clip_f = np.mean([r["scores"][str(SYN_FRAMES)]["clip_f"] for r in records])
    assert clip_f == pytest.approx(float(full_all["clip_f"]), rel=1e-5)
    table = (scores / "results.md").read_text()
    assert "| Split | Frames | Clips | FID | CLIP-T | CLIP-F | CLIP-V | Mat.Pix.(K) |" in table
    assert "Temporal Flickering" in table and "sift+ratio0.8+magsac" in table and "PSNR" in table
    from PIL import Image

    sheet = Image.open(scores / "contact_sheets" / "page_000.png")
    assert sheet.size[1] > len(keys) * 100


def test_generate_and_score_resume(workspace):
    files = sorted(workspace["generated"].glob("*/video.mp4")) + sorted(workspace["scores"].glob("clips/*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    ok(evaluate("generate", "--manifest", workspace["manifest"], "--out", workspace["generated"], "--model",
                workspace["model"], "--tracker", "oracle", "--height", SYN_HEIGHT, "--width", SYN_WIDTH,
                "--steps", 2, "--device", "cpu"))
    ok(evaluate("score", "--manifest", workspace["manifest"], "--generated", workspace["generated"], "--out",
                workspace["scores"], "--metrics", "temporal_flickering", "--frames", f"5,{SYN_FRAMES}",
                *workspace["weights"]))
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_bad_input_is_one_line_and_writes_nothing(workspace):
    tmp, manifest = workspace["tmp"], workspace["manifest"]
    keys = [c["key"] for c in json.loads(manifest.read_text())["clips"]]
    other = tmp / "other_method"  # another method's videos: only video.mp4 per clip
    for key in keys:
        (other / key).mkdir(parents=True)
        shutil.copy(workspace["generated"] / key / "video.mp4", other / key / "video.mp4")
    score = ("score", "--manifest", manifest, "--generated", other, "--metrics", "temporal_flickering", "--device",
             "cpu")
    ok(evaluate(*score, "--out", tmp / "s_ok"))
    frames, _ = read_video(other / keys[0] / "video.mp4")
    write_video(other / keys[0] / "video.mp4", frames[:5])
    bad(evaluate(*score, "--out", tmp / "s_short"), f"has 5 frames, {SYN_FRAMES} are asked")
    (other / "stray").mkdir()
    (other / "stray" / "video.mp4").write_bytes(b"x")
    bad(evaluate(*score, "--out", tmp / "s_stray"), "does not match the manifest: 1 folders are not in the manifest")
    shutil.rmtree(other / keys[1])
    bad(evaluate(*score, "--out", tmp / "s_missing"), "1 manifest clips have no video.mp4")
    bad(evaluate("score", "--manifest", manifest, "--generated", workspace["generated"], "--out", tmp / "s_w",
                 "--metrics", "clip", "--clip", tmp / "no_such_clip"), "--clip")
    bad(evaluate("score", "--manifest", tmp / "nope.json", "--generated", other, "--out", tmp / "s_m"),
        "manifest not found")
    for name in ("s_short", "s_stray", "s_missing", "s_w", "s_m"):
        assert not (tmp / name / "results.md").exists()
    bad(evaluate("manifest", "synthetic", "--root", tmp / "absent", "--out", tmp / "m.json"), "not found")
    bad(evaluate("generate", "--manifest", manifest, "--out", tmp / "g", "--model", tmp / "absent"),
        "not a diffusers model directory")
    bad(evaluate("score", "--manifest", manifest, "--generated", workspace["generated"], "--out", workspace["scores"],
                 "--metrics", "temporal_flickering", "--root", tmp), "not found")  # videos are not under --root
    bad(evaluate("score", "--manifest", manifest, "--generated", workspace["generated"], "--out", tmp / "s_ok",
                 "--metrics", "temporal_flickering"), "choose a new one per method")  # s_ok scored other_method


def test_score_against_another_folder_compares_with_its_clips(workspace):
    """--against: the reference metrics read that folder's clips instead of the true targets (results.md says
    which); a folder holding the true target videos themselves scores exactly as the default does, another one
    differently; a scores folder keeps to one reference."""
    from track2view.eval.manifest import read_manifest

    tmp, manifest = workspace["tmp"], read_manifest(workspace["manifest"])
    truth, source = tmp / "against_truth", tmp / "against_source"
    for entry in manifest.clips:
        for folder, video in ((truth, entry.target_video), (source, entry.source_video)):
            (folder / entry.key).mkdir(parents=True)
            shutil.copy(manifest.video_path(video), folder / entry.key / "video.mp4")
    common = ("score", "--manifest", workspace["manifest"], "--generated", workspace["generated"], "--metrics",
              "reference_pixels", "--frames", str(SYN_FRAMES), "--device", "cpu")
    for name, folder in (("vs_default", None), ("vs_truth", truth), ("vs_source", source)):
        ok(evaluate(*common, "--out", tmp / name, *(("--against", folder) if folder else ())))

    def psnr(name):
        return [json.loads((tmp / name / "clips" / f"{c.key}.json").read_text())["scores"][str(SYN_FRAMES)]["psnr"]
                for c in manifest.clips]

    assert psnr("vs_truth") == psnr("vs_default")
    assert psnr("vs_source") != psnr("vs_default")
    assert "Against the true target video" in (tmp / "vs_default" / "results.md").read_text()
    assert f"Against the clips of {source} (not the true" in (tmp / "vs_source" / "results.md").read_text()
    bad(evaluate(*common, "--out", tmp / "vs_truth", "--against", source), "choose a new one per reference")
    shutil.rmtree(source / manifest.clips[0].key)
    bad(evaluate(*common, "--out", tmp / "vs_gap", "--against", source), "1 manifest clips have no video.mp4")


class CopyRerenderer:
    """Stands in for the pipeline: 'generates' the source video itself (the sharding logic is what is tested)."""

    kind = "tracks"  # the conditioning kind of the export it stands for (a "none" one takes no poses)
    writes_files = True  # one process, no context parallelism

    def __init__(self):
        self.requests = []

    def render(self, request):
        self.requests.append(request)
        frames, _ = read_video(request.video, max_frames=request.num_frames)
        return [write_video(request.out, frames)]


def test_generation_shards_by_rank_and_skips_finished_clips(synthetic_benchmark, tmp_path, monkeypatch):
    from track2view.eval.benchmarks.synthetic import synthetic_manifest
    from track2view.eval.errors import EvalInputError
    from track2view.eval.generation import generate, shard

    manifest = synthetic_manifest(synthetic_benchmark, targets_per_scene=2)  # 4 clips
    done = {}
    for rank in (0, 1):
        fake = CopyRerenderer()
        generate(manifest, tmp_path / "gen", fake, {}, rank=rank, world_size=2, progress=False)
        done[rank] = [Path(r.out).parent.name[1:].split(".tmp")[0] for r in fake.requests]  # .<key>.tmp<id>
    keys = [c.key for c in manifest.clips]
    assert done == {0: keys[0::2], 1: keys[1::2]}
    assert sorted(p.parent.name for p in (tmp_path / "gen").glob("*/clip.json")) == sorted(keys)
    again = CopyRerenderer()
    generate(manifest, tmp_path / "gen", again, {}, rank=0, world_size=1, progress=False)
    assert again.requests == []  # every clip folder is complete
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert shard(None, None) == (3, 4) and shard(1, 2) == (1, 2)
    with pytest.raises(EvalInputError, match="outside world size"):
        shard(2, 2)
