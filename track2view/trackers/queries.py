"""Tracker query points: where the tracks start (paper Sec. 3.4), shared by curation and inference.

Rows are (t, u, v): frame index and normalized image coordinates (track2view/tracks.py). Half of the queries
lie on the first and half on the last frame of the (reversed and concatenated, in curation) sequence, on a
jittered grid, so the model sees at inference tracks distributed as in training.
"""

from __future__ import annotations

import numpy as np

DEFAULT_NUM_QUERIES = 1152
MAX_QUERIES = 65536  # 57x the model's 1152: more would only exhaust a tracker's memory
QUERY_SAMPLINGS = ("grid", "random")


def query_points(num_tracks: int, query_frames: tuple[int, int], rng: np.random.Generator, height: int, width: int,
                 sampling: str = "grid") -> np.ndarray:
    """Queries [num_tracks, 3] rows (t, u, v): the first half at query_frames[0], the rest at query_frames[1].

    "grid": a jittered grid with about square cells (aspect from height/width), a random subset of cells
    if the grid has more; "random": uniform. u, v are normalized, strictly inside (0, 1).
    """
    halves = (num_tracks // 2 + num_tracks % 2, num_tracks // 2)
    out = []
    for frame, n in zip(query_frames, halves):
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
                  seed: int = 0) -> np.ndarray:
    """Queries [Q, 3] float32 for one video at inference: half on frame 0, half on the last frame, the jittered
    grid of curation; deterministic for a seed."""
    if num_queries < 2:
        raise ValueError(f"need at least 2 query points (half on the first, half on the last frame), got {num_queries}")
    rng = np.random.default_rng(seed)
    return query_points(num_queries, (0, num_frames - 1), rng, height, width, "grid").astype(np.float32)
