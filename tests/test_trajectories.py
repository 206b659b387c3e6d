import json
import math

import numpy as np
import pytest

from track2view.inference.trajectories import (PRESETS, TrajectoryError, load_poses, make_trajectory, preset_motion,
                                     rotation, rotation_angle, save_poses, scene_scale)

T = 17


def forward(m):
    return m[:3, :3] @ np.array([0.0, 0.0, 1.0])


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("amount", [None, 7.5])
def test_each_preset_moves_by_its_amount(name, amount):
    preset = PRESETS[name]
    pivot, units = 3.0, 0.5
    m = preset_motion(name, T, amount, "gradual", pivot_depth=pivot, units_per_metre=units)
    assert m.shape == (T, 4, 4)
    np.testing.assert_allclose(m[0], np.eye(4), atol=1e-12)  # gradual starts at the source pose
    full = abs(preset.default_amount if amount is None else amount)
    last = m[-1]
    if preset.kind == "rotate":
        assert rotation_angle(last[:3, :3]) == pytest.approx(full, abs=1e-6)
        np.testing.assert_allclose(last[:3, 3], 0, atol=1e-12)
        # constant speed: the angle grows linearly
        assert rotation_angle(m[T // 2][:3, :3]) == pytest.approx(full / 2, abs=1e-6)
    elif preset.kind == "translate":
        np.testing.assert_allclose(last[:3, :3], np.eye(3), atol=1e-12)
        assert np.linalg.norm(last[:3, 3]) == pytest.approx(full * units)
        assert np.linalg.norm(m[T // 2][:3, 3]) == pytest.approx(full * units / 2)
    elif preset.kind == "arc":
        assert rotation_angle(last[:3, :3]) == pytest.approx(full, abs=1e-6)
        p = np.array([0.0, 0.0, pivot])
        for mt in m:  # the orbit keeps its distance to the pivot and keeps looking at it
            assert np.linalg.norm(p - mt[:3, 3]) == pytest.approx(pivot)
            in_cam = mt[:3, :3].T @ (p - mt[:3, 3])
            np.testing.assert_allclose(in_cam, [0, 0, pivot], atol=1e-9)
    else:
        np.testing.assert_allclose(m, np.broadcast_to(np.eye(4), m.shape))


def test_directions_follow_opencv_axes():
    last = {n: preset_motion(n, T)[-1] for n in PRESETS}
    assert forward(last["pan_right"])[0] > 0 and forward(last["pan_left"])[0] < 0
    assert forward(last["tilt_up"])[1] < 0 and forward(last["tilt_down"])[1] > 0  # y is down
    assert last["dolly_in"][2, 3] > 0 and last["dolly_out"][2, 3] < 0
    assert last["translate_up"][1, 3] < 0 and last["translate_down"][1, 3] > 0
    assert last["translate_left"][0, 3] < 0 and last["translate_right"][0, 3] > 0
    assert last["arc_left"][0, 3] < 0 and last["arc_right"][0, 3] > 0
    assert last["arc_up"][1, 3] < 0 and last["arc_down"][1, 3] > 0
    # ReCamMaster's amounts as defaults
    assert rotation_angle(last["pan_right"][:3, :3]) == pytest.approx(20)
    assert rotation_angle(last["arc_left"][:3, :3]) == pytest.approx(30)


@pytest.mark.parametrize("name", ["translate_up", "translate_down", "translate_left", "translate_right"])
def test_aimed_translations_keep_the_pivot_centred(name):
    pivot = 4.0
    m = preset_motion(name, T, 1.0, pivot_depth=pivot, aim=True)
    for mt in m:
        in_cam = mt[:3, :3].T @ (np.array([0, 0, pivot]) - mt[:3, 3])
        np.testing.assert_allclose(in_cam[:2], 0, atol=1e-9)
        assert in_cam[2] > 0
    assert np.linalg.norm(m[-1][:3, 3]) == pytest.approx(1.0)
    assert rotation_angle(m[-1][:3, :3]) == pytest.approx(math.degrees(math.atan(1 / 4)))  # ReCamMaster's ~14 deg
    # translate up turns the view down (counter-tilt): the optical axis gets a positive y (down) component
    if name == "translate_up":
        assert forward(m[-1])[1] > 0
    # dolly is unchanged by aiming
    np.testing.assert_allclose(preset_motion("dolly_in", T, 1.0, aim=True), preset_motion("dolly_in", T, 1.0))


def test_direct_mode_holds_the_full_motion_from_frame_zero():
    gradual = preset_motion("arc_left", T, 25, "gradual", pivot_depth=4)
    direct = preset_motion("arc_left", T, 25, "direct", pivot_depth=4)
    for m in direct:
        np.testing.assert_allclose(m, gradual[-1], atol=1e-12)


def test_aliases_and_unknown_names():
    np.testing.assert_allclose(preset_motion("zoom_in", T), preset_motion("dolly_in", T))
    np.testing.assert_allclose(preset_motion("Orbit-Left", T), preset_motion("arc_left", T))
    with pytest.raises(TrajectoryError, match="unknown trajectory 'spin'.*arc_left.*pan_right"):
        preset_motion("spin", T)
    with pytest.raises(TrajectoryError, match="mode"):
        preset_motion("pan_left", T, mode="bullet")
    with pytest.raises(TrajectoryError, match="finite"):
        preset_motion("pan_left", T, amount=float("nan"))


def test_target_follows_the_source_camera_and_static_does_not():
    rng = np.random.default_rng(0)
    source = np.stack([np.eye(4)] * T)
    for t in range(T):
        source[t, :3, :3] = rotation(rng.normal(size=3), 3.0 * t)
        source[t, :3, 3] = [0.1 * t, 0.0, 0.02 * t]
    traj = make_trajectory("pan_right", T, 10)
    target = traj.target_c2w(source)
    for t in range(T):
        np.testing.assert_allclose(target[t], source[t] @ traj.motion[t], atol=1e-12)
        # the relative motion between source and target is exactly the preset's
        np.testing.assert_allclose(np.linalg.inv(source[t]) @ target[t], traj.motion[t], atol=1e-9)
    static = make_trajectory("static", T).target_c2w(source)
    np.testing.assert_allclose(static, np.broadcast_to(source[0], static.shape), atol=1e-12)


def test_scene_scale_relative_and_metric():
    assert scene_scale(8.0, metric=True) == (8.0, 1.0)
    assert scene_scale(8.0, metric=False) == (8.0, 2.0)  # 8 scene units taken as 4 m
    with pytest.raises(TrajectoryError):
        scene_scale(0.0, metric=False)


def _poses(n=T):
    m = preset_motion("arc_right", n, 20, pivot_depth=3.0)
    m[:, :3, 3] += [0.0, 0.0, 0.5]
    return m


def test_pose_files_json_and_npz_c2w_and_w2c(tmp_path):
    c2w = _poses()
    save_poses(tmp_path / "p.json", c2w)
    a = load_poses(tmp_path / "p.json", T)
    np.testing.assert_allclose(a.motion, c2w, atol=1e-12)
    assert a.relative_to == "source_frame0"
    np.savez(tmp_path / "w.npz", w2c=np.linalg.inv(c2w))
    np.testing.assert_allclose(load_poses(tmp_path / "w.npz", T).motion, c2w, atol=1e-9)
    (tmp_path / "w.json").write_text(json.dumps({"pose": "w2c", "poses": np.linalg.inv(c2w).tolist()}))
    np.testing.assert_allclose(load_poses(tmp_path / "w.json", T).motion, c2w, atol=1e-9)
    # metres are scaled to scene units, "scene" units are not
    np.testing.assert_allclose(load_poses(tmp_path / "p.json", T, units_per_metre=2.0).motion[:, :3, 3],
                               2.0 * c2w[:, :3, 3])
    np.savez(tmp_path / "s.npz", c2w=c2w, units=np.array("scene"))
    np.testing.assert_allclose(load_poses(tmp_path / "s.npz", T, units_per_metre=2.0).motion, c2w)
    # a single pose is a static viewpoint; a longer file is cut to the clip
    one = load_poses(_save(tmp_path / "one.json", c2w[-1:]), T)
    assert one.motion.shape == (T, 4, 4) and np.allclose(one.motion, c2w[-1])
    assert load_poses(_save(tmp_path / "long.json", _poses(T + 8)), T).motion.shape == (T, 4, 4)
    # target = source_c2w[0] @ P_t
    source = np.stack([np.eye(4)] * T)
    source[:, 0, 3] = np.arange(T)
    np.testing.assert_allclose(a.target_c2w(source), source[0] @ c2w, atol=1e-12)


def _save(path, poses):
    path.write_text(json.dumps({"convention": "opencv", "pose": "c2w", "poses": np.asarray(poses).tolist()}))
    return path


@pytest.mark.parametrize("poses, message", [
    (np.zeros((T, 3, 4)), r"shape \[T, 4, 4\]"),
    (np.zeros((T, 4, 4, 1)), r"shape \[T, 4, 4\]"),
    (np.where(np.arange(16).reshape(4, 4) == 3, np.nan, np.eye(4))[None].repeat(T, 0), "non-finite"),
    (np.diag([2.0, 1, 1, 1])[None].repeat(T, 0), "rotations"),
    (np.diag([1.0, 1, -1, 1])[None].repeat(T, 0), "rotations"),
    (np.eye(4)[None].repeat(5, 0), "5 poses for a 17-frame clip"),
])
def test_bad_pose_files(tmp_path, poses, message):
    path = _save(tmp_path / "bad.json", poses)
    with pytest.raises(TrajectoryError, match=message):
        load_poses(path, T)


def test_unreadable_pose_files(tmp_path):
    with pytest.raises(TrajectoryError, match="not found"):
        load_poses(tmp_path / "missing.json", T)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(TrajectoryError, match="cannot read"):
        load_poses(tmp_path / "x.json", T)
    (tmp_path / "y.json").write_text(json.dumps({"convention": "opengl", "poses": [np.eye(4).tolist()]}))
    with pytest.raises(TrajectoryError, match="OpenCV"):
        load_poses(tmp_path / "y.json", T)
    np.savez(tmp_path / "z.npz", poses=np.eye(4)[None])
    with pytest.raises(TrajectoryError, match="'c2w' or 'w2c'"):
        load_poses(tmp_path / "z.npz", T)
    (tmp_path / "p.txt").write_text("1 0 0 0")
    with pytest.raises(TrajectoryError, match=".json or .npz"):
        load_poses(tmp_path / "p.txt", T)
    # an npz holding an object array must not be unpickled
    np.savez(tmp_path / "o.npz", c2w=np.array([object()], dtype=object))
    with pytest.raises(TrajectoryError, match="cannot read"):
        load_poses(tmp_path / "o.npz", T)


def test_rotation_helpers():
    r = rotation([0, 1, 0], 30)
    assert rotation_angle(r) == pytest.approx(30)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1)
    assert math.isclose(forward(np.pad(r, ((0, 1), (0, 1))))[0], math.sin(math.radians(30)))
