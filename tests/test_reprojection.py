from types import SimpleNamespace

import numpy as np
import pytest
import torch

from track2view.cameras import project
from track2view.data.latents import CenterCrop
from track2view.inference.reprojection import NoValidTracksError, median_depth, prepare_tracks, reproject
from track2view.trackers.queries import video_queries
from track2view.tracks import SOURCE, TARGET
from track2view.inference.trajectories import make_trajectory, rotation

T, N = 9, 40


def toy_tracking(t=T, n=N, size=(64, 64), seed=0, metric=True):
    """A handheld source camera looking at points 3-6 m ahead (the schema of docs/architecture.md)."""
    rng = np.random.default_rng(seed)
    c2w = np.stack([np.eye(4)] * t)
    for i in range(t):
        c2w[i, :3, :3] = rotation([0, 1, 0], 0.5 * i)
        c2w[i, :3, 3] = [0.02 * i, 0.0, 0.01 * i]
    k = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])
    pts0 = np.stack([rng.uniform(-1, 1, n), rng.uniform(-2, 2, n), rng.uniform(3, 6, n)], -1)
    pts = pts0[None] + np.linspace(0, 0.1, t)[:, None, None] * np.array([1.0, 0, 0])  # points drift right
    visible = rng.random((t, n)) > 0.1
    return SimpleNamespace(c2w=c2w.astype(np.float32), intrinsics=np.broadcast_to(k, (t, 3, 3)).astype(np.float32),
                           points_world=pts.astype(np.float32), visible=visible, metric=np.array(metric),
                           image_size=np.array(size, dtype=np.int64))


def test_identity_trajectory_reproduces_the_source_tracks():
    tracking = toy_tracking()
    tracks = reproject(tracking, tracking.c2w)
    assert tracks.depth.shape == (2, T, N)
    torch.testing.assert_close(tracks.uv[TARGET], tracks.uv[SOURCE])
    uv, depth = project(tracking.points_world.astype(np.float64), tracking.c2w.astype(np.float64),
                        tracking.intrinsics.astype(np.float64))
    np.testing.assert_allclose(tracks.uv[SOURCE].numpy(), uv, atol=1e-6)
    inside = ((uv >= 0) & (uv <= 1)).all(-1) & (depth > 0)
    # source validity includes the tracker's visibility; the target's is geometric only
    np.testing.assert_array_equal(tracks.valid[SOURCE].numpy(), inside & tracking.visible)
    np.testing.assert_array_equal(tracks.valid[TARGET].numpy(), inside)


def test_target_validity_is_positive_depth_and_inside_the_frame():
    tracking = toy_tracking()
    behind = make_trajectory("pan_right", T, 180, mode="direct").target_c2w(tracking.c2w)
    tracks = reproject(tracking, behind)
    assert (tracks.depth[TARGET] < 0).all() and not tracks.valid[TARGET].any()
    aside = make_trajectory("pan_right", T, 60, mode="direct").target_c2w(tracking.c2w)  # out of a 53 deg view
    tracks = reproject(tracking, aside)
    assert (tracks.depth[TARGET] > 0).all() and not tracks.valid[TARGET].any()


def test_crop_to_the_model_size_moves_tracks_like_the_frames():
    tracking = toy_tracking(size=(64, 64))
    full = reproject(tracking, tracking.c2w)
    cropped = reproject(tracking, tracking.c2w, image_size=(32, 48))  # cover 48x48, crop 8 rows top and bottom
    expected = CenterCrop((64, 64), (32, 48)).apply_uv(full.uv.numpy())
    np.testing.assert_allclose(cropped.uv.numpy(), expected, atol=1e-5)
    assert cropped.valid.sum() < full.valid.sum()


def test_prepare_tracks_subsamples_to_the_latent_stride_and_pads():
    tracking = toy_tracking()
    traj = make_trajectory("arc_left", T, 10, pivot_depth=median_depth(tracking))
    prepared = prepare_tracks(tracking, traj, T, num_tracks=64)
    assert prepared.full.depth.shape == (2, T, 64) and prepared.latent.depth.shape == (2, 3, 64)
    torch.testing.assert_close(prepared.latent.uv, prepared.full.uv[:, ::4])
    assert not prepared.full.valid[:, :, N:].any()  # padding is invalid
    np.testing.assert_allclose(prepared.target_c2w, traj.target_c2w(tracking.c2w.astype(np.float64)))
    # a longer tracking is cut to the clip; a shorter one is refused
    assert prepare_tracks(tracking, make_trajectory("dolly_in", 5, 0.5), 5).full.num_frames == 5
    with pytest.raises(ValueError, match="cover 9 frames but 13"):
        prepare_tracks(tracking, make_trajectory("dolly_in", 13, 0.5), 13)


def test_prepare_tracks_truncates_to_a_seeded_random_subset_of_both_query_halves():
    """More tracks than the model takes: a seeded random subset in the original order, the same for every
    trajectory, not the first ones (query_points puts the frame-0 half first, the last-frame half after it)."""
    tracking = toy_tracking()
    trajectories = [make_trajectory(name, T, 10, pivot_depth=median_depth(tracking))
                    for name in ("arc_left", "arc_right")]

    def kept(prepared, trajectory):  # indices into the tracking's N tracks of the tracks that were kept
        every = reproject(tracking, trajectory.target_c2w(tracking.c2w.astype(np.float64)))
        distance = (prepared.full.depth.flatten(0, 1).T[:, None] - every.depth.flatten(0, 1).T[None]).abs().amax(-1)
        assert distance.min(dim=1).values.max() == 0
        return distance.argmin(dim=1)

    a, b = (prepare_tracks(tracking, traj, T, num_tracks=N // 2) for traj in trajectories)
    assert a.full.depth.shape == (2, T, N // 2) and a.latent.depth.shape == (2, 3, N // 2)
    torch.testing.assert_close(a.latent.uv, a.full.uv[:, ::4])
    idx = kept(a, trajectories[0])
    assert (idx.diff() > 0).all() and (idx < N // 2).any() and (idx >= N // 2).any()
    assert torch.equal(kept(b, trajectories[1]), idx)  # the same points for every trajectory
    assert torch.equal(kept(prepare_tracks(tracking, trajectories[0], T, num_tracks=N // 2), trajectories[0]), idx)
    other = prepare_tracks(tracking, trajectories[0], T, num_tracks=N // 2, seed=1)
    assert not torch.equal(kept(other, trajectories[0]), idx)


def test_no_valid_target_track_names_the_trajectory():
    tracking = toy_tracking()
    with pytest.raises(NoValidTracksError, match="'pan_left'.*--amount"):
        prepare_tracks(tracking, make_trajectory("pan_left", T, 170, mode="direct"), T)


def test_median_depth_of_visible_points():
    tracking = toy_tracking()
    _, depth = project(tracking.points_world.astype(np.float64), tracking.c2w.astype(np.float64),
                       tracking.intrinsics.astype(np.float64))
    assert median_depth(tracking) == pytest.approx(np.median(depth[tracking.visible]), rel=1e-6)
    assert 3 < median_depth(tracking) < 6


# ---- against the ground truth of a synthetic scene (oracle tracker) --------------------------------------
@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from track2view.synthetic import random_scene, write_scene

    spec = random_scene(seed=3, index=0, num_cameras=3, height=32, width=48, num_frames=9, lens="f24_aperture5")
    return write_scene(tmp_path_factory.mktemp("scenes"), spec, supersample=1)


def test_reprojected_tracks_match_the_ground_truth_target_tracks(scene, tmp_path):
    """Track cam01 with the oracle, re-render towards cam03 given as a custom pose file (relative to the source
    camera at frame 0): the reprojected target tracks equal the oracle's tracks of cam03 within 0.5 px."""
    from track2view.io import read_video
    from track2view.inference.reprojection import track_video
    from track2view.synthetic import load_ground_truth
    from track2view.trackers import get_tracker
    from track2view.inference.trajectories import load_poses, save_poses

    _, names, c2w, _ = load_ground_truth(scene)
    src, tgt = scene / "videos" / "cam01.mp4", scene / "videos" / "cam03.mp4"
    frames, _ = read_video(src)
    t, h, w = frames.shape[:3]
    tracking = track_video(frames, "oracle", 96, [(str(src), i) for i in range(t)])
    assert tracking.metric and tracking.num_points == 96

    poses = np.linalg.inv(c2w[0, 0]) @ c2w[2]  # cam03 relative to cam01 at frame 0
    trajectory = load_poses(save_poses(tmp_path / "cam03.json", poses), t)
    prepared = prepare_tracks(tracking, trajectory, t)
    np.testing.assert_allclose(prepared.target_c2w, c2w[2], atol=1e-4)

    # ground truth: the same queries tracked by the oracle through cam01 then cam03 (one sequence)
    queries = video_queries(t, 96, h, w)
    both = np.concatenate([frames, read_video(tgt)[0]])
    sources = [(str(src), i) for i in range(t)] + [(str(tgt), i) for i in range(t)]
    truth = get_tracker("oracle").track(both, queries, sources)
    uv_true, depth_true = truth.project()
    seen = truth.visible[t:]
    assert seen.sum() > 50
    err_px = np.abs(prepared.full.uv[TARGET].numpy() - uv_true[t:]) * [w, h]
    assert err_px[seen].max() < 0.5
    np.testing.assert_allclose(prepared.full.depth[TARGET].numpy()[seen], depth_true[t:][seen], rtol=1e-4)
    assert prepared.full.valid[TARGET].numpy()[seen].all()  # visible in the truth => valid in ours
    # and the source half equals the oracle's own source tracks
    err_src = np.abs(prepared.full.uv[SOURCE].numpy() - uv_true[:t]) * [w, h]
    assert err_src[truth.visible[:t]].max() < 0.5


def test_tracks_point_at_the_same_colours_in_both_videos(scene, tmp_path):
    """Photometric end to end: the rendered cam01 video tracked by the oracle and reprojected into cam03 (given as a
    pose file) points at the same surface colours in the cam01 and cam03 videos, read with the conditioner's own
    bilinear sampling, at every frame and at the latent stride; a flipped axis, a wrong frame stride or swapped
    views would read unrelated pixels. References: the cam03 video read at the source uv (no warp) and shuffled
    pairs."""
    from track2view.conditioning.geometry import bilinear_sample
    from track2view.inference.reprojection import track_video
    from track2view.inference.trajectories import load_poses, save_poses
    from track2view.io import read_video
    from track2view.synthetic import load_ground_truth

    _, _, c2w, _ = load_ground_truth(scene)
    source, target = (read_video(scene / "videos" / f"{cam}.mp4")[0] for cam in ("cam01", "cam03"))
    t = len(source)
    tracking = track_video(source, "oracle", 256, [(str(scene / "videos" / "cam01.mp4"), i) for i in range(t)])
    trajectory = load_poses(save_poses(tmp_path / "cam03.json", np.linalg.inv(c2w[0, 0]) @ c2w[2]), t)
    prepared = prepare_tracks(tracking, trajectory, t)

    def colours(video, frames, uv):  # video [T, H, W, 3] at `frames`, uv [F, N, 2] -> [F, N, 3]
        return bilinear_sample(torch.from_numpy(video[frames]).permute(0, 3, 1, 2).float(), uv.float())

    for tracks, frames in ((prepared.full, list(range(t))), (prepared.latent, list(range(0, t, 4)))):
        both = tracks.valid[SOURCE] & tracks.valid[TARGET]
        assert both.sum() > 200
        seen = colours(source, frames, tracks.uv[SOURCE])
        warped = colours(target, frames, tracks.uv[TARGET])
        error = {"warp": warped, "no warp": colours(target, frames, tracks.uv[SOURCE]),
                 "shuffled": warped[:, torch.randperm(warped.shape[1], generator=torch.Generator().manual_seed(0))]}
        error = {k: float((seen - v).abs().mean(-1)[both].median()) for k, v in error.items()}  # of 255
        assert error["warp"] < 0.6 * error["no warp"] and error["warp"] < 0.25 * error["shuffled"], error
