"""VBench's feature consistency (subject consistency with DINO, background consistency with CLIP).

For unit features f_0..f_{T-1}: value_t = [max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_0, f_t))] / 2 for t >= 1;
the score is the mean over t (as VBench's `subject_consistency` / `background_consistency`), in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch


def consistency_values(features: torch.Tensor) -> np.ndarray:
    """Unit features [T, D] -> per-frame values [T - 1] (value of frame t at index t - 1)."""
    previous = (features[:-1] * features[1:]).sum(-1).clamp_min(0)
    first = (features[:1] * features[1:]).sum(-1).clamp_min(0)
    return ((previous + first) / 2).cpu().numpy()
