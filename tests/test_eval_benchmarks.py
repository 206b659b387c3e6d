"""Benchmarks as data: the RealCam-Vid reader (restricted unpickler), the paper's seeded manifest, the synthetic
benchmark reader, and `evaluate.py manifest` with its bad-input messages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval_fixtures import realcam_records, synthetic_benchmark, write_malicious_realcam, write_realcam  # noqa: F401
from track2view.eval.benchmarks.presets import RECAMMASTER_PRESETS, preset_trajectory
from track2view.eval.benchmarks.realcam import read_realcam, realcam_manifest
from track2view.eval.errors import EvalInputError
from track2view.eval.manifest import read_manifest
from track2view.eval.safe_npz import UnsafePickleError, load_npz_restricted
from track2view.inference.trajectories import rotation_angle

ROOT = Path(__file__).resolve().parents[1]


def evaluate(*args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def test_realcam_reader_on_a_look_alike(tmp_path):
    records = realcam_records(6, num_frames=10)
    clips = read_realcam(write_realcam(tmp_path / "RealCam-Vid_test.npz", records))
    assert [c.source for c in clips] == ["RealEstate10K", "MiraData9K", "DL3DV-10K"] * 2
    assert [c.split for c in clips[:3]] == ["static", "dynamic", "static"]
    assert clips[0].num_frames == 10 and clips[3].num_frames == 5  # every 4th look-alike clip is short
    np.testing.assert_allclose(clips[0].intrinsics, [[0.9, 0, 0.5], [0, 1.6, 0.5], [0, 0, 1]], rtol=1e-6)
    c2w = clips[2].c2w_metres()  # inv(w2c), translation times align_factor
    np.testing.assert_allclose(c2w[-1, 2, 3], 0.3 * records[2]["align_factor"], rtol=1e-5)
    assert clips[1].long_caption == "a long caption of clip 1"


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = write_malicious_realcam(tmp_path / "evil.npz", marker)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        load_npz_restricted(path)
    assert not marker.exists()
    # the planted payload is real: numpy's general unpickler runs it
    np.load(path, allow_pickle=True)["arr_0"]
    assert marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "not an .npz"),
    ("array", "1-d object array"),
    ("dicts", "lacks camera_intrinsics"),
])
def test_metadata_of_another_format(tmp_path, content, message):
    path = tmp_path / "meta.npz"
    if content == "array":
        np.savez(path, np.zeros((3, 4)))
    elif content == "dicts":
        write_realcam(path, [{"video_path": "a.mp4", "camera_extrinsics": np.eye(4)[None]}])
    else:
        path.write_bytes(content)
    with pytest.raises(EvalInputError, match=message):
        read_realcam(path)


def test_paper_selection_is_seeded_balanced_and_cycles_the_presets(tmp_path):
    clips = read_realcam(write_realcam(tmp_path / "m.npz", realcam_records(60, num_frames=9)))
    selection = {"static": ("RealEstate10K", 12), "dynamic": ("MiraData9K", 11)}
    a = realcam_manifest(clips, "/data", 9, seed=3, selection=selection)
    b = realcam_manifest(clips, "/data", 9, seed=3, selection=selection)
    c = realcam_manifest(clips, "/data", 9, seed=4, selection=selection)
    assert [x.key for x in a.clips] == [x.key for x in b.clips] != [x.key for x in c.clips]
    static = [x for x in a.clips if x.split == "static"]
    assert len(static) == 12 and all(x.key.startswith("RealEstate10K") for x in static)
    assert len(a.clips) - len(static) == 11
    by_index = {cl.index: cl for cl in clips}
    assert all(by_index[int(x.key.split("-")[-1])].num_frames >= 9 for x in a.clips)  # short clips dropped
    names = [x.trajectory["name"] for x in static]
    assert names[:10] == [p[1] for p in RECAMMASTER_PRESETS] and names[10] == "pan_right"
    assert static[0].prompt.startswith("a long caption") and static[0].clip_text.startswith("clip")
    with pytest.raises(EvalInputError, match="100 RealEstate10K clips"):
        realcam_manifest(clips, "/data", 9, selection={"static": ("RealEstate10K", 100)})


def test_presets_have_recammasters_measured_magnitudes():
    pan, pan_motion = preset_trajectory(0, 81)
    assert pan["name"] == "pan_right" and rotation_angle(pan_motion[-1, :3, :3]) == pytest.approx(19.88, abs=1e-6)
    np.testing.assert_allclose(pan_motion[0], np.eye(4), atol=1e-12)  # relative to the source camera at frame 0
    _, dolly = preset_trajectory(4, 81)
    assert dolly[-1, 2, 3] == pytest.approx(1.988)
    _, up = preset_trajectory(6, 81)  # translate up with ReCamMaster's counter-tilt
    assert np.linalg.norm(up[-1, :3, 3]) == pytest.approx(0.994)
    assert rotation_angle(up[-1, :3, :3]) == pytest.approx(13.95, abs=0.01)
    _, arc = preset_trajectory(8, 81)
    assert rotation_angle(arc[-1, :3, :3]) == pytest.approx(29.82, abs=1e-6)
    assert abs(arc[-1, 0, 3]) == pytest.approx(1.988, abs=2e-3) and arc[-1, 2, 3] == pytest.approx(0.53, abs=2e-3)


def test_manifest_cli_and_its_bad_input(tmp_path):
    meta = write_realcam(tmp_path / "m.npz", realcam_records(12, num_frames=9))
    out = tmp_path / "manifest.json"
    r = evaluate("manifest", "realcam", "--metadata", meta, "--root", tmp_path, "--out", out, "--num-frames", 9,
                 "--static", 3, "--dynamic", 2)
    assert r.returncode == 0, r.stderr
    manifest = read_manifest(out)
    assert len(manifest.clips) == 5 and manifest.clips[0].target_c2w.shape == (9, 4, 4)
    evil = write_malicious_realcam(tmp_path / "evil.npz", tmp_path / "pwned")
    for args, message in (((meta.with_name("absent.npz"),), "metadata file not found"),
                          ((evil,), "refusing to unpickle")):
        r = evaluate("manifest", "realcam", "--metadata", *args, "--root", tmp_path, "--out", tmp_path / "x.json")
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "pwned").exists()
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(EvalInputError, match="not a track2view evaluation manifest"):
        read_manifest(broken)


def test_synthetic_benchmark_reader(synthetic_benchmark):
    from track2view.cameras import relative_to
    from track2view.eval.benchmarks.synthetic import synthetic_manifest
    from track2view.synthetic import load_ground_truth

    manifest = synthetic_manifest(synthetic_benchmark, targets_per_scene=2)
    assert len(manifest.clips) == 4 and manifest.benchmark == "synthetic"
    clip = manifest.clips[1]
    assert clip.key.endswith("cam01-cam03") and clip.target_video.endswith("cam03.mp4")
    spec, names, c2w, K = load_ground_truth(manifest.video_path(clip.source_video).parent.parent)
    np.testing.assert_allclose(clip.target_c2w, relative_to(c2w[2], c2w[0][0]), atol=1e-9)
    np.testing.assert_allclose(clip.target_c2w[0][:3, 3], 0, atol=1e-9)  # all cameras start at the source pose
    assert clip.prompt == spec["caption"]
    with pytest.raises(EvalInputError, match="holds no synthetic scenes"):
        synthetic_manifest(synthetic_benchmark.parent)
