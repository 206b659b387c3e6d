"""Mat.Pix.(K): confidently matched keypoints between the source and the generated frame at the same time.

Convention: per frame pair (source_t, generated_t) (every `stride`-th frame), the number of matches of the
matcher (matchers.py) that survive MAGSAC++ fundamental-matrix verification; the score is the mean over the
pairs, in thousands. Absolute counts depend on the matcher, so the report names it (`info()`). The paper used
GIM-LightGlue (SuperPoint + LightGlue with GIM's weights), which kornia does not build; counts from SIFT or
DISK + LightGlue are comparable between methods scored here, not with the paper's numbers.
"""

from __future__ import annotations

import numpy as np

from track2view.eval.metric import Clip, FrameMetric
from track2view.eval.metrics.matchers import magsac_inliers


class MatchedPixels(FrameMetric):
    name, names = "matched_pixels", ("mat_pix_k",)
    requires = ("source",)

    def __init__(self, matcher, stride: int = 1):
        self.matcher, self.stride = matcher, max(1, int(stride))

    def per_frame(self, clip: Clip) -> dict:
        frames = np.arange(0, clip.num_frames, self.stride)
        counts = [magsac_inliers(*self.matcher(clip.source[t], clip.generated[t])) / 1000.0 for t in frames]
        return {"mat_pix_k": (np.asarray(counts, dtype=np.float64), frames + 1)}

    def info(self) -> dict:
        return {**super().info(), "matcher": self.matcher.name, "frame_stride": self.stride}
