"""Camera accuracy: RotErr/TransErr/CamMC in both conventions on trajectories of known error, and pycolmap's
global mapper recovering the true cameras of a rendered synthetic orbit."""

import math

import numpy as np
import pytest

from track2view.eval.metric import Clip
from track2view.eval.metrics.camera_accuracy import CameraAccuracy
from track2view.eval.metrics.pose_errors import cami2v_errors, paper_errors, pose_errors
from track2view.inference.trajectories import rigid, rotation, rotation_angle


def trajectory(num_frames, step=(0.1, 0.0, 0.0), yaw_per_frame=0.0):
    return np.stack([rigid(rotation([0, 1, 0], yaw_per_frame * t), np.asarray(step) * t) for t in range(num_frames)])


@pytest.mark.parametrize("angle", [0.5, 3.0, 10.0])
def test_rotation_of_known_angle_gives_that_rotation_error_in_both_conventions(angle):
    true = trajectory(6)
    offset = rotation([1, 2, 3], angle)
    estimated = true.copy()
    estimated[1:, :3, :3] = true[1:, :3, :3] @ offset  # every frame after the first is off by `angle`
    paper, cami2v = paper_errors(true, estimated), cami2v_errors(true, estimated)
    assert paper["rot_err_deg"] == pytest.approx(angle * 5 / 6, rel=1e-9)  # mean over 6 frames, frame 0 exact
    assert cami2v["rot_err_sum"] == pytest.approx(math.radians(angle) * 5, rel=1e-9)  # summed radians
    assert paper["trans_err"] == pytest.approx(0.0, abs=1e-12)  # translations untouched


def test_errors_are_invariant_to_world_frame_and_scale_but_not_to_a_wrong_path():
    true = trajectory(8, step=(0.1, 0.02, 0.05), yaw_per_frame=2.0)
    world = rigid(rotation([0.3, 1, 0.2], 40.0), [5.0, -2.0, 1.0])
    scaled = true.copy()
    scaled[:, :3, 3] *= 3.7
    same = world @ scaled  # another world frame and scale: the same relative trajectory
    errors = pose_errors(true, same)
    assert all(v == pytest.approx(0.0, abs=1e-5) for v in errors.values()), errors  # arccos near 1
    wrong = true.copy()
    wrong[:, 1, 3] += np.linspace(0, 0.4, 8)  # drifts sideways
    worse = pose_errors(true, wrong)
    assert worse["trans_err"] > 0.05 and worse["trans_err_sum"] > 0.1 and worse["cam_mc"] > 0.05


def test_paper_scale_is_taken_from_the_first_two_frames():
    true = trajectory(5, step=(0.2, 0, 0))
    est = true.copy()
    est[:, :3, 3] *= 10.0
    est[4, 0, 3] = 10.0 * 0.2 * 5  # last frame overshoots by one step (0.2 m after alignment)
    assert paper_errors(true, est)["trans_err"] == pytest.approx(0.2 / 5)
    frozen = true.copy()
    frozen[1, :3, 3] = 0.0  # the estimate does not move between frames 0 and 1: no scale
    assert math.isnan(paper_errors(true, frozen)["trans_err"])


def rendered_orbit(num_frames=21, height=120, width=160, degrees=25.0):
    """A static synthetic scene filmed by a camera orbiting a point 4 m ahead (frames, K, true c2w)."""
    from track2view.cameras import intrinsics_from_focal
    from track2view.synthetic import random_scene, render
    from track2view.synthetic.scene import camera_trajectory

    spec = random_scene(seed=3, index=0, num_cameras=2, height=height, width=width, num_frames=num_frames,
                        lens="f24_aperture5")
    spec["objects"] = [dict(o, velocity=[0, 0, 0], yaw_rate=0.0, bob=[0.0, 0.0]) for o in spec["objects"]]
    c2w = camera_trajectory(spec["cameras"]["start"], {"arc": math.radians(degrees), "radius": 4.0}, num_frames)
    K = intrinsics_from_focal(spec["focal_mm"], height, width)
    frames, _ = render(spec, c2w, K, supersample=1)
    return frames, K, np.linalg.inv(c2w[0]) @ c2w


def test_glomap_recovers_the_cameras_of_a_rendered_orbit():
    frames, K, true = rendered_orbit()
    clip = Clip("orbit", frames, target_c2w=true, intrinsics=K)
    scores = CameraAccuracy(num_threads=2)(clip)
    assert scores["pose_failed"] == 0.0
    assert scores["rot_err_deg"] < 1.0, scores
    assert scores["trans_err"] < 0.25 * np.linalg.norm(true[-1, :3, 3]), scores
    # a video that does not follow the target trajectory scores worse
    reversed_clip = Clip("reversed", frames[::-1].copy(), target_c2w=true, intrinsics=K)
    assert CameraAccuracy(num_threads=2)(reversed_clip)["rot_err_deg"] > 5.0


def test_failed_reconstruction_is_counted_not_dropped():
    frames = np.full((6, 64, 80, 3), 128, np.uint8)  # featureless: nothing to reconstruct
    clip = Clip("flat", frames, target_c2w=trajectory(6), intrinsics=np.array([[1, 0, .5], [0, 1.25, .5], [0, 0, 1]]))
    scores = CameraAccuracy(num_threads=1)(clip)
    assert scores["pose_failed"] == 1.0 and math.isnan(scores["rot_err_deg"])
    assert clip.meta["pose_failures"] and "6 frames" in clip.meta["pose_failures"][0]


def test_rotation_angle_helper_matches_geodesic():
    from track2view.eval.metrics.pose_errors import geodesic

    r = rotation([0, 0, 1], 33.0)
    assert math.degrees(geodesic(np.eye(3)[None], r[None])[0]) == pytest.approx(rotation_angle(r))
