"""Tracker query points: where the tracks start (paper Sec. 3.4), shared by curation and inference.

Rows are (t, u, v): frame index and normalized image coordinates (track2view/tracks.py). By default half of the
queries lie on the first and half on the last frame of the source video (`query_frames="first_last"`, paper
Sec. 3.4), on a jittered grid, so the model sees at inference tracks distributed as in training; "first" (all on
the first frame) and "random" (each query on a uniformly drawn source frame) are the paper's ablation. In curation
the source video is reversed at the front of the concatenated sequence: its first frame is index T-1 there.
"""

from __future__ import annotations

import numpy as np

DEFAULT_NUM_QUERIES = 1152
MAX_QUERIES = 65536  # 57x the model's 1152: more would only exhaust a tracker's memory
QUERY_SAMPLINGS = ("grid", "random")
QUERY_FRAMES = ("first_last", "first", "random")


def source_query_frames(scheme: str, num_frames: int, num_queries: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Source-video frame indices the queries split evenly over: (0, T-1), (0,) or one uniform draw per query."""
    if scheme == "first_last":
        return (0, num_frames - 1)
    if scheme == "first":
        return (0,)
    if scheme == "random":
        return tuple(int(f) for f in np.sort(rng.integers(0, num_frames, size=num_queries)))
    raise ValueError(f"unknown query frames {scheme!r}; use one of {QUERY_FRAMES}")


def query_points(num_tracks: int, query_frames: tuple[int, ...], rng: np.random.Generator, height: int, width: int,
                 sampling: str = "grid") -> np.ndarray:
    """Queries [num_tracks, 3] rows (t, u, v) split evenly over `query_frames` (the earlier entries take the
    remainder; a frame listed k times gets k shares): two frames give the first half at query_frames[0].

    "grid": a jittered grid with about square cells (aspect from height/width), a random subset of cells
    if the grid has more; "random": uniform. u, v are normalized, strictly inside (0, 1).
    """
    k = len(query_frames)
    counts: dict[int, int] = {}  # frame -> queries on it, in the listed order
    for i, frame in enumerate(query_frames):
        counts[int(frame)] = counts.get(int(frame), 0) + num_tracks // k + (i < num_tracks % k)
    out = []
    for frame, n in counts.items():
        if n == 0:
            continue
        if sampling == "random":
            uv = rng.uniform(0.0, 1.0, size=(n, 2))
        elif sampling == "grid":
            gx = max(1, int(np.ceil(np.sqrt(n * width / height))))
            gy = int(np.ceil(n / gx))
            cells = rng.permutation(gx * gy)[:n]
            uv = np.stack([(cells % gx + rng.uniform(0, 1, n)) / gx, (cells // gx + rng.uniform(0, 1, n)) / gy], -1)
        else:
            raise ValueError(f"unknown query sampling {sampling!r}; use one of {QUERY_SAMPLINGS}")
        uv = np.clip(uv, 1e-4, 1 - 1e-4)
        out.append(np.concatenate([np.full((n, 1), float(frame)), uv], 1))
    return np.concatenate(out)


def video_queries(num_frames: int, num_queries: int = DEFAULT_NUM_QUERIES, height: int = 1, width: int = 1,
                  seed: int = 0, query_frames: str = "first_last") -> np.ndarray:
    """Queries [Q, 3] float32 for one video at inference, on the source frames of the `query_frames` scheme the
    model was trained with (default: half on frame 0, half on the last frame), the jittered grid of curation;
    deterministic for a seed."""
    if num_queries < 2:
        raise ValueError(f"need at least 2 query points (half on the first, half on the last frame), got {num_queries}")
    rng = np.random.default_rng(seed)
    frames = source_query_frames(query_frames, num_frames, num_queries, rng)
    return query_points(num_queries, frames, rng, height, width, "grid").astype(np.float32)
