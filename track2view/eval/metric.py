"""The metric interface: one generated clip (with what it was generated from) -> named scores.

    metric = SomeMetric(weights="path/to/local/weights")     # networks from local paths only, never a hub
    scores = metric(clip)                                     # {"name": float}, e.g. {"clip_t": 31.2}
    by_length = metric.score_lengths(clip, (25, 49, 81))      # {25: {...}, 49: {...}, 81: {...}}

A metric states its convention in its docstring (resolution, frames used, units) and in `info()` (written into
the report, e.g. which matcher counted Mat.Pix.). `requires` names the Clip fields it needs besides `generated`.
Scores at several frame counts come from the first n frames (the paper's truncation); metrics with per-frame
features override `score_lengths` to compute them once. A score that cannot be computed is NaN, and the metric
says why in a `<name>_failed` score of 1 (counted in the table, never silently dropped).

Set-level metrics (FID) implement `SetMetric`: per-clip `features` (saved next to the clip's scores, so scoring
resumes) and `compute` over the features of every clip of a group.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np


@dataclass
class Clip:
    """One generated clip and its references, all at the generated video's size.

    generated, source, target: frames [T, H, W, 3] uint8 (target: the true target video, synthetic benchmark only).
    target_c2w [T, 4, 4]: the cameras the clip was generated for, relative to the source camera at frame 0
    (OpenCV, metres). intrinsics [3, 3]: normalized K of the generated frames.
    """

    key: str
    generated: np.ndarray
    source: np.ndarray | None = None
    target: np.ndarray | None = None
    prompt: str = ""  # the text CLIP-T compares with
    target_c2w: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    split: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.generated)

    def truncated(self, n: int) -> "Clip":
        """The first n frames of every video and camera track."""
        cut = lambda a: None if a is None else a[:n]  # noqa: E731
        return replace(self, generated=self.generated[:n], source=cut(self.source), target=cut(self.target),
                       target_c2w=cut(self.target_c2w))


class Metric:
    name: ClassVar[str] = ""
    names: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()  # Clip fields besides `generated`

    def __call__(self, clip: Clip) -> dict[str, float]:
        raise NotImplementedError

    def score_lengths(self, clip: Clip, lengths) -> dict[int, dict[str, float]]:
        """Scores of the first n frames for every n in `lengths` (default: one call per truncation)."""
        return {n: self(clip.truncated(n)) for n in lengths}

    def info(self) -> dict:
        """The metric's convention and settings, for the report (default: its module's first docstring line)."""
        import sys

        doc = (sys.modules[type(self).__module__].__doc__ or "").strip().split("\n\n")[0]
        return {"names": list(self.names), "convention": " ".join(doc.split())}

    def applies_to(self, clip: Clip) -> bool:
        return all(getattr(clip, f) is not None for f in self.requires)


class SetMetric(Metric):
    """A metric over a set of clips: per-clip `features` [T, D] (per frame), `compute` over a list of them."""

    def __call__(self, clip: Clip) -> dict[str, float]:
        return {}

    def score_lengths(self, clip: Clip, lengths) -> dict[int, dict[str, float]]:
        return {n: {} for n in lengths}

    def features(self, clip: Clip) -> np.ndarray:
        raise NotImplementedError

    def compute(self, features: list[np.ndarray]) -> dict[str, float]:
        raise NotImplementedError


def failed(names, reason_name: str) -> dict[str, float]:
    """Scores of a computation that failed: NaN for each name and 1 for `reason_name`."""
    return {**{n: float("nan") for n in names}, reason_name: 1.0}


class FrameMetric(Metric):
    """A metric that is a mean of per-frame (or per-frame-pair) values, so every truncation comes from one pass.

    `per_frame(clip)` returns {name: (values [K], needed [K])}: value k uses the first needed[k] frames. The score
    of the first n frames is the mean of the values with needed <= n (`frame_values`: value t needs t + 1
    frames; `pair_values`: the value of pair (t-1, t), stored at t-1, needs t + 1 frames).
    """

    def per_frame(self, clip: Clip) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def __call__(self, clip: Clip) -> dict[str, float]:
        return self.score_lengths(clip, (clip.num_frames,))[clip.num_frames]

    def score_lengths(self, clip: Clip, lengths) -> dict[int, dict[str, float]]:
        values = self.per_frame(clip.truncated(max(lengths)))
        return {n: {name: _mean(v[needed <= n]) for name, (v, needed) in values.items()} for n in lengths}


def frame_values(values) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    return values, np.arange(1, len(values) + 1)


def pair_values(values) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    return values, np.arange(2, len(values) + 2)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
