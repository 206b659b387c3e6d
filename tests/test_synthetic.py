"""Synthetic scenes: hand-checked ray casting, occlusion, camera conventions, layout, resume, determinism."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from track2view import cameras as C
from track2view.io import read_video
from track2view.synthetic import generate, load_ground_truth, random_scene, render, scene_cameras, visible
from track2view.synthetic.render import camera_rays, cast, world_points
from track2view.synthetic.scene import TRAJECTORY_KINDS, look_c2w


def _tex(color=(0.8, 0.2, 0.2)):
    return {"color": list(color), "color2": [0.1, 0.1, 0.1], "color_name": "red", "checker": 2.0,
            "waves": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "phases": [0.0, 0.0]}


def hand_scene(objects=()):
    """Room [-10, 10] x [-10, 10] x [0, 5]; 48x64 images, f24 lens; camera at (0, 0, 1.5) looking along +x."""
    return {"room": {"min": [-10.0, -10.0, 0.0], "max": [10.0, 10.0, 5.0], "textures": [_tex()] * 6},
            "objects": list(objects), "light": {"direction": [0.0, 0.0, -1.0], "ambient": 0.4},
            "fps": 10.0, "height": 48, "width": 64, "num_frames": 5, "focal_mm": 24.0}


def sphere(center, radius, velocity=(0.0, 0.0, 0.0)):
    return {"name": "s", "kind": "sphere", "size": [radius] * 3, "texture": _tex((0.2, 0.8, 0.2)),
            "position": list(center), "velocity": list(velocity), "yaw": 0.0, "yaw_rate": 0.0, "bob": [0.0, 0.0]}


def box(center, half, yaw=0.0):
    return {"name": "b", "kind": "box", "size": list(half), "texture": _tex((0.2, 0.2, 0.8)),
            "position": list(center), "velocity": [0.0, 0.0, 0.0], "yaw": yaw, "yaw_rate": 0.0, "bob": [0.0, 0.0]}


CAM = look_c2w([0.0, 0.0, 1.5], 0.0, 0.0)
K = C.intrinsics_from_focal(24.0, 48, 64)


def test_ray_cast_hand_computed():
    spec = hand_scene([sphere([6.0, 0.0, 1.5], 1.0), box([4.0, -3.0, 0.5], [0.5, 0.5, 0.5], yaw=math.pi / 4)])
    # centre ray hits the sphere's front at depth 5; the ray through a pixel below the horizon hits the
    # ground at depth h / y (y = camera-space y/z of that pixel); a ray up-left hits the back wall x = 10
    fy = K[1, 1]
    v_ground = 0.5 + 0.3 * fy  # y/z = 0.3
    uv = np.array([[[0.5, 0.5], [0.05, v_ground], [0.5, 0.5 - 0.3 * fy]]])
    o, d = camera_rays(CAM[None], K, uv)
    hit = cast(spec, o, d, [0])
    np.testing.assert_allclose(hit.t[0], [5.0, 1.5 / 0.3, 10.0], rtol=1e-9)
    assert list(hit.object_id[0]) == [6, 4, 1]  # sphere, ground, wall x-max
    np.testing.assert_allclose(hit.normal[0, 0], [-1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(hit.normal[0, 1], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(hit.local[0, 0], [-1, 0, 0], atol=1e-9)  # sphere-local front point
    # the rotated box: the ray toward its centre hits its vertical edge facing the camera, at
    # distance |centre| - half * sqrt(2) along the horizontal direction
    p = np.array([4.0, -3.0, 0.5])
    uv_box, depth_box = C.project(p[None], CAM, K)
    o, d = camera_rays(CAM[None], K, uv_box[None])
    hit = cast(spec, o, d, [0])
    assert hit.object_id[0, 0] == 7
    assert hit.t[0, 0] < depth_box[0]
    hit_point = o[0, 0] + hit.t[0, 0] * d[0, 0]
    # edge of a 45-degree box: the horizontal distance to the centre is half * sqrt(2) along x+y directions
    np.testing.assert_allclose(np.abs(hit_point[:2] - p[:2]).sum(), 0.5 * math.sqrt(2), rtol=1e-6)


def test_render_depth_and_occlusion():
    spec = hand_scene([sphere([6.0, 0.0, 1.5], 1.0, velocity=(0.0, 5.0, 0.0))])  # moves 0.5 m/frame to +y
    img, depth = render(spec, np.stack([CAM] * 2), K, frames=[0, 4])
    assert img.shape == (2, 48, 64, 3) and img.dtype == np.uint8
    # frame 0: the sphere sits in the image centre (depth ~5); frame 4: it has moved 2 m right of it
    assert depth[0, 24, 32] == pytest.approx(5.0, abs=0.01)
    assert depth[1, 24, 32] == pytest.approx(10.0, abs=0.01)
    # a back-wall point straight behind the sphere is occluded at frame 0 and visible at frame 4;
    # a sphere point moves with the sphere (local coordinates) and stays visible
    wall_point = np.array([[10.0, 0.0, 1.5]])
    ids = np.array([1])
    seen, uv, d = visible(spec, np.stack([wall_point, wall_point]), ids, np.stack([CAM, CAM]), K, [0, 4])
    assert list(seen[:, 0]) == [False, True]
    np.testing.assert_allclose(uv[:, 0], [[0.5, 0.5]] * 2, atol=1e-12)
    front = world_points(spec, np.array([6]), np.array([[-1.0, 0.0, 0.0]]), [0, 4])
    np.testing.assert_allclose(front[:, 0], [[5.0, 0.0, 1.5], [5.0, 2.0, 1.5]], atol=1e-12)
    seen, _, _ = visible(spec, front, np.array([6]), np.stack([CAM, CAM]), K, [0, 4])
    assert seen.all()


def test_scene_spec_deterministic_and_cameras_share_first_pose():
    a, b = random_scene(3, 5, num_cameras=4, num_frames=9), random_scene(3, 5, num_cameras=4, num_frames=9)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(random_scene(4, 5, num_cameras=4, num_frames=9))
    names, c2w, K_n = scene_cameras(a)
    assert names == ["cam01", "cam02", "cam03", "cam04"] and c2w.shape == (4, 9, 4, 4)
    np.testing.assert_allclose(c2w[:, 0], np.broadcast_to(c2w[0, 0], (4, 4, 4)), atol=1e-12)
    assert all(np.abs(c2w[k, -1] - c2w[k, 0]).max() > 1e-3 for k in range(4))  # every camera moves
    np.testing.assert_allclose(np.linalg.det(C.relative_to(c2w, c2w[0, 0])[..., :3, :3]), 1.0, atol=1e-9)


def test_trajectory_kinds_hold_families_out():
    held_out = ("pan_truck", "arc_dolly")
    kinds = {t["kind"] for i in range(6) for t in random_scene(0, i, num_cameras=4, num_frames=9,
                                                               trajectory_kinds=held_out)["cameras"]["trajectories"]}
    assert kinds == set(held_out)
    assert random_scene(0, 1, num_cameras=4) == random_scene(0, 1, num_cameras=4, trajectory_kinds=TRAJECTORY_KINDS)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    root = generate(out, scenes=2, cameras=3, height=48, width=64, frames=9, seed=7, workers=1,
                    lenses=("f18_aperture10", "f35_aperture2.4"))
    return out, root


def test_layout_and_unreal_round_trip(written):
    out, root = written
    scenes = sorted(p.relative_to(root).as_posix() for p in root.glob("*/scene*"))
    assert scenes == ["f18_aperture10/scene1", "f35_aperture2.4/scene1"]
    for s in scenes:
        d = root / s
        assert sorted(p.name for p in (d / "videos").iterdir()) == ["cam01.mp4", "cam02.mp4", "cam03.mp4"]
        spec, names, c2w, K_n = load_ground_truth(d)
        # the Unreal JSON, parsed back through cameras.py, reproduces the renderer's cameras
        parsed = C.read_multicam_cameras(d / "cameras" / "camera_extrinsics.json")
        for k, name in enumerate(names):
            np.testing.assert_allclose(parsed[name], c2w[k], atol=1e-6)
        np.testing.assert_allclose(C.intrinsics_from_lens(spec["lens"], 48, 64), K_n)
        raw = json.loads((d / "cameras" / "camera_extrinsics.json").read_text())
        assert sorted(raw, key=lambda k: int(k[5:])) == [f"frame{t}" for t in range(9)]
        assert raw["frame0"]["cam01"].count("[") == 4
        # videos: right shape and frame count; frame 0 is (up to compression) the same image for all cameras
        videos = [read_video(d / "videos" / f"{n}.mp4")[0] for n in names]
        assert all(v.shape == (9, 48, 64, 3) for v in videos)
        assert np.abs(videos[0][0].astype(float) - videos[1][0]).mean() < 3.0
        assert np.abs(videos[0][-1].astype(float) - videos[1][-1]).mean() > 3.0
        # the mp4 shows the ground-truth render
        img, _ = render(spec, c2w[1], K_n)
        assert np.abs(videos[1].astype(float) - img).mean() < 8.0 < np.abs(videos[2].astype(float) - img).mean()
    with open(root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["file_name"] == "f18_aperture10/scene1/videos/cam01.mp4"
    assert rows[0]["text"].startswith("A room with")


def test_resume_skips_complete_scenes_and_is_deterministic(written, tmp_path):
    out, root = written
    video = root / "f18_aperture10" / "scene1" / "videos" / "cam02.mp4"
    before = video.stat().st_mtime_ns
    generate(out, scenes=2, cameras=3, height=48, width=64, frames=9, seed=7, workers=1,
             lenses=("f18_aperture10", "f35_aperture2.4"))
    assert video.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings"):
        generate(out, scenes=1, cameras=3, height=48, width=64, frames=11, seed=7, lenses=("f18_aperture10",))
    # a second run elsewhere (2 worker processes) writes the same bytes
    root2 = generate(tmp_path, scenes=2, cameras=3, height=48, width=64, frames=9, seed=7, workers=2,
                     lenses=("f18_aperture10", "f35_aperture2.4"))
    for p in sorted(root.rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (root2 / p.relative_to(root)).read_bytes(), p


def test_command_line(tmp_path):
    cmd = [sys.executable, "-m", "track2view.synthetic", "--out", str(tmp_path), "--scenes", "1", "--cameras", "2",
           "--size", "16", "--width", "24", "--frames", "3", "--lenses", "f50_aperture2.4"]
    subprocess.run(cmd, check=True, capture_output=True)
    frames, fps = read_video(tmp_path / "train" / "f50_aperture2.4" / "scene1" / "videos" / "cam02.mp4")
    assert frames.shape == (3, 16, 24, 3) and fps == 15.0


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--cameras 1 must be in"):
        generate(tmp_path, scenes=1, cameras=1)
    with pytest.raises(ValueError, match="must be even"):
        generate(tmp_path, scenes=1, cameras=2, height=47)
    with pytest.raises(ValueError, match=r"--trajectory-kinds pan,spin: give one or more of .* \(unknown: spin\)"):
        generate(tmp_path, scenes=1, cameras=2, trajectory_kinds=("pan", "spin"))
    with pytest.raises(ValueError, match="image size 16x0"):  # --width 0 is a width, not "unset"
        generate(tmp_path, scenes=1, cameras=2, height=16, width=0)
    assert list(tmp_path.iterdir()) == []
    # the command line: one line, exit status 2 (tests/test_reliability_data.py tries every value check)
    r = subprocess.run([sys.executable, "-m", "track2view.synthetic", "--out", str(tmp_path), "--scenes", "1",
                        "--supersample", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "python -m track2view.synthetic: error: --supersample 0 must be >= 1 (rays per pixel side) "
        "(T2V_TRACEBACK=1 shows the traceback)"], r.stderr
