"""Curation of one camera pair (A, B) into a raw WebDataset sample (paper section 3.3; curate.py has the why).

Reverse A's T frames and append B's, query half the points at frame 0 and half at frame T-1, track, split at
frame T and re-reverse the first half; project the tracked world points through each view's cameras. A pair
that cannot be curated raises `Rejected` with the reason the manifest lists: unreadable or mismatched input,
a tracker output that breaks query identity or is unusable, too few valid tracks.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from data_curation.curate_plan import CurateConfig, Pair, stable_seed
from track2view import cameras as cam
from track2view.data import schema
from track2view.io import VideoError, read_video
from track2view.trackers import QueryIdentityError, TrackerOutputError
from track2view.trackers.queries import query_points, source_query_frames
from track2view.tracks import PairedTracks

CONFIDENCE = "confidence"  # the tracker's confidence [2, T, N] float16, an optional array of tracks.npz


class Rejected(Exception):
    """A camera pair that cannot be curated; the message is the reason written to the manifest."""


def read_captions(root: str | os.PathLike) -> dict[str, str]:
    """{file_name relative to root: caption} from `<root>/metadata.csv` (or its parent's), else {}."""
    root = Path(root)
    for path in (root / "metadata.csv", root.parent / "metadata.csv"):
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"file_name", "text"} <= set(reader.fieldnames):
                    raise ValueError(f"{path} must have the columns file_name,text; got {reader.fieldnames}")
                return {row["file_name"]: row["text"] or "" for row in reader}
    return {}


def _load_video(path: Path, num_frames: int) -> np.ndarray:
    try:
        frames, _ = read_video(path)
    except VideoError as e:
        raise Rejected(f"unreadable video: {e}") from None
    if len(frames) != num_frames:
        raise Rejected(f"wrong frame count: {path.name} has {len(frames)} frames, expected {num_frames}")
    return frames


def split_concatenated(result, num_frames: int):
    """Tracking result of the 2T sequence [reversed A, B] -> (A's result in A's time order, B's result)."""
    T = num_frames
    if result.num_frames != 2 * T:
        raise ValueError(f"expected a {2 * T}-frame tracking result, got {result.num_frames}")
    return result.frames(np.arange(T - 1, -1, -1)), result.frames(np.arange(T, 2 * T))


def read_pair(pair: Pair, config: CurateConfig) -> tuple[dict, np.ndarray, np.ndarray, float]:
    """(cameras by name, A's frames, B's frames [T, H, W, 3] uint8, mean |A[0] - B[0]|); Rejected if unusable."""
    try:
        cams_by_name = cam.read_multicam_cameras(Path(pair.scene_dir) / "cameras" / "camera_extrinsics.json")
    except (OSError, ValueError) as e:
        raise Rejected(f"unreadable cameras: {e}") from None
    for c in (pair.source, pair.target):
        if c not in cams_by_name:
            raise Rejected(f"camera {c} is missing from camera_extrinsics.json")
    T = config.num_frames or len(cams_by_name[pair.source])
    a, b = _load_video(pair.video(pair.source), T), _load_video(pair.video(pair.target), T)
    if a.shape != b.shape:
        raise Rejected(f"video sizes differ: {a.shape[1:3]} vs {b.shape[1:3]}")
    for c in (pair.source, pair.target):
        if len(cams_by_name[c]) < T:
            raise Rejected(f"camera_extrinsics.json has {len(cams_by_name[c])} frames for {c}, need {T}")
    diff = float(np.abs(a[0].astype(np.float32) - b[0].astype(np.float32)).mean())
    if diff > config.first_frame_tolerance:
        raise Rejected(f"first frames differ: mean absolute difference {diff:.2f} > {config.first_frame_tolerance} "
                       f"(the cameras must start at the same pose)")
    return cams_by_name, a, b, diff


def sequence_query_frames(config: CurateConfig, num_frames: int, rng: np.random.Generator) -> tuple[int, ...]:
    """The scheme's source frames in the [A reversed, B] sequence (A's frame s is index T-1-s there), in sequence
    order (first_last: (0, T-1), as earlier curations)."""
    frames = source_query_frames(config.query_frames, num_frames, config.num_tracks, rng)
    return tuple(num_frames - 1 - f for f in reversed(frames))


def pair_sequence(pair: Pair, a: np.ndarray, b: np.ndarray, config: CurateConfig):
    """The seamless 2T-frame sequence [A reversed, B] [2T, H, W, 3], its queries [Q, 3] (on A's frames of the
    `query_frames` scheme, by default half at frame 0 and half at T-1 of the sequence; seeded per pair) and each
    frame's (video path, frame index)."""
    T, H, W = a.shape[:3]
    rng = np.random.default_rng([config.seed, stable_seed(pair.key)])
    queries = query_points(config.num_tracks, sequence_query_frames(config, T, rng), rng, H, W, config.query_sampling)
    src_path, tgt_path = pair.video(pair.source), pair.video(pair.target)
    sources = [(str(src_path), T - 1 - i) for i in range(T)] + [(str(tgt_path), i) for i in range(T)]
    return np.concatenate([a[::-1], b]), queries, sources


def track_pair(pair: Pair, a: np.ndarray, b: np.ndarray, tracker, config: CurateConfig):
    """Track the pair's 2T-frame sequence -> (A's result, B's result), T frames each."""
    try:
        result = tracker.track(*pair_sequence(pair, a, b, config))
    except QueryIdentityError as e:
        raise Rejected(f"query identity: {e}") from None
    except TrackerOutputError as e:
        raise Rejected(f"tracker output: {e}") from None
    return split_concatenated(result, len(a))


def paired_tracks(src, tgt, min_valid: int) -> tuple[dict, dict]:
    """(tracks.npz arrays, counts) of the two views' results. The target view's validity is geometric only (no
    tgt.visible), as at inference, where there is no target video to track. Rejected below `min_valid` tracks
    valid in both views."""
    (uv_s, d_s), (uv_t, d_t) = src.project(), tgt.project()
    tracks = PairedTracks.from_projections(np.stack([uv_s, uv_t]), np.stack([d_s, d_t]),
                                           np.stack([src.visible, np.ones_like(tgt.visible)])).validate()
    valid = tracks.valid.numpy()
    both = int((valid[0].any(0) & valid[1].any(0)).sum())
    if both < min_valid:
        raise Rejected(f"too few valid tracks: {both} seen in both views < {min_valid}")
    arrays = tracks.to_numpy()
    if src.confidence is not None and tgt.confidence is not None:
        arrays[CONFIDENCE] = np.stack([src.confidence, tgt.confidence]).astype(np.float16)
    counts = {"valid_both": both, "valid_source": int(valid[0].any(0).sum()),
              "valid_target": int(valid[1].any(0).sum())}
    return arrays, counts


def curate_pair(pair: Pair, tracker, config: CurateConfig, captions: dict[str, str], root: Path) -> dict:
    """Curate one pair into a raw webdataset sample {"__key__", member: bytes}; raise Rejected with a reason."""
    cams_by_name, a, b, diff = read_pair(pair, config)
    T, H, W = a.shape[:3]
    src, tgt = track_pair(pair, a, b, tracker, config)
    arrays, counts = paired_tracks(src, tgt, config.min_valid_tracks)

    # cameras of the dataset (metres, OpenCV), relative to the source camera at frame 0
    c2w = np.stack([cams_by_name[pair.source][:T], cams_by_name[pair.target][:T]])
    c2w = cam.relative_to(c2w, c2w[0, 0])
    K = np.broadcast_to(cam.intrinsics_from_lens(pair.lens, H, W), (2, T, 3, 3))
    src_path, tgt_path = pair.video(pair.source), pair.video(pair.target)
    caption = captions.get(src_path.relative_to(root).as_posix(), "")
    meta = {"scene": pair.scene, "lens": pair.lens, "cameras": [pair.source, pair.target],
            "fps": _fps(src_path), "num_frames": T, "height": H, "width": W, "tracker": config.tracker,
            "metric": src.metric, "query_frames": config.query_frames, "seed": config.seed,
            "counts": {"tracks": int(config.num_tracks), **counts}, "confidence": CONFIDENCE in arrays,
            "first_frame_difference": round(diff, 4)}
    return {
        "__key__": pair.key,
        schema.SOURCE_VIDEO: src_path.read_bytes(),
        schema.TARGET_VIDEO: tgt_path.read_bytes(),
        schema.TRACKS: schema.encode_npz(arrays),
        schema.CAMERAS: schema.encode_npz({"c2w": c2w.astype(np.float32), "intrinsics": K.astype(np.float32)}),
        schema.TRACKING: schema.encode_npz(src.relative_to(src.c2w[0]).to_arrays()),
        schema.META: schema.encode_json(meta),
        schema.CAPTION: caption.encode("utf-8"),
    }


def _fps(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate or c.streams.video[0].guessed_rate
    return float(rate) if rate else 0.0
