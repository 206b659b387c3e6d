"""The 3D point tracker interface and its result (docs/architecture.md, "Tracking result").

    tracker = get_tracker("oracle")                       # or "spatialtracker_v2", repo_dir=..., ...
    result = tracker.track(video, queries, frame_sources)  # video [T, H, W, 3] uint8, queries [Q, 3] (t, u, v)
    uv, depth = result.project()                            # the tracks in the tracked video's own cameras
    result.save("tracks.npz"); TrackingResult.load("tracks.npz")

Query rows are (t, u, v): frame index and NORMALIZED image coordinates (see track2view/tracks.py).
Result point n is query n.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from track2view.cameras import invert_rigid, project, transform_points


ARRAY_KEYS = ("c2w", "intrinsics", "points_world", "visible", "metric", "image_size")
OPTIONAL_KEYS = ("confidence",)  # absent in files written before it existed, and for trackers without one


@dataclass
class TrackingResult:
    """A tracker's output for one video of T frames and N tracked points.

    c2w [T, 4, 4] float32 camera-to-world (OpenCV axes); intrinsics [T, 3, 3] float32 normalized;
    points_world [T, N, 3] float32; visible [T, N] bool; metric: depth in metres (else relative scale);
    image_size (H, W) of the tracked video; confidence [T, N] float32 in [0, 1] or None: the tracker's own
    per-track, per-frame confidence (SpatialTrackerV2's `conf_pred`; the oracle's is 1.0 everywhere).
    """

    c2w: np.ndarray
    intrinsics: np.ndarray
    points_world: np.ndarray
    visible: np.ndarray
    metric: bool
    image_size: tuple[int, int]
    confidence: np.ndarray | None = None

    def __post_init__(self):
        self.c2w = np.asarray(self.c2w, dtype=np.float32)
        self.intrinsics = np.asarray(self.intrinsics, dtype=np.float32)
        self.points_world = np.asarray(self.points_world, dtype=np.float32)
        self.visible = np.asarray(self.visible).astype(bool)
        self.metric = bool(np.asarray(self.metric))
        self.image_size = tuple(int(v) for v in np.asarray(self.image_size).reshape(-1))
        if self.confidence is not None:
            self.confidence = np.asarray(self.confidence, dtype=np.float32)
        self.validate()

    # ---- shape --------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self.c2w.shape[0]

    @property
    def num_points(self) -> int:
        return self.points_world.shape[1]

    def validate(self) -> "TrackingResult":
        """Raise ValueError naming the problem if shapes disagree or values are not finite."""
        T = self.c2w.shape[0] if self.c2w.ndim == 3 else None
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"TrackingResult.c2w must be [T, 4, 4], got {self.c2w.shape}")
        if self.intrinsics.shape != (T, 3, 3):
            raise ValueError(f"TrackingResult.intrinsics must be [T={T}, 3, 3] (normalized), "
                             f"got {self.intrinsics.shape}")
        if self.points_world.ndim != 3 or self.points_world.shape[0] != T or self.points_world.shape[2] != 3:
            raise ValueError(f"TrackingResult.points_world must be [T={T}, N, 3], got {self.points_world.shape}")
        if self.visible.shape != self.points_world.shape[:2]:
            raise ValueError(f"TrackingResult.visible must be [T, N] = {self.points_world.shape[:2]}, "
                             f"got {self.visible.shape}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"TrackingResult.image_size must be (H, W) > 0, got {self.image_size}")
        for name in ("c2w", "intrinsics", "points_world"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"TrackingResult.{name} holds NaN or inf values; a tracker must return finite "
                                 f"values (mark untrackable points invisible instead)")
        c = self.confidence
        if c is not None and (c.shape != self.visible.shape or not np.isfinite(c).all() or c.min() < 0 or c.max() > 1):
            raise ValueError(f"TrackingResult.confidence must be [T, N] = {self.visible.shape} with values in [0, 1], "
                             f"got {c.shape}" + (f" in {c.min():.3g}..{c.max():.3g}" if c.size else ""))
        if np.abs(self.c2w[:, 3] - [0, 0, 0, 1]).max() > 1e-4:
            raise ValueError("TrackingResult.c2w rows 3 must be (0, 0, 0, 1): rigid camera-to-world transforms")
        return self

    # ---- selection and transforms ---------------------------------------------------------------
    def frames(self, index) -> "TrackingResult":
        """Select frames along T (any numpy index: a range, a reversed array, a slice)."""
        idx = np.arange(self.num_frames)[index]
        return TrackingResult(self.c2w[idx], self.intrinsics[idx], self.points_world[idx], self.visible[idx],
                              self.metric, self.image_size, self._confidence(idx, slice(None)))

    def points(self, index) -> "TrackingResult":
        """Select points along N."""
        idx = np.arange(self.num_points)[index]
        return TrackingResult(self.c2w, self.intrinsics, self.points_world[:, idx], self.visible[:, idx],
                              self.metric, self.image_size, self._confidence(slice(None), idx))

    def _confidence(self, frames, points) -> np.ndarray | None:
        return None if self.confidence is None else self.confidence[frames][:, points]

    def relative_to(self, reference_c2w: np.ndarray) -> "TrackingResult":
        """The same result in the frame of `reference_c2w` [4, 4] (e.g. its own camera at frame 0)."""
        w2r = invert_rigid(np.asarray(reference_c2w, dtype=np.float64))
        points = transform_points(self.points_world.astype(np.float64), w2r)
        return TrackingResult(w2r @ self.c2w, self.intrinsics, points, self.visible, self.metric, self.image_size,
                              self.confidence)

    def project(self, c2w: np.ndarray | None = None, intrinsics: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Project the points through per-frame cameras (default: the tracked video's own).

        c2w [T, 4, 4] in this result's world frame, intrinsics [T, 3, 3] or [3, 3] normalized ->
        (uv [T, N, 2] normalized, depth [T, N]).
        """
        c2w = self.c2w if c2w is None else np.asarray(c2w)
        K = self.intrinsics if intrinsics is None else np.broadcast_to(np.asarray(intrinsics), (self.num_frames, 3, 3))
        if c2w.shape != (self.num_frames, 4, 4):
            raise ValueError(f"need one camera per frame: c2w {c2w.shape}, result has {self.num_frames} frames")
        uv, depth = project(self.points_world.astype(np.float64), c2w.astype(np.float64), K.astype(np.float64))
        return uv.astype(np.float32), depth.astype(np.float32)

    # ---- files ------------------------------------------------------------------------------------
    def to_arrays(self) -> dict:
        """The arrays of an npz (`confidence` only when the tracker gave one)."""
        arrays = {"c2w": self.c2w, "intrinsics": self.intrinsics, "points_world": self.points_world,
                  "visible": self.visible, "metric": np.asarray(self.metric),
                  "image_size": np.asarray(self.image_size, dtype=np.int64)}
        if self.confidence is not None:
            arrays["confidence"] = self.confidence
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict, source: str = "tracking result") -> "TrackingResult":
        missing = [k for k in ARRAY_KEYS if k not in arrays]
        if missing:
            raise ValueError(f"{source} is missing arrays {missing}; a TrackingResult npz holds c2w, intrinsics, "
                             f"points_world, visible, metric, image_size and optionally confidence (see "
                             f"docs/architecture.md)")
        try:
            return cls(**{k: arrays[k] for k in ARRAY_KEYS + OPTIONAL_KEYS if k in arrays})
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write an npz (atomically)."""
        from track2view.io import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **self.to_arrays())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrackingResult":
        """Read an npz written by `save` (never unpickles)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tracking result not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except ValueError as e:
            raise ValueError(f"{path} is not a plain-array npz ({e}); write it with TrackingResult.save") from None
        return cls.from_arrays(arrays, source=str(path))


FrameSources = list[tuple[str, int]]


class PointTracker(ABC):
    """A 3D point tracker: video + queries -> camera poses, intrinsics and world-space point tracks."""

    name: str = "tracker"

    def check_setup(self) -> None:
        """Raise (naming the fix) when the backend cannot run here (missing clone, weights, device); cheap: called
        before any work, so that a long job fails at once rather than in its first worker."""

    @abstractmethod
    def track(self, video: np.ndarray, queries: np.ndarray, frame_sources: FrameSources | None = None
              ) -> TrackingResult:
        """Track points through a video.

        video [T, H, W, 3] uint8; queries [Q, 3] float rows (t, u, v) with t a frame index and (u, v)
        normalized; frame_sources: for each frame, the (video path, frame index) it was read from, or None
        (trackers that need ground truth, like the oracle, require it). Returns a TrackingResult with T
        frames and Q points, point n answering query n (see track2view/trackers/identity.py).
        """

    @staticmethod
    def check_inputs(video: np.ndarray, queries: np.ndarray, frame_sources: FrameSources | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Validate the `track` arguments; returns (video, queries float64)."""
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise ValueError(f"video must be [T, H, W, 3] uint8, got {video.shape} {video.dtype}")
        queries = np.asarray(queries, dtype=np.float64)
        if queries.ndim != 2 or queries.shape[1] != 3 or len(queries) == 0:
            raise ValueError(f"queries must be [Q >= 1, 3] rows (t, u, v), got {queries.shape}")
        t = queries[:, 0]
        if (t != np.round(t)).any() or t.min() < 0 or t.max() >= len(video):
            raise ValueError(f"query frames must be integers in [0, {len(video) - 1}], got {t.min()}..{t.max()}")
        uv = queries[:, 1:]
        if not np.isfinite(uv).all() or uv.min() < 0 or uv.max() > 1:
            raise ValueError("query (u, v) must be NORMALIZED coordinates in [0, 1] (pixel x / W, y / H); "
                             f"got range {uv.min():.3g}..{uv.max():.3g}")
        if frame_sources is not None and len(frame_sources) != len(video):
            raise ValueError(f"frame_sources must name the source of every frame: {len(frame_sources)} entries "
                             f"for {len(video)} frames")
        return video, queries


_REGISTRY = {
    "oracle": ("track2view.trackers.oracle", "OracleTracker"),
    "spatialtracker_v2": ("track2view.trackers.spatialtracker_v2", "SpatialTrackerV2"),
}


def available_trackers() -> list[str]:
    return sorted(_REGISTRY)


def parse_tracker_options(items: list[str], flag: str = "--tracker-option") -> dict:
    """Command-line tracker options ["repo_dir=/x", "track-num=756"] -> {"repo_dir": "/x", "track_num": 756}.

    Values are parsed as JSON when they can be (numbers, booleans, null, lists), else kept as strings; '-' in a
    key becomes '_'. Raises ValueError naming the bad option and `flag`.
    """
    import json

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE (e.g. repo_dir=/path/SpaTrackerV2), got {item!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def get_tracker(name: str, **kwargs) -> PointTracker:
    """Build a tracker backend by name ('oracle', 'spatialtracker_v2') with its options."""
    import importlib

    if name not in _REGISTRY:
        raise ValueError(f"unknown tracker {name!r}; available: {', '.join(available_trackers())}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)
