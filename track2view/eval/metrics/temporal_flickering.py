"""VBench temporal flickering: (255 - mean absolute difference of consecutive frames) / 255, in [0, 1].

Per pair (t-1, t): the mean over pixels and channels of |frame_t - frame_{t-1}| (uint8 values); the score is
(255 - mean over pairs) / 255, so a static video scores 1. No network.
"""

from __future__ import annotations

import numpy as np

from track2view.eval.metric import Clip, FrameMetric, pair_values


class TemporalFlickering(FrameMetric):
    name, names = "temporal_flickering", ("temporal_flickering",)

    def per_frame(self, clip: Clip) -> dict:
        frames = clip.generated.astype(np.int16)
        mae = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))
        return {"temporal_flickering": pair_values((255.0 - mae) / 255.0)}
