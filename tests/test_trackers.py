"""Tracker interface: TrackingResult files and validation, the oracle backend, SpatialTrackerV2's adapter
(error paths and coordinate conversions; the model itself cannot run here). The adapter against a stand-in
clone of ours (track2view.testing.fake_spatialtracker.py) and the query identity check: tests/test_tracker_identity.py."""

import numpy as np
import pytest

from track2view import cameras as C
from track2view.io import read_video
from track2view.synthetic import generate, load_ground_truth
from track2view.synthetic.render import camera_rays, cast
from track2view.synthetic.scene import object_poses
from track2view.trackers import TrackingResult, available_trackers, get_tracker, parse_tracker_options
from track2view.trackers import spatialtracker_v2 as st
from track2view.testing.fake_spatialtracker import forget_upstream, write_fake_weights


def make_result(T=4, N=5, seed=0):
    rng = np.random.default_rng(seed)
    c2w = np.broadcast_to(np.eye(4), (T, 4, 4)).copy()
    c2w[:, :3, 3] = rng.normal(size=(T, 3))
    K = np.broadcast_to(C.intrinsics_from_lens("f24_aperture5", 32, 48), (T, 3, 3))
    return TrackingResult(c2w, K, rng.normal(size=(T, N, 3)), rng.random((T, N)) > 0.5, True, (32, 48))


def test_tracking_result_round_trip(tmp_path):
    r = make_result()
    path = r.save(tmp_path / "sub" / "tracks.npz")
    back = TrackingResult.load(path)
    for k, v in r.to_arrays().items():
        np.testing.assert_array_equal(getattr(back, k) if k not in ("metric", "image_size") else v, v)
    assert back.metric is True and back.image_size == (32, 48)
    assert back.c2w.dtype == np.float32 and back.visible.dtype == bool
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["c2w", "image_size", "intrinsics", "metric", "points_world", "visible"]
        assert f["image_size"].dtype == np.int64 and f["metric"].shape == ()


def test_confidence_is_kept_and_optional(tmp_path):
    r = make_result(T=4, N=5)
    conf = np.linspace(0, 1, 20).reshape(4, 5)
    c = TrackingResult(r.c2w, r.intrinsics, r.points_world, r.visible, True, (32, 48), confidence=conf)
    back = TrackingResult.load(c.save(tmp_path / "c.npz"))
    np.testing.assert_allclose(back.confidence, conf, atol=1e-7)
    assert back.confidence.dtype == np.float32
    # selection, reversal and re-referencing carry it along
    np.testing.assert_array_equal(back.frames(np.arange(3, -1, -1)).confidence, back.confidence[::-1])
    np.testing.assert_array_equal(back.points([4, 0]).confidence, back.confidence[:, [4, 0]])
    np.testing.assert_array_equal(back.relative_to(back.c2w[1]).confidence, back.confidence)
    # arrays written before it existed still load, without it
    assert TrackingResult.load(r.save(tmp_path / "old.npz")).confidence is None
    with pytest.raises(ValueError, match=r"confidence must be \[T, N\] = \(4, 5\) with values in \[0, 1\]"):
        TrackingResult(r.c2w, r.intrinsics, r.points_world, r.visible, True, (32, 48), confidence=conf * 2)
    with pytest.raises(ValueError, match="confidence must be"):
        TrackingResult(r.c2w, r.intrinsics, r.points_world, r.visible, True, (32, 48), confidence=conf[:2])


def test_tracking_result_validation(tmp_path):
    r = make_result()
    with pytest.raises(ValueError, match=r"intrinsics must be \[T=4, 3, 3\]"):
        TrackingResult(r.c2w, r.intrinsics[:3], r.points_world, r.visible, True, (32, 48))
    with pytest.raises(ValueError, match="visible must be"):
        TrackingResult(r.c2w, r.intrinsics, r.points_world, r.visible[:, :2], True, (32, 48))
    bad = r.points_world.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="points_world holds NaN"):
        TrackingResult(r.c2w, r.intrinsics, bad, r.visible, True, (32, 48))
    np.savez(tmp_path / "partial.npz", c2w=r.c2w)
    with pytest.raises(ValueError, match=r"missing arrays \['intrinsics'"):
        TrackingResult.load(tmp_path / "partial.npz")
    np.savez(tmp_path / "objects.npz", c2w=np.array([{"a": 1}], dtype=object), intrinsics=r.intrinsics,
             points_world=r.points_world, visible=r.visible, metric=True, image_size=[32, 48])
    with pytest.raises(ValueError, match="not a plain-array npz"):
        TrackingResult.load(tmp_path / "objects.npz")
    with pytest.raises(FileNotFoundError):
        TrackingResult.load(tmp_path / "missing.npz")


def test_selection_relative_and_projection():
    r = make_result(T=5, N=3)
    rev = r.frames(np.arange(4, -1, -1))
    np.testing.assert_array_equal(rev.points_world[0], r.points_world[4])
    rel = r.relative_to(r.c2w[2])
    np.testing.assert_allclose(rel.c2w[2], np.eye(4), atol=1e-6)
    uv, depth = r.project()
    uv_rel, depth_rel = rel.project()
    np.testing.assert_allclose(uv_rel, uv, atol=1e-5)
    np.testing.assert_allclose(depth_rel, depth, atol=1e-5)
    with pytest.raises(ValueError, match="one camera per frame"):
        r.project(r.c2w[:2])


def test_get_tracker_and_input_checks():
    assert available_trackers() == ["oracle", "spatialtracker_v2"]
    with pytest.raises(ValueError, match="unknown tracker 'cotracker'.*oracle, spatialtracker_v2"):
        get_tracker("cotracker")
    tracker = get_tracker("oracle")
    video = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="NORMALIZED"):
        tracker.track(video, np.array([[0, 4.0, 4.0]]), [("x/videos/cam01.mp4", 0)] * 3)
    with pytest.raises(ValueError, match=r"query frames must be integers in \[0, 2\]"):
        tracker.track(video, np.array([[3, 0.5, 0.5]]), [("x/videos/cam01.mp4", 0)] * 3)
    with pytest.raises(ValueError, match="needs frame_sources"):
        tracker.track(video, np.array([[0, 0.5, 0.5]]))
    with pytest.raises(ValueError, match="every frame"):
        tracker.track(video, np.array([[0, 0.5, 0.5]]), [("x/videos/cam01.mp4", 0)])
    with pytest.raises(ValueError, match=r"uint8"):
        tracker.track(video.astype(np.float32), np.array([[0, 0.5, 0.5]]), [("x/videos/cam01.mp4", 0)] * 3)


def test_parse_tracker_options():
    """The one KEY=VALUE parser of both command lines: JSON values, else strings; '-' in keys becomes '_'."""
    assert parse_tracker_options(["repo_dir=/a/b", "track_num=756", "visibility-threshold=0.4", "metric=true",
                                  "device=cuda:1", "note=a=b"]) == {
        "repo_dir": "/a/b", "track_num": 756, "visibility_threshold": 0.4, "metric": True, "device": "cuda:1",
        "note": "a=b"}
    with pytest.raises(ValueError, match="--tracker-option takes KEY=VALUE.*'oops'"):
        parse_tracker_options(["repo_dir=/x", "oops"], flag="--tracker-option")
    with pytest.raises(ValueError, match="--tracker-option takes KEY=VALUE.*'=1'"):
        parse_tracker_options(["=1"])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("oracle"), scenes=1, cameras=2, height=48, width=64, frames=9, seed=3,
                    lenses=("f24_aperture5",))
    return root / "f24_aperture5" / "scene1"


def test_oracle_is_exact(scene):
    spec, names, c2w_gt, K = load_ground_truth(scene)
    a, b = str(scene / "videos" / "cam01.mp4"), str(scene / "videos" / "cam02.mp4")
    video = np.concatenate([read_video(a)[0], read_video(b)[0]])  # [cam01 frames 0..8, cam02 frames 0..8]
    sources = [(a, i) for i in range(9)] + [(b, i) for i in range(9)]
    rng = np.random.default_rng(0)
    queries = np.concatenate([np.repeat([[0.0], [12.0]], 40, 0), rng.uniform(0.02, 0.98, (80, 2))], 1)
    r = get_tracker("oracle").track(video, queries, sources)
    assert r.num_frames == 18 and r.num_points == 80 and r.metric and r.image_size == (48, 64)
    assert r.confidence.shape == (18, 80) and (r.confidence == 1).all()
    np.testing.assert_allclose(r.c2w[12], c2w_gt[1, 3], atol=1e-6)
    uv, depth = r.project()
    # a point is where it was queried, and visible there
    np.testing.assert_allclose(uv[0, :40], queries[:40, 1:], atol=1e-5)
    np.testing.assert_allclose(uv[12, 40:], queries[40:, 1:], atol=1e-5)
    assert r.visible[0, :40].all() and r.visible[12, 40:].all()
    # independent check of motion: ray-cast the query at cam02 frame 3, move the hit with its object's
    # rigid pose (or keep it, for room points) to cam01 frame 7
    o, d = camera_rays(c2w_gt[1, 3][None], K, queries[None, 40:, 1:])
    hit = cast(spec, o, d, [3])
    p3 = o[0] + hit.t[0, :, None] * d[0]
    expected = p3.copy()
    for n, oid in enumerate(hit.object_id[0]):
        if oid >= 6:
            (R3, R7), (t3, t7) = object_poses(spec["objects"][oid - 6], [3, 7], spec["fps"])
            expected[n] = R7 @ R3.T @ (p3[n] - t3) + t7
    np.testing.assert_allclose(r.points_world[7, 40:], expected, atol=1e-4)
    moving = hit.object_id[0] >= 6
    assert moving.any()
    # visibility is exact: where visible, the rendered depth at the point's pixel matches its depth
    for t in (2, 14):
        cam, f = (0, t) if t < 9 else (1, t - 9)
        vis = r.visible[t]
        o, d = camera_rays(c2w_gt[cam, f][None], K, uv[t][None].astype(np.float64))
        hit_t = cast(spec, o, d, [f]).t[0]
        inside = ((uv[t] >= 0) & (uv[t] <= 1)).all(-1) & (depth[t] > 0)
        np.testing.assert_array_equal(vis, inside & (np.abs(hit_t - depth[t]) < 1e-3 * depth[t]))


def test_oracle_errors(scene, tmp_path):
    video = np.zeros((2, 48, 64, 3), np.uint8)
    q = np.array([[0, 0.5, 0.5]])
    with pytest.raises(ValueError, match="camera 'cam07' is not in"):
        get_tracker("oracle").track(video, q, [(str(scene / "videos" / "cam07.mp4"), 0)] * 2)
    with pytest.raises(ValueError, match="outside the scene's 9 frames"):
        get_tracker("oracle").track(video, q, [(str(scene / "videos" / "cam01.mp4"), 9)] * 2)
    with pytest.raises(FileNotFoundError, match="no synthetic ground truth"):
        get_tracker("oracle").track(video, q, [(str(tmp_path / "s" / "videos" / "cam01.mp4"), 0)] * 2)


# ---- SpatialTrackerV2 adapter --------------------------------------------------------------------------
def test_spatialtracker_missing_clone_and_weights(tmp_path):
    video = np.zeros((2, 48, 64, 3), np.uint8)
    q = np.array([[0, 0.5, 0.5]])
    with pytest.raises(RuntimeError, match="needs repo_dir=.*SpaTrackerV2"):
        get_tracker("spatialtracker_v2").track(video, q)
    with pytest.raises(FileNotFoundError, match="not a SpaTrackerV2 clone"):
        get_tracker("spatialtracker_v2", repo_dir=str(tmp_path)).track(video, q)
    (tmp_path / "models" / "SpaTrackV2").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="front_weights=<local directory of Yuxihenry/SpatialTrackerV2_Front>"):
        get_tracker("spatialtracker_v2", repo_dir=str(tmp_path)).track(video, q)
    (tmp_path / "front").mkdir()
    with pytest.raises(FileNotFoundError, match=r"front_weights=.*front lacks \['config.json', 'model.safetensors'\]"):
        get_tracker("spatialtracker_v2", repo_dir=str(tmp_path), front_weights=str(tmp_path / "front")).track(video, q)
    (tmp_path / "front" / "config.json").write_text("{}")
    (tmp_path / "front" / "pytorch_model.bin").write_bytes(b"pickled")  # never unpickled
    with pytest.raises(FileNotFoundError, match=r"lacks \['model.safetensors'\].*pickled .bin/.pth weights are not"):
        get_tracker("spatialtracker_v2", repo_dir=str(tmp_path), front_weights=str(tmp_path / "front")).track(video, q)
    write_fake_weights(tmp_path / "front", {})
    with pytest.raises(FileNotFoundError, match="tracker_weights=<local directory of Yuxihenry/SpatialTrackerV2-Off"):
        get_tracker("spatialtracker_v2", repo_dir=str(tmp_path), front_weights=str(tmp_path / "front")).track(video, q)


def test_spatialtracker_missing_package_is_named(tmp_path):
    """A clone whose module imports a package this environment lacks -> ImportError naming that package."""
    pkg = tmp_path / "clone" / "models" / "SpaTrackV2" / "models" / "vggt4track" / "models"
    pkg.mkdir(parents=True)
    for d in [pkg, *pkg.parents][:5]:
        (d / "__init__.py").write_text("")
    (pkg / "vggt_moe.py").write_text("import pycolmap_not_installed_here\n")
    write_fake_weights(tmp_path / "front", {})
    write_fake_weights(tmp_path / "offline", {})
    tracker = get_tracker("spatialtracker_v2", repo_dir=str(tmp_path / "clone"), front_weights=str(tmp_path / "front"),
                          tracker_weights=str(tmp_path / "offline"), device="cpu")
    try:
        with pytest.raises(ImportError, match="missing package 'pycolmap_not_installed_here'"):
            tracker.load()
    finally:  # leave no trace of the fake clone for other tests
        forget_upstream(tmp_path / "clone")


def test_processed_geometry_matches_reference_sizes():
    g = st.ProcessedGeometry.for_size(480, 832)  # reference: 832x480 becomes 518x294
    assert (g.width, g.height, g.resized_height, g.crop_top) == (518, 294, 294, 0)
    tall = st.ProcessedGeometry.for_size(1280, 720)  # resized to 518 x 924, center-cropped to 518
    assert (tall.width, tall.resized_height, tall.crop_top, tall.height) == (518, 924, 203, 518)


@pytest.mark.parametrize("size", [(480, 832), (1280, 720), (96, 96)])
def test_spatialtracker_coordinate_conversions(size):
    g = st.ProcessedGeometry.for_size(*size)
    # pixel centres: their pixel (0, 0) centre is at integer 0 -> our normalized (0.5 / w', (0.5 + crop) / h')
    np.testing.assert_allclose(st.processed_to_normalized(np.array([0.0, 0.0]), g),
                               [0.5 / g.width, (0.5 + g.crop_top) / g.resized_height])
    uv = np.random.default_rng(0).uniform(0.2, 0.8, (10, 2))
    np.testing.assert_allclose(st.processed_to_normalized(st.normalized_to_processed(uv, g), g), uv, atol=1e-12)
    queries = np.concatenate([np.arange(10)[:, None], uv], 1)
    theirs = st.queries_to_tracker(queries, g)
    np.testing.assert_allclose(theirs[:, 1:], st.normalized_to_processed(uv, g), atol=1e-3)
    np.testing.assert_array_equal(theirs[:, 0], np.arange(10))
    # intrinsics: a camera point projected with their pixel K, converted to normalized coordinates, equals the
    # projection with the converted normalized K
    K_px = np.array([[400.0, 0.0, 250.3], [0.0, 410.0, 140.7], [0.0, 0.0, 1.0]])
    K_n = st.processed_intrinsics_to_normalized(K_px, g)
    p = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]])
    xy = (p / p[:, 2:]) @ K_px.T
    np.testing.assert_allclose(st.processed_to_normalized(xy[:, :2], g), ((p / p[:, 2:]) @ K_n.T)[:, :2], atol=1e-12)


def test_spatialtracker_camera_frame_to_world():
    c2w = np.stack([np.eye(4), C.unreal_to_opencv(C.parse_unreal_matrix("[0 1 0 0] [-1 0 0 0] [0 0 1 0] [100 0 0 1]"))])
    cam_pts = np.array([[[0.0, 0.0, 2.0]], [[0.0, 0.0, 2.0]]])  # 2 m along each camera's optical axis
    world = st.camera_to_world(cam_pts, c2w)
    np.testing.assert_allclose(world[0, 0], [0, 0, 2])
    np.testing.assert_allclose(world[1, 0], [1.0, 2.0, 0.0], atol=1e-12)  # camera at x = 1 m looking along +y
    uv, depth = C.project(world, c2w, np.broadcast_to(np.eye(3), (2, 3, 3)))
    np.testing.assert_allclose(depth, [[2.0], [2.0]])
