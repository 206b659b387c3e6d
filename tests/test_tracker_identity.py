"""Query identity and SpatialTrackerV2's adapter against a stand-in upstream clone of ours
(track2view.testing.fake_spatialtracker.py: the upstream interface, `.to()` returning None, and predictors that
reorder, duplicate or drop queries)."""

import os
import sys
import types

import numpy as np
import pytest
import torch

from track2view.trackers import QueryIdentityError, TrackerOutputError, check_query_identity, get_tracker
from track2view.trackers import stv2_upstream as up
from track2view.testing.fake_spatialtracker import fake_clone, forget_upstream, write_fake_clone
from track2view.trackers.queries import query_points
from track2view.trackers.stv2_coords import ProcessedGeometry, processed_to_normalized, queries_to_tracker

H, W, T = 48, 80, 6


def video():
    return np.random.default_rng(0).integers(0, 255, (T, H, W, 3), dtype=np.uint8)


def queries(n=40):
    return query_points(n, (0, T // 2 - 1), np.random.default_rng(1), H, W)


def at_rest(q):
    """Tracks that stay on their query point: uv [T, N, 2]."""
    return np.repeat(q[None, :, 1:], T, 0)


# ---- the check itself -------------------------------------------------------------------------------------
def test_identity_check_passes_one_to_one_tracks_and_reports_the_error():
    q = queries()
    uv = at_rest(q) + 0.5 / W  # half a pixel off
    report = check_query_identity(uv, q, (H, W), tolerance_px=1.0)
    assert report.num_tracks == 40 and report.max_error_px == pytest.approx(np.hypot(0.5, 0.5 * H / W))


def test_identity_check_catches_reordering_dropping_and_duplicates():
    q = queries()
    with pytest.raises(QueryIdentityError, match=r"\d+ of 40 tracks do not pass through their own query point"):
        check_query_identity(at_rest(q)[:, ::-1], q, (H, W))
    with pytest.raises(QueryIdentityError, match="returned 39 tracks for 40 queries"):
        check_query_identity(at_rest(q)[:, 1:], q, (H, W))
    # a duplicate of a query 1 px away passes the position test, not the duplicate test
    q2 = np.array([[0, 0.5, 0.5], [0, 0.5 + 1.0 / W, 0.5]])
    uv = at_rest(q2)
    uv[:, 1] = uv[:, 0]
    with pytest.raises(QueryIdentityError, match="tracks 0 and 1 are the same track in every frame"):
        check_query_identity(uv, q2, (H, W), tolerance_px=3.0)
    assert isinstance(QueryIdentityError("x"), TrackerOutputError)


def test_upstreams_default_full_point_false_breaks_identity(tmp_path):
    """The stand-in predictor with upstream's default drops queries on unreliable depth (the left strip) and
    appends duplicates, as upstream's SpaTrack.py does; the check catches it."""
    with fake_clone(tmp_path) as opts:
        tracker = get_tracker("spatialtracker_v2", device="cpu", **opts).load()
        front, predictor, preprocess, _ = tracker._models
        g = ProcessedGeometry.for_size(H, W)
        q = queries()
        q[:3, 1] = 0.02  # three queries in the low-confidence strip
        frames = preprocess(torch.from_numpy(video()).permute(0, 3, 1, 2).float())
        with torch.no_grad():
            pred = front(frames[None] / 255)
        args = dict(depth=pred["points_map"][..., 2].numpy(), intrs=pred["intrs"][0].numpy(),
                    extrs=pred["poses_pred"][0].numpy(), unc_metric=pred["unc_metric"].numpy() > 0.5,
                    queries=queries_to_tracker(q, g))
        out = predictor.forward(frames, full_point=False, **args)
        with pytest.raises(QueryIdentityError, match="do not pass through their own query point"):
            check_query_identity(processed_uv(out[5], g), q, (g.resized_height, g.width))
        out = predictor.forward(frames, full_point=True, **args)  # what the adapter passes
        check_query_identity(processed_uv(out[5], g), q, (g.resized_height, g.width))


def processed_uv(track2d: torch.Tensor, g: ProcessedGeometry) -> np.ndarray:
    return processed_to_normalized(track2d[..., :2].numpy(), g)


# ---- the adapter against the stand-in clone ---------------------------------------------------------------
def test_adapter_runs_the_stand_in_and_keeps_conventions(tmp_path):
    with fake_clone(tmp_path) as opts:
        tracker = get_tracker("spatialtracker_v2", device="cpu", **opts)
        q = queries()
        r = tracker.track(video(), q)  # its Predictor.to() returns None, as upstream's: load must not chain it
        assert r.num_frames == T and r.num_points == 40 and r.image_size == (H, W) and not r.metric
        # conventions: camera-to-world with frame 0 at the origin, normalized intrinsics, the query where it was
        np.testing.assert_allclose(r.c2w[0], np.eye(4), atol=1e-6)
        np.testing.assert_allclose(r.c2w[:, 0, 3], 0.02 * np.arange(T), atol=1e-6)
        assert 0.4 < r.intrinsics[0, 0, 2] < 0.6 and 0.4 < r.intrinsics[0, 1, 2] < 0.6 and r.intrinsics[0, 2, 2] == 1
        uv, depth = r.project()
        t = q[:, 0].astype(int)
        np.testing.assert_allclose(uv[t, np.arange(40)], q[:, 1:], atol=1e-5)
        assert (depth > 0).all()
        # confidence kept; visibility is vis_pred = sigmoid + 0.2 > 0.5: the stand-in's out-of-frame points
        # (sigmoid(-3) + 0.2 = 0.25) are invisible, the others (0.95 + 0.2) visible
        np.testing.assert_allclose(r.confidence, 0.8, atol=1e-6)
        inside = ((uv >= 0) & (uv <= 1)).all(-1)
        np.testing.assert_array_equal(r.visible, inside)
        assert tracker.limits == {"window": 500, "overlap": 4, "max_len": 512}


@pytest.mark.parametrize("behaviour,match", [
    ("reorder", "do not pass through their own query point"),
    ("duplicate", "(do not pass through their own query point|are the same track)"),
    ("drop", "returned tracks of shape .* expected one track per query")])
def test_adapter_refuses_outputs_that_break_identity(tmp_path, behaviour, match):
    with fake_clone(tmp_path, behaviour=behaviour) as opts:
        with pytest.raises(TrackerOutputError, match=match):
            get_tracker("spatialtracker_v2", device="cpu", **opts).track(video(), queries())


def test_adapter_device_frame_limit_and_random_weights(tmp_path, monkeypatch):
    with fake_clone(tmp_path / "cuda", cuda=True) as opts:  # a SpaTrack.py that hard-codes .cuda()
        with pytest.raises(RuntimeError, match=r"runs on CUDA only: .* hard-coded \.cuda\(\); got device='cpu'"):
            get_tracker("spatialtracker_v2", device="cpu", **opts).load()
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with fake_clone(tmp_path / "nocuda") as opts:
        with pytest.raises(RuntimeError, match="device='cuda' but torch sees no CUDA device"):
            get_tracker("spatialtracker_v2", device="cuda", **opts).load()
    with fake_clone(tmp_path / "short", max_len=4) as opts:
        with pytest.raises(ValueError, match=r"at most max_len=4 frames per window .* 6-frame sequence"):
            get_tracker("spatialtracker_v2", device="cpu", **opts).track(video(), queries())
    with fake_clone(tmp_path / "random") as opts:  # random weights: constructors, no weight directories
        tracker = get_tracker("spatialtracker_v2", device="cpu", repo_dir=opts["repo_dir"], random_weights=True,
                              track_num=32)
        assert tracker.track(video(), queries()).num_points == 40
        assert tracker._models[1].spatrack.track_num == 32


def test_import_shims_and_a_foreign_models_package(tmp_path, monkeypatch):
    tvio = types.ModuleType("torchvision.io")
    tv = types.ModuleType("torchvision")
    tv.io = tvio
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.io", tvio)
    monkeypatch.delenv("FFMPEG_BINARY", raising=False)
    up.install_import_shims()
    assert callable(tvio.write_video) and os.environ["FFMPEG_BINARY"] == "auto-detect"
    with pytest.raises(NotImplementedError, match="removed in torchvision 0.26"):
        tvio.write_video("x.mp4", None)
    other = write_fake_clone(tmp_path / "other")
    with fake_clone(tmp_path / "mine") as opts:
        sys.path.insert(0, str(other))
        try:
            __import__("models")
            with pytest.raises(ImportError, match="a package named 'models' is already imported from"):
                get_tracker("spatialtracker_v2", device="cpu", **opts).load()
        finally:
            forget_upstream(other)


def test_front_end_outputs_are_checked_and_repaired_only_for_random_weights():
    from track2view.trackers.spatialtracker_v2 import usable_front

    poses, depth = np.broadcast_to(np.eye(4), (2, 4, 4)), np.ones((2, 4, 6))
    K = np.broadcast_to(np.array([[np.inf, 0, 3], [0, 5.0, 2], [0, 0, 1]]), (2, 3, 3)).copy()
    with pytest.raises(TrackerOutputError, match="non-finite intrinsics"):
        usable_front(poses, K, depth, width=6)
    fixed = usable_front(poses, K, depth, width=6, repair=True)  # an untrained camera head's zero field of view
    assert (fixed[:, 0, 0] == 5.0).all() and (fixed[:, 1, 1] == 5.0).all()
    K[:, 1, 1] = 0.0
    assert (usable_front(poses, K, depth, width=6, repair=True)[:, [0, 1], [0, 1]] == 6.0).all()
    with pytest.raises(TrackerOutputError, match="non-finite depth"):
        usable_front(poses, fixed, depth * np.nan, width=6)


def test_poses_are_snapped_to_the_nearest_rotation():
    from track2view.trackers.stv2_coords import nearest_rigid

    c, s = np.cos(0.3), np.sin(0.3)
    c2w = np.broadcast_to(np.eye(4), (3, 4, 4)).copy()
    c2w[:, :3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    c2w[:, :3, 3] = [1.0, 2.0, 3.0]
    noisy = c2w.copy()
    noisy[:, :3, :3] += np.random.default_rng(0).normal(scale=3e-3, size=(3, 3, 3))  # bfloat16-sized errors
    fixed, deviation = nearest_rigid(noisy)
    assert 1e-3 < deviation < 0.05
    R = fixed[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    np.testing.assert_allclose(fixed, c2w, atol=1e-2)
    np.testing.assert_array_equal(fixed[:, :3, 3], c2w[:, :3, 3])
