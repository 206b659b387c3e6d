"""SpatialTrackerV2 end to end on a GPU, against the real upstream code with random weights (no weights can be
downloaded on the GPU machine), and curation throughput at the real model shapes.

    python -m data_curation.stv2_check --repo-dir .upstream/SpaTrackerV2 --root SCENES/train --out OUT

1. check: the first planned pair of a two-camera synthetic scene, its 2T-frame sequence [A reversed, B] with
   the curation queries, through the adapter (identity check included) and through the oracle; the result's
   conventions are compared in kind with the oracle's (shapes, camera-to-world rigid transforms starting at
   the identity, normalized intrinsics, positive depth at the query frames, confidence in [0, 1]);
2. throughput: `curate` over every planned pair of --root with the same (already loaded) tracker.

Writes OUT/stv2_check.json (package versions, the check, the curation manifest and throughput). Where PyAV is
missing (the GPU image has no `av`, and its wheel does not fit beside the tracker's in what travels there),
videos are decoded with OpenCV instead; decoding is a small share of a pair's time.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np

PACKAGES = ("torch", "torchvision", "numpy", "pycolmap", "pyceres", "kornia", "kornia_rs", "moviepy", "decorator",
            "decord", "utils3d", "easydict", "flow_vis", "opencv-python-headless", "einops", "huggingface_hub",
            "safetensors", "scipy", "scikit-learn", "pandas", "matplotlib", "jaxtyping", "imageio", "pillow", "tqdm",
            "webdataset", "av")


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def use_opencv_if_no_pyav() -> bool:
    """Decode videos with OpenCV where PyAV is not installed; returns whether it did."""
    try:
        import av  # noqa: F401
        return False
    except ImportError:
        pass
    import cv2

    from data_curation import curate_pair

    def read_video(path, max_frames=None):
        cap, frames = cv2.VideoCapture(str(path)), []
        while max_frames is None or len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame[..., ::-1])
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        cap.release()
        return np.stack(frames), fps

    curate_pair.read_video = read_video
    curate_pair._fps = lambda path: float(read_video(path, 1)[1])
    return True


def kind(result) -> dict:
    """The conventions of a TrackingResult, as comparable facts."""
    R = result.c2w[:, :3, :3].astype(np.float64)
    K = result.intrinsics
    _, depth = result.project()
    return {"frames": result.num_frames, "points": result.num_points, "image_size": list(result.image_size),
            "c2w_rigid": bool(np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-3)
                              and np.allclose(np.linalg.det(R), 1, atol=1e-3)),
            "c2w_orthonormality_error": float(np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max()),
            "c2w_first_is_identity": bool(np.allclose(result.c2w[0], np.eye(4), atol=1e-4)),
            "intrinsics_normalized": bool(np.allclose(K[:, 2], [0, 0, 1]) and (K[:, 0, 0] > 0).all()
                                          and (K[:, 1, 1] > 0).all()),
            "principal_point_range": [float(K[:, :2, 2].min()), float(K[:, :2, 2].max())],
            "focal_range": [float(K[:, [0, 1], [0, 1]].min()), float(K[:, [0, 1], [0, 1]].max())],
            "positive_depth_fraction": float((depth > 0).mean()), "visible_fraction": float(result.visible.mean()),
            "confidence_range": None if result.confidence is None else
            [float(result.confidence.min()), float(result.confidence.max())]}


def check_pair(root: Path, tracker, num_tracks: int) -> dict:
    """The adapter and the oracle on the first planned pair's 2T-frame sequence -> facts to compare."""
    from data_curation.curate_pair import pair_sequence, read_pair
    from data_curation.curate_plan import CurateConfig, plan_pairs
    from track2view.trackers import get_tracker

    config = CurateConfig(num_tracks=num_tracks)
    pair = plan_pairs(root, 2, 0)[0]
    _, a, b, _ = read_pair(pair, config)
    video, queries, sources = pair_sequence(pair, a, b, config)
    start = time.perf_counter()
    result = tracker.track(video, queries, sources)  # raises QueryIdentityError if the identity check fails
    seconds = time.perf_counter() - start
    oracle = get_tracker("oracle").track(video, queries, sources)
    identity = tracker.last_identity
    return {"pair": pair.key, "sequence_frames": len(video), "video_size": list(a.shape[1:3]),
            "queries": num_tracks, "seconds": round(seconds, 2),
            "front_seconds": round(tracker.last_seconds["front"], 2),
            "tracker_seconds": round(tracker.last_seconds["tracker"], 2),
            "upstream_c2w_orthonormality_error": tracker.last_rigidity,
            "identity": {"max_error_px": identity.max_error_px, "median_error_px": identity.median_error_px,
                         "tracks": identity.num_tracks, "tolerance_px": tracker.identity_tolerance_px},
            "spatialtracker_v2": kind(result), "oracle": kind(oracle.relative_to(oracle.c2w[0]))}


def pairs_that_fit(report: dict, deadline: float, started: float, scenes: int) -> int:
    """Pairs per scene (0, 1 or 2) whose curation fits before `deadline` seconds, at the checked pair's pace."""
    per_pair = report.get("check", {}).get("seconds")
    if not per_pair:
        return 0
    left = deadline - (time.perf_counter() - started)
    return int(max(0, min(2, left // (1.2 * per_pair * scenes))))


def run(args) -> dict:
    import torch

    from data_curation.curate import CurateConfig, curate
    from data_curation.curate_shards import make_tracker

    report = {"versions": versions(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "opencv_decoding": use_opencv_if_no_pyav()}
    options = {"repo_dir": str(Path(args.repo_dir).resolve()), "random_weights": True, "device": args.device,
               "track_num": args.track_num}
    config = CurateConfig(tracker="spatialtracker_v2", tracker_options=options, pairs_per_scene=2,
                          num_tracks=args.num_tracks, samples_per_shard=args.samples_per_shard, min_valid_tracks=1)
    started = time.perf_counter()

    def curate_what_fits():
        from data_curation.curate_plan import find_scenes

        config.pairs_per_scene = pairs_that_fit(report, args.deadline, started, len(find_scenes(args.root)))
        if not config.pairs_per_scene:
            raise TimeoutError(f"no pair fits in the --deadline of {args.deadline} s")
        return curate(args.root, Path(args.out) / "shards", config, verbose=True)

    stages = (("check", lambda: check_pair(Path(args.root), make_tracker(config).load(), args.num_tracks)),
              ("curate", curate_what_fits))[:1 if args.check_only else 2]
    for name, stage in stages:
        start = time.perf_counter()
        try:
            report[name] = stage()
        except Exception as e:  # keep going: one GPU call should return everything it can
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        report[name + "_wall_seconds"] = round(time.perf_counter() - start, 1)
        tracker = make_tracker(config)
        report["load_seconds"], report["limits"] = tracker.load_seconds, tracker.limits if tracker._models else None
        if torch.cuda.is_available():
            report["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(json.dumps({name: report[name]}, default=str)[:3000], flush=True)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_curation.stv2_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-dir", required=True, help="a SpaTrackerV2 clone (fork xeTaiz/SpaTrackerV2)")
    p.add_argument("--root", required=True, help="synthetic scenes (python -m track2view.synthetic), train/ folder")
    p.add_argument("--out", required=True, help="output folder: stv2_check.json and shards/")
    p.add_argument("--num-tracks", type=int, default=1152)
    p.add_argument("--track-num", type=int, default=756, help="upstream's support points (vo_points)")
    p.add_argument("--samples-per-shard", type=int, default=2)
    p.add_argument("--device", default="cuda", help="cuda (upstream); cpu only for the stand-in clone of the tests")
    p.add_argument("--check-only", action="store_true", help="skip the throughput run")
    p.add_argument("--deadline", type=float, default=300.0,
                   help="seconds from the start within which the throughput run must end (1 or 2 pairs per scene)")
    args = p.parse_args(argv)
    report = run(args)
    from track2view.io import write_json

    write_json(Path(args.out) / "stv2_check.json", report, indent=1)
    return 0 if all("error" not in report.get(k, {}) for k in ("check", "curate")[:1 if args.check_only else 2]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
