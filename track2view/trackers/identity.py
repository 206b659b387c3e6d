"""Query identity: result track n must be the track of query n (Track2View's source/target pairing rests on it).

A tracker may reorder, drop or duplicate its queries internally (SpatialTrackerV2 does, with its default
`full_point=False`: see track2view/trackers/spatialtracker_v2.py). `check_query_identity` catches that from
the output alone:

* count: exactly one track per query;
* position: track n passes through query n's point at query n's frame, within a tolerance;
* duplicates: no two tracks are the same track (equal in every frame) while their queries differ.

A violation raises `QueryIdentityError` naming what failed; curation rejects the pair with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class TrackerOutputError(RuntimeError):
    """A tracker returned output that cannot be used for this input (the message says why); curation rejects
    the pair with it as the reason, instead of stopping."""


class QueryIdentityError(TrackerOutputError):
    """A tracker's output tracks do not answer its queries one to one; the message says how."""


@dataclass(frozen=True)
class IdentityReport:
    """Summary of a passed check: the largest and the median query-frame distance in pixels."""

    num_tracks: int
    max_error_px: float
    median_error_px: float


def check_query_identity(uv: np.ndarray, queries: np.ndarray, image_size: tuple[int, int],
                         tolerance_px: float = 3.0) -> IdentityReport:
    """Check that 2D tracks answer their queries one to one.

    uv [T, N, 2] normalized track positions; queries [Q, 3] rows (t, u, v) normalized; image_size (H, W) in
    which `tolerance_px` is measured (a pixel of the image the tracker saw). Raises QueryIdentityError.
    """
    uv, queries = np.asarray(uv, dtype=np.float64), np.asarray(queries, dtype=np.float64)
    if uv.ndim != 3 or uv.shape[-1] != 2 or uv.shape[1] != len(queries):
        raise QueryIdentityError(f"the tracker returned {uv.shape[1] if uv.ndim == 3 else uv.shape} tracks for "
                                 f"{len(queries)} queries; expected exactly one track per query, in query order")
    H, W = image_size
    t = queries[:, 0].astype(int)
    at_query = uv[t, np.arange(len(queries))]  # [Q, 2]
    err = np.linalg.norm((at_query - queries[:, 1:]) * [W, H], axis=-1)
    err = np.where(np.isfinite(err), err, np.inf)
    bad = np.flatnonzero(err > tolerance_px)
    if len(bad):
        n = bad[np.argmax(err[bad])]
        raise QueryIdentityError(
            f"{len(bad)} of {len(queries)} tracks do not pass through their own query point at its frame "
            f"(worst: track {n}, {err[n]:.1f} px from query {n} at frame {t[n]}; tolerance {tolerance_px} px): "
            f"the tracker reordered, dropped or replaced queries")
    dup = _duplicate_pair(uv, queries)
    if dup is not None:
        a, b = dup
        raise QueryIdentityError(f"tracks {a} and {b} are the same track in every frame although their queries "
                                 f"differ: the tracker duplicated a query")
    return IdentityReport(len(queries), float(err.max(initial=0.0)), float(np.median(err)) if len(err) else 0.0)


def _duplicate_pair(uv: np.ndarray, queries: np.ndarray, atol: float = 1e-7) -> tuple[int, int] | None:
    """The first (a, b), a < b, whose tracks are equal in every frame while their queries differ, else None."""
    uv = np.nan_to_num(uv, nan=-9.0, posinf=9.0, neginf=-9.0)
    flat = np.round(uv.transpose(1, 0, 2).reshape(len(queries), -1) / atol)  # [Q, T*2], equal within atol
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    for b in np.flatnonzero(first[inverse] != np.arange(len(queries))):
        a = first[inverse[b]]
        if not np.allclose(queries[a], queries[b], atol=1e-9):
            return int(a), int(b)
    return None
