"""Curation end to end: synthetic scenes -> oracle tracking -> WebDataset shards, checked against ground truth."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds

from data_curation.curate import CurateConfig, curate, query_points, split_concatenated
from track2view import cameras as C
from track2view.data.schema import CURATED_MEMBERS, decode_sample
from track2view.io import read_video, write_video
from track2view.synthetic import generate, load_ground_truth
from track2view.synthetic.render import camera_rays, cast
from track2view.synthetic.scene import NUM_ROOM_FACES, object_poses
from track2view.trackers import TrackingResult
from track2view.tracks import PairedTracks

H, W, T = 48, 64, 17
CONFIG = CurateConfig(pairs_per_scene=2, seed=0, num_tracks=128, samples_per_shard=2, min_valid_tracks=16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("curate")
    root = generate(base / "synthetic", scenes=3, cameras=3, height=H, width=W, frames=T, seed=1,
                    lenses=("f24_aperture5", "f35_aperture2.4"))
    out = base / "shards"
    # the documented command line, with 2 worker processes
    subprocess.run([sys.executable, "-m", "data_curation.curate", "--root", str(root), "--out", str(out),
                    "--tracker", "oracle", "--pairs-per-scene", "2", "--seed", "0", "--num-tracks", "128",
                    "--workers", "2", "--samples-per-shard", "2", "--min-valid-tracks", "16"],
                   check=True, capture_output=True)
    return root, out


def read_shards(out):
    urls = sorted(str(p) for p in out.glob("shard-*.tar"))
    return [decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False)]


def test_shards_read_back(data):
    root, out = data
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"scenes": 3, "pairs": 6, "accepted": 6, "rejected": 0, "shards": 3}
    assert manifest["throughput"]["pairs"] == 6 and manifest["throughput"]["pairs_per_hour_per_worker"] > 0
    samples = read_shards(out)
    assert [s["__key__"] for s in samples] == [k for sh in manifest["shards"] for k in sh["keys"]]
    with open(root / "metadata.csv", newline="") as f:
        captions = {r["file_name"]: r["text"] for r in csv.DictReader(f)}
    for s in samples:
        assert set(CURATED_MEMBERS) <= set(s)
        assert "." not in s["__key__"]
        meta = s["meta.json"]
        assert (meta["num_frames"], meta["height"], meta["width"], meta["fps"]) == (T, H, W, 15.0)
        src, tgt = meta["cameras"]
        assert src != tgt and s["__key__"] == f"{meta['lens']}-{meta['scene']}-{src}-{tgt}".replace(".", "_")
        assert s["source.mp4"] == (root / meta["lens"] / meta["scene"] / "videos" / f"{src}.mp4").read_bytes()
        assert s["target.mp4"] == (root / meta["lens"] / meta["scene"] / "videos" / f"{tgt}.mp4").read_bytes()
        assert s["txt"] == captions[f"{meta['lens']}/{meta['scene']}/videos/{src}.mp4"] != ""
        tracks = PairedTracks.from_numpy(s["tracks.npz"]).validate()
        assert tuple(tracks.uv.shape) == (2, T, 128, 2)
        # the tracker's confidence per view, track and frame (the oracle's is 1)
        conf = s["tracks.npz"]["confidence"]
        assert conf.shape == (2, T, 128) and conf.dtype == np.float16 and (conf == 1).all() and meta["confidence"]
        assert meta["counts"]["valid_both"] >= 16
        cams = s["cameras.npz"]
        assert cams["c2w"].shape == (2, T, 4, 4) and cams["intrinsics"].shape == (2, T, 3, 3)
        np.testing.assert_allclose(cams["c2w"][0, 0], np.eye(4), atol=1e-6)
        np.testing.assert_allclose(cams["c2w"][1, 0], np.eye(4), atol=1e-5)  # all cameras start at the same pose
        np.testing.assert_allclose(np.linalg.det(cams["c2w"][..., :3, :3]), 1.0, atol=1e-5)
        np.testing.assert_allclose(cams["intrinsics"][0, 0], C.intrinsics_from_lens(meta["lens"], H, W), atol=1e-6)
        tracking = TrackingResult.from_arrays(s["tracking.npz"])
        assert tracking.num_frames == T and tracking.num_points == 128 and tracking.image_size == (H, W)
        assert tracking.confidence.shape == (T, 128)
        np.testing.assert_allclose(tracking.c2w[0], np.eye(4), atol=1e-6)
        # tracking.npz (source view, original time order) reproduces the source tracks
        uv, depth = tracking.project()
        v = tracks.valid[0].numpy()
        np.testing.assert_allclose(uv[v], tracks.uv[0].numpy()[v], atol=1e-5)


def ground_truth_projections(root, meta, uv_src0):
    """Independent ground truth: ray-cast source-view points at frame 0 into the scene spec, move each with its
    object's rigid motion, and project through the cameras parsed from the Unreal JSON.
    Returns (uv [2, T, N, 2] in pixels, depth [2, T, N])."""
    scene = root / meta["lens"] / meta["scene"]
    spec = load_ground_truth(scene)[0]
    cams = C.read_multicam_cameras(scene / "cameras" / "camera_extrinsics.json")
    K = C.intrinsics_from_lens(meta["lens"], H, W)
    src, tgt = (cams[c] for c in meta["cameras"])
    o, d = camera_rays(src[0][None], K, uv_src0[None].astype(np.float64))
    hit = cast(spec, o, d, [0])
    p0 = o[0] + hit.t[0][:, None] * d[0]
    points = np.repeat(p0[None], T, 0)
    for n, oid in enumerate(hit.object_id[0]):
        if oid >= NUM_ROOM_FACES:
            R, t = object_poses(spec["objects"][oid - NUM_ROOM_FACES], np.arange(T), spec["fps"])
            points[:, n] = np.einsum("fij,j->fi", R, R[0].T @ (p0[n] - t[0])) + t
    out = [C.project(points, view, np.broadcast_to(K, (T, 3, 3))) for view in (src, tgt)]
    uv = np.stack([u for u, _ in out]) * [W, H]
    return uv, np.stack([dd for _, dd in out]), hit.object_id[0]


def test_source_and_target_tracks_are_the_same_point(data):
    root, out = data
    checked_moving = 0
    for s in read_shards(out):
        tr = s["tracks.npz"]
        keep = tr["valid"][0, 0]  # seen in the source view at frame 0 (the queries at sequence frame T-1)
        uv_gt, depth_gt, ids = ground_truth_projections(root, s["meta.json"], tr["uv"][0, 0, keep])
        valid = tr["valid"][:, :, keep]
        err = np.linalg.norm(tr["uv"][:, :, keep] * [W, H] - uv_gt, axis=-1)
        assert valid[1].sum() > 50 and err[valid].max() < 0.5, err[valid].max()
        np.testing.assert_allclose(tr["depth"][:, :, keep][valid], depth_gt[valid], rtol=1e-4)
        checked_moving += int((valid[:, 1:] & (ids >= NUM_ROOM_FACES)).sum())
        # the same check through the shard's relative cameras
        c2w, K = s["cameras.npz"]["c2w"], s["cameras.npz"]["intrinsics"]
        world = C.unproject(tr["uv"][0], tr["depth"][0], c2w[0], K[0])  # source-view points, relative frame
        uv_t, _ = C.project(world, c2w[1], K[1])
        both = tr["valid"][0] & tr["valid"][1]
        assert np.abs(uv_t - tr["uv"][1])[both].max() * W < 0.05
    assert checked_moving > 20  # moving objects were among the checked points


def test_validity_is_what_inference_knows(data):
    """Source view: in frame, positive depth and seen by the tracker. Target view: in frame and positive depth,
    also where the point is occluded (at inference there is no target video, so reprojection cannot know)."""
    root, out = data
    occluded = {0: 0, 1: 0}
    for s in read_shards(out):
        tr, meta = s["tracks.npz"], s["meta.json"]
        scene = root / meta["lens"] / meta["scene"]
        spec = load_ground_truth(scene)[0]
        cams = C.read_multicam_cameras(scene / "cameras" / "camera_extrinsics.json")
        K = C.intrinsics_from_lens(meta["lens"], H, W)
        for view, camera in enumerate(meta["cameras"]):
            uv, depth, valid = tr["uv"][view], tr["depth"][view], tr["valid"][view]
            geometric = ((uv >= 0) & (uv <= 1)).all(-1) & (depth > 0)
            # independent occlusion test: the ray through the point's pixel hits something nearer than the point
            o, d = camera_rays(cams[camera][:T], K, np.clip(uv, 0, 1).astype(np.float64))
            hidden = geometric & (cast(spec, o, d, np.arange(T)).t < depth * (1 - 1e-3))
            occluded[view] += int(hidden.sum())
            if view == 0:
                assert not valid[hidden].any() and (valid <= geometric).all()
            else:
                np.testing.assert_array_equal(valid, geometric)
    assert occluded[0] > 0 and occluded[1] > 0, occluded  # the scenes do hide points in both views


def test_reversal_and_split():
    # a fake 2T-frame result whose points encode the sequence frame index
    n = 3
    seq = np.arange(2 * T, dtype=float)
    c2w = np.broadcast_to(np.eye(4), (2 * T, 4, 4)).copy()
    c2w[:, 0, 3] = seq
    r = TrackingResult(c2w, np.broadcast_to(np.eye(3), (2 * T, 3, 3)), np.repeat(seq[:, None, None], n, 1) *
                       np.ones(3), np.ones((2 * T, n), bool), True, (H, W))
    a, b = split_concatenated(r, T)
    # A's frame f was sequence frame T-1-f; B's frame f was sequence frame T+f
    np.testing.assert_array_equal(a.points_world[:, 0, 0], T - 1 - np.arange(T))
    np.testing.assert_array_equal(a.c2w[:, 0, 3], T - 1 - np.arange(T))
    np.testing.assert_array_equal(b.points_world[:, 0, 0], T + np.arange(T))


def test_skipping_the_re_reversal_would_be_caught(data):
    """The ground-truth check of the source view fails by many pixels on time-reversed source tracks."""
    root, out = data
    worst = 0.0
    for s in read_shards(out):
        tr = s["tracks.npz"]
        keep = tr["valid"][0, 0]
        uv_gt, _, _ = ground_truth_projections(root, s["meta.json"], tr["uv"][0, 0, keep])
        reversed_uv, reversed_valid = tr["uv"][0, ::-1][:, keep], tr["valid"][0, ::-1][:, keep]
        v = reversed_valid & tr["valid"][0][:, keep]
        worst = max(worst, np.linalg.norm(reversed_uv * [W, H] - uv_gt[0], axis=-1)[v].max())
    assert worst > 5.0


def test_queries_half_at_each_frame_on_a_jittered_grid():
    q = query_points(1152, (0, 80), np.random.default_rng(0), 480, 832)
    assert q.shape == (1152, 3) and (q[:576, 0] == 0).all() and (q[576:, 0] == 80).all()
    assert q[:, 1:].min() > 0 and q[:, 1:].max() < 1
    # jittered grid: every cell of the grid holds at most one query
    gx = int(np.ceil(np.sqrt(576 * 832 / 480)))
    gy = int(np.ceil(576 / gx))
    cells = np.floor(q[:576, 1] * gx) + gx * np.floor(q[:576, 2] * gy)
    assert len(np.unique(cells)) == 576
    r = query_points(7, (0, 16), np.random.default_rng(0), 48, 64, sampling="random")
    assert r.shape == (7, 3) and (r[:4, 0] == 0).all() and (r[4:, 0] == 16).all()
    np.testing.assert_array_equal(q, query_points(1152, (0, 80), np.random.default_rng(0), 480, 832))


def test_rejected_pairs_are_listed_with_reasons(data, tmp_path):
    root, _ = data
    bad = tmp_path / "train"
    shutil.copytree(root, bad)
    videos = bad / "f24_aperture5" / "scene1" / "videos"
    (videos / "cam01.mp4").write_bytes(b"this is not an mp4 file")  # unreadable
    frames, fps = read_video(videos / "cam02.mp4")
    write_video(videos / "cam02.mp4", frames[:-4], fps=fps)  # truncated
    other, _ = read_video(bad / "f35_aperture2.4" / "scene1" / "videos" / "cam03.mp4")
    write_video(bad / "f24_aperture5" / "scene2" / "videos" / "cam03.mp4", other, fps=fps)  # first frame differs
    (bad / "f35_aperture2.4" / "scene1" / "cameras" / "camera_extrinsics.json").write_text("{")  # broken cameras
    config = CurateConfig(**{**vars(CONFIG), "pairs_per_scene": 6})
    manifest = curate(bad, tmp_path / "shards", config)
    reasons = {(r["scene"], r["source"], r["target"]): r["reason"] for r in manifest["rejected"]}
    s1 = {k: v for k, v in reasons.items() if k[0] == "f24_aperture5/scene1"}
    assert len(s1) == 6  # every pair of scene1 has a broken video
    assert s1[("f24_aperture5/scene1", "cam01", "cam03")].startswith("unreadable video")
    assert s1[("f24_aperture5/scene1", "cam03", "cam02")].startswith("wrong frame count: cam02.mp4 has 13 frames")
    s2 = {k: v for k, v in reasons.items() if k[0] == "f24_aperture5/scene2"}
    assert len(s2) == 4 and all(v.startswith("first frames differ") for v in s2.values())
    s3 = {k: v for k, v in reasons.items() if k[0] == "f35_aperture2.4/scene1"}
    assert len(s3) == 6 and all(v.startswith("unreadable cameras") for v in s3.values())
    assert manifest["counts"]["accepted"] == 18 - 16 and manifest["counts"]["rejected"] == 16
    assert len(read_shards(tmp_path / "shards")) == 2
    # the threshold on valid tracks
    strict = CurateConfig(**{**vars(CONFIG), "min_valid_tracks": 129})
    manifest = curate(root, tmp_path / "strict", strict)
    assert manifest["counts"]["accepted"] == 0
    assert all(r["reason"].startswith("too few valid tracks") for r in manifest["rejected"])


def test_resume_skips_finished_shards_and_is_deterministic(data, tmp_path):
    root, out = data
    copy = tmp_path / "shards"
    shutil.copytree(out, copy)
    tars = sorted(copy.glob("shard-*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in tars}
    original = {p.name: p.read_bytes() for p in tars}
    tars[1].unlink()  # an unfinished shard
    manifest = curate(root, copy, CONFIG)
    assert manifest["run"]["shards_written_now"] == 1 and manifest["complete"]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in (tars[0], tars[2]))
    # the rewritten shard (in-process here, 2 workers before) is byte-identical: shards are a function of the index
    assert {p.name: p.read_bytes() for p in sorted(copy.glob("shard-*.tar"))} == original
    # other settings are refused rather than mixed into the same folder
    with pytest.raises(ValueError, match=r"other settings \(differing: \[.*'seed'"):
        curate(root, copy, CurateConfig(**{**vars(CONFIG), "seed": 1}))
    # another seed picks other pairs or other queries
    other = curate(root, tmp_path / "seed1", CurateConfig(**{**vars(CONFIG), "seed": 1}))
    assert other["counts"]["accepted"] == 6
    assert [p.read_bytes() for p in sorted((tmp_path / "seed1").glob("*.tar"))] != list(original.values())


def test_a_killed_run_resumed_with_other_settings_is_refused(data, tmp_path):
    root, out = data
    copy = tmp_path / "shards"
    shutil.copytree(out, copy)
    (copy / "manifest.json").unlink()  # a run killed mid-way: some shards, no manifest yet
    sorted(copy.glob("shard-*.tar"))[-1].unlink()
    with pytest.raises(ValueError, match=r"other settings \(differing: \['num_tracks'\]"):
        curate(root, copy, CurateConfig(**{**vars(CONFIG), "num_tracks": 64}))
    assert curate(root, copy, CONFIG)["run"]["shards_written_now"] == 1  # the same settings resume


def _curate_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "data_curation.curate", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.mark.parametrize("case", ["missing root", "unknown tracker", "unknown tracker option", "malformed option"])
def test_bad_input_exits_2_with_one_error_line_and_no_output(data, tmp_path, case):
    root, _ = data
    argv, expected = {
        "missing root": (["--root", tmp_path / "nope"], "is not a directory"),
        "unknown tracker": (["--root", root, "--tracker", "nosuch"], "unknown tracker 'nosuch'"),
        "unknown tracker option": (["--root", root, "--tracker-option", "colour=red"], "colour"),
        "malformed option": (["--root", root, "--tracker-option", "colour"], "--tracker-option takes KEY=VALUE"),
    }[case]
    out = tmp_path / "out"
    r = _curate_cli(*argv, "--out", out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    if case == "missing root":
        r = _curate_cli(*argv, "--out", out, T2V_TRACEBACK="1")
        assert r.returncode == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr


def test_bad_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        curate(tmp_path / "missing", tmp_path / "out", CONFIG)
    with pytest.raises(FileNotFoundError, match="no scenes with videos"):
        curate(tmp_path, tmp_path / "out", CONFIG)


def test_query_frame_schemes_map_to_the_source_frames_of_the_reversed_sequence():
    from data_curation.curate_pair import sequence_query_frames

    rng = np.random.default_rng(0)
    assert sequence_query_frames(CurateConfig(query_frames="first_last"), 9, rng) == (0, 8)  # earlier curations'
    assert sequence_query_frames(CurateConfig(query_frames="first"), 9, rng) == (8,)  # A's first frame
    frames = sequence_query_frames(CurateConfig(query_frames="random", num_tracks=50), 9, rng)
    assert len(frames) == 50 and set(frames) <= set(range(9)) and len(set(frames)) > 3
    with pytest.raises(ValueError, match="--query-frames must be one of"):
        CurateConfig(query_frames="middle").check()
