"""experiments/synthetic/summarize.py's view specificity: a re-render of its own target view scores above the
scene's other views; one video given for every target of a scene (a model that ignores the camera) averages 0."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def summarize():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "experiments" / "synthetic" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """RUN/eval/manifest.json over one 4-camera scene (3 clips) and two rows: the true targets, the source."""
    from track2view.eval.benchmarks.synthetic import synthetic_manifest
    from track2view.synthetic.generate import generate

    run = tmp_path_factory.mktemp("run")
    root = generate(run / "data", scenes=1, cameras=4, height=32, frames=5, seed=0, split="test")
    manifest = synthetic_manifest(root, targets_per_scene=3)
    manifest.write(run / "eval" / "manifest.json")
    for row, video in (("truth", "target_video"), ("one_video", "source_video")):
        for entry in manifest.clips:
            (run / "eval" / "generated" / row / entry.key).mkdir(parents=True)
            shutil.copy(manifest.video_path(getattr(entry, video)),
                        run / "eval" / "generated" / row / entry.key / "video.mp4")
    return run


def test_own_view_scores_above_the_other_views_and_one_video_for_all_averages_zero(summarize, run_dir):
    targets = summarize.true_targets(run_dir)
    truth = summarize.view_specificity(run_dir, "truth", targets)
    assert len(truth) == 3 and (truth > 10).all()  # the own target exactly (PSNR capped at 120 dB), others not
    one_video = summarize.view_specificity(run_dir, "one_video", targets)
    assert len(one_video) == 3 and abs(one_video.mean()) < 1e-9 and np.abs(one_video).max() > 0
    assert summarize.mean_and_error(one_video).startswith(("+0.00 ±", "-0.00 ±"))


def test_frame_psnr_is_the_mean_of_per_frame_psnrs(summarize):
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] += 255  # frame 0: MSE 1 -> 0 dB; frame 1: identical -> capped at 120 dB
    assert summarize.frame_psnr(a, b) == pytest.approx(60.0)
