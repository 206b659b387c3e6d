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


def test_compare_prints_paired_differences_over_the_clips_both_scored(run_dir, capsys, monkeypatch):
    """compare.py: `--arm` minus each row clip by clip (a pose failure, None, leaves its clip out of that score),
    the medians and the PSNR by frame of each row, and the static-camera RotErr baseline."""
    import json

    from track2view.eval.manifest import read_manifest

    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "synthetic"))  # compare.py imports its folder's summarize
    spec = importlib.util.spec_from_file_location("compare", ROOT / "experiments" / "synthetic" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    keys = [c.key for c in read_manifest(run_dir / "eval" / "manifest.json").clips]
    rows = {"truth": ([30.0, 31.0, 32.0], [1.0, None, 3.0]), "one_video": ([20.0, 21.0, 25.0], [2.0, 2.0, 2.0])}
    for row, (psnr, rot) in rows.items():
        (run_dir / "eval" / "scores" / row / "clips").mkdir(parents=True, exist_ok=True)
        for key, p, r in zip(keys, psnr, rot):
            record = {"key": key, "scores": {"5": {"psnr": p, "ssim": 0.5, "rot_err_deg": r, "trans_err": 1.0}}}
            (run_dir / "eval" / "scores" / row / "clips" / f"{key}.json").write_text(json.dumps(record))
    assert compare.main(["--out-dir", str(run_dir), "--arm", "truth", "--against", "one_video", "--rows",
                         "truth one_video", "--frames", "0,4"]) == 0
    out = capsys.readouterr().out
    assert "truth - one_video, PSNR (dB): +9.000 (SE 1.000, 3 clips, truth better in 3)" in out
    assert "truth - one_video, RotErr (deg): +0.000 (SE 1.000, 2 clips, truth better in 1)" in out
    assert "truth: median RotErr 2.00 deg" in out and "PSNR at frames 0,4: 120.0 / 120.0" in out
    assert out.startswith("static camera: RotErr mean ")


def test_blurred_target_loses_detail_with_sigma_and_keeps_the_mean(summarize, run_dir):
    """The target_blur<sigma> rows: more blur, lower PSNR against the sharp video; a blur moves no colour mass."""
    from track2view.eval.manifest import read_manifest
    from track2view.io import read_video

    manifest = read_manifest(run_dir / "eval" / "manifest.json")
    sharp = read_video(manifest.video_path(manifest.clips[0].target_video))[0]
    psnrs = [summarize.frame_psnr(summarize.blurred(sharp, sigma), sharp) for sigma in (0.5, 1.0, 2.0)]
    assert psnrs[0] > psnrs[1] > psnrs[2] and summarize.blur_row(2.0) == "target_blur2"
    assert abs(summarize.blurred(sharp, 2.0).mean() - sharp.mean()) < 2.0


def test_apparent_motion_reads_the_true_targets_motion_and_none_in_a_still_video(run_dir, capsys, monkeypatch):
    """experiments/synthetic/apparent_motion.py: the true target moves as itself (cosine 1); a still video has no
    apparent motion; the row of source videos moves, but not as the targets do."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "synthetic"))
    import apparent_motion
    from track2view.eval.manifest import read_manifest
    from track2view.io import read_video

    manifest = read_manifest(run_dir / "eval" / "manifest.json")
    video = read_video(manifest.video_path(manifest.clips[0].target_video))[0]
    moved, cosine = apparent_motion.motion(apparent_motion.flow(video), apparent_motion.flow(video))
    assert moved > 1.0 and cosine == pytest.approx(1.0)
    assert apparent_motion.motion(apparent_motion.flow(video[:1].repeat(5, 0)), apparent_motion.flow(video))[0] < 0.01
    assert apparent_motion.main(["--out-dir", str(run_dir), "--rows", "truth one_video"]) == 0
    truth, one_video = (float(line.split("flow ")[1]) for line in capsys.readouterr().out.splitlines())
    assert truth == pytest.approx(1.0, abs=0.01) and one_video < 0.9


def test_track_following_reads_a_known_shift_as_gain_one_and_none_as_zero(run_dir, capsys, monkeypatch):
    """experiments/synthetic/track_following.py: the true targets rolled 6 px right read as content moved +6 px
    (gain 1 for a 6 px shift); a row against itself moved 0 px."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "synthetic"))
    import track_following
    from track2view.io import read_video, write_video

    generated = run_dir / "eval" / "generated"
    for clip in (generated / "truth").iterdir():
        video, fps = read_video(clip / "video.mp4")
        (generated / "rolled" / clip.name).mkdir(parents=True, exist_ok=True)
        write_video(generated / "rolled" / clip.name / "video.mp4", np.roll(video, 6, axis=2), fps)
    width = video.shape[2]
    assert track_following.main(["--out-dir", str(run_dir), "--row", "truth", "--shifted", "rolled",
                                 "--shift", str(6 / width), "--frames", "0,4"]) == 0
    gains = [float(line.split("gain ")[1].split(";")[0]) for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(gains) == 2 and all(g == pytest.approx(1.0, abs=0.2) for g in gains)
    moved, _, clips, _ = track_following.following(generated / "truth", generated / "truth", [0, 4])
    assert clips == 3 and np.abs(moved).max() < 0.5
