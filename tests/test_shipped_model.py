"""The shipped synthetic model (experiments/synthetic/shipped, docs/results.md) re-renders a held-out scene along
its true target camera; with its tracks the result is closer to the true target video than with every track
dropped. A change that breaks the conditioner's geometry (sampling, scattering, the reprojection, the camera
convention) loses that margin and fails here."""

from pathlib import Path

import pytest

from track2view.eval.benchmarks.synthetic import synthetic_manifest
from track2view.eval.generation import render_clip
from track2view.eval.metric import Clip
from track2view.eval.metrics.reference_pixels import ReferencePixels
from track2view.inference.rerender import Rerenderer
from track2view.io import read_video
from track2view.synthetic.generate import generate

SHIPPED = Path(__file__).resolve().parents[1] / "experiments" / "synthetic" / "shipped"
SIZE, FRAMES, CAMERAS = 128, 25, 4  # experiments/synthetic/run.sh: the experiment's test split
TEST_SEED, TEST_KINDS = 2, ("pan_truck", "arc_dolly")
# The held-out scene's first clip: 19.8 dB with the tracks, 16.6 dB dropped on this repo's CPU (the same clips as
# the H200's, to 40 dB); over the 96 test clips +3.54 dB (standard error 0.15), higher in all 96 (docs/results.md).
# The margin leaves about half of this clip's 3.2 dB. The re-render is deterministic (seed 0), so the floor sits
# 0.4 dB under it. Breaks made by hand (rerender.conditioning_inputs patched; a one-off check, not a test): source
# and target views swapped 19.0 dB, the source's tracks given as the target's 19.1 dB, the target view mirrored
# 16.6 dB.
MARGIN_DB, FLOOR_DB = 1.5, 19.4


@pytest.fixture(scope="module")
def held_out_clip(tmp_path_factory):
    """Scene 0 of the experiment's test split (seed 2, held-out camera families) and its first clip."""
    root = generate(tmp_path_factory.mktemp("synthetic"), scenes=1, cameras=CAMERAS, height=SIZE, frames=FRAMES,
                    seed=TEST_SEED, split="test", trajectory_kinds=TEST_KINDS)
    manifest = synthetic_manifest(root, targets_per_scene=1)
    return manifest, manifest.clips[0]


def psnr_against_target(folder: Path, manifest, entry) -> float:
    generated, _ = read_video(folder / "video.mp4")
    target, _ = read_video(manifest.video_path(entry.target_video))
    return ReferencePixels()(Clip(key=entry.key, generated=generated, target=target))["psnr"]


def test_shipped_model_re_renders_a_held_out_scene_better_with_its_tracks(held_out_clip, tmp_path):
    manifest, entry = held_out_clip
    rerenderer = Rerenderer(str(SHIPPED / "wan"), str(SHIPPED / "tracks"), device="cpu", dtype="float32")
    options = dict(tracker="oracle", query_frames="first_last", num_queries=128, steps=30, guidance=1.0, seed=0,
                   height=SIZE, width=SIZE)  # as run.sh's generate stage
    psnr = {}
    for name, drop in (("tracks", False), ("dropped", True)):
        folder = render_clip(rerenderer, {**options, "drop_tracks": drop}, manifest, entry, tmp_path / name)
        psnr[name] = psnr_against_target(folder, manifest, entry)
    assert psnr["tracks"] > psnr["dropped"] + MARGIN_DB, psnr
    assert psnr["tracks"] > FLOOR_DB, psnr


def test_cache_quality_measures_each_step_cache_on_the_shipped_model(held_out_clip, tmp_path, capsys):
    """experiments/synthetic/cache_quality.py (docs/benchmarks.md): one line per preset; the exact run computes
    every transformer call, each cache skips some and stays close to the exact re-render; an existing --out is
    refused."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("cache_quality", SHIPPED.parent / "cache_quality.py")
    cache_quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cache_quality)
    manifest, _ = held_out_clip
    argv = ["--test", manifest.root, "--clips", "1", "--targets-per-scene", "1",
            "--out", str(tmp_path / "quality")]
    assert cache_quality.main(argv) == 0
    rows = {r["preset"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert list(rows) == ["none", "first_block", "taylorseer", "mag"]
    assert rows["none"]["full_share"] == 1.0 and rows["none"]["transformer_calls"] == 30
    for preset in ("first_block", "taylorseer", "mag"):
        assert 0 < rows[preset]["full_share"] < 1, rows[preset]
        assert rows[preset]["psnr_vs_exact_db"] > 30, rows[preset]
    assert cache_quality.main(argv) == 2
