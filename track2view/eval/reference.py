"""`evaluate.py reference`: FID reference statistics from real frames, computed once and saved.

Frames: `frames_per_clip` evenly spaced frames of the first `num_frames` of each real video (all of them when
frames_per_clip is 0), fitted to the generation size (height x width) by the pipeline's resize-and-crop, so that
real and generated frames reach the Inception network through the same geometry and the same resize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from track2view.eval.clips import fit_to, read_frames
from track2view.eval.metrics.fid import InceptionFeatures, ReferenceStatistics, save_reference


def sample_times(num_frames: int, frames_per_clip: int) -> np.ndarray:
    if frames_per_clip <= 0 or frames_per_clip >= num_frames:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, frames_per_clip).round().astype(int)


def compute_reference(videos: list[Path], inception_path, out, num_frames: int, frames_per_clip: int,
                      height: int, width: int, device: str | None = None, progress: bool = True) -> Path:
    """Write reference statistics {mu, sigma, num_frames} of the sampled real frames to `out` (npz)."""
    from tqdm import tqdm

    missing = [v for v in videos if not Path(v).is_file()]
    if missing:
        from track2view.eval.errors import EvalInputError

        raise EvalInputError(f"{len(missing)} reference videos not found (first: {missing[0]})")
    extract = InceptionFeatures(inception_path, device)
    stats = ReferenceStatistics(extract.network.num_features)
    for video in tqdm(videos, desc="reference", unit="clip", disable=None if progress else True):
        frames = read_frames(Path(video), num_frames, "reference video")
        stats.add(extract(fit_to(frames[sample_times(num_frames, frames_per_clip)], height, width)))
    return save_reference(out, stats.result())
