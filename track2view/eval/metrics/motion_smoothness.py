"""VBench motion smoothness: how well a frame interpolator predicts the odd frames from the even ones.

Convention (VBench's `motion_smoothness`): the even frames 0, 2, 4, ... are interpolated pairwise at t = 1/2
by AMT-S; each odd frame 2k+1 (with 2k+2 in the clip) is compared with its interpolation by the mean absolute
difference of uint8 values; the score is (255 - mean difference) / 255, in [0, 1].
Network: AMT-S as VBench ships it (`vbench.third_party.amt`; config AMT-S.yaml, checkpoint amt-s.pth), run at
full resolution, frames padded to a multiple of 16. It needs the `vbench` package to import (torchvision,
decord, omegaconf): GPU machines, not the CPU test environment, where the formula is tested with another
interpolator in its place.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from track2view.eval.errors import EvalInputError
from track2view.eval.metric import Clip, FrameMetric
from track2view.eval.networks.device import resolve_device
from track2view.eval.networks.weights import load_state_dict, require_path

PAD_MULTIPLE = 16


def build_amt(config_path):
    """VBench's AMT network (random init) from its config file (AMT-S.yaml)."""
    config_path = require_path(config_path, "AMT-S", "--amt-config")
    try:
        from omegaconf import OmegaConf
        from vbench.third_party.amt.utils.build_utils import build_from_cfg
    except ImportError as e:
        raise EvalInputError(f"motion smoothness needs VBench's AMT-S (`pip install vbench`): {e}") from None
    return build_from_cfg(OmegaConf.load(str(config_path)).network)


def load_amt(config_path, checkpoint_path):
    """AMT-S with the checkpoint at `checkpoint_path` (VBench's amt-s.pth)."""
    model = build_amt(config_path)
    try:
        model.load_state_dict(load_state_dict(checkpoint_path, "AMT-S", "--amt"))
    except RuntimeError as e:
        raise EvalInputError(f"--amt {checkpoint_path} holds another network than AMT-S: "
                             f"{str(e).splitlines()[0]}") from None
    return model


class AMTInterpolator:
    """(frame_a, frame_b) uint8 [H, W, 3] -> the frame halfway between, uint8 [H, W, 3], with an AMT network."""

    def __init__(self, model, device: str | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.half = torch.full((1, 1, 1, 1), 0.5, device=self.device)

    @torch.no_grad()
    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        a, b = (torch.as_tensor(f).permute(2, 0, 1)[None].float().to(self.device) / 255.0 for f in (frame_a, frame_b))
        h, w = a.shape[-2:]
        pad = (0, -w % PAD_MULTIPLE, 0, -h % PAD_MULTIPLE)
        a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
        middle = self.model(a, b, self.half, scale_factor=1.0, eval=True)["imgt_pred"][..., :h, :w]
        return (middle[0].clamp(0, 1).permute(1, 2, 0) * 255.0).round().byte().cpu().numpy()


class MotionSmoothness(FrameMetric):
    name, names = "motion_smoothness", ("motion_smoothness",)

    def __init__(self, interpolator):
        """interpolator: (frame_a, frame_b) uint8 [H, W, 3] -> middle frame uint8 [H, W, 3] (`AMTInterpolator`)."""
        self.interpolator = interpolator

    def per_frame(self, clip: Clip) -> dict:
        frames = clip.generated
        odd = np.arange(1, len(frames) - 1, 2)
        diffs = [np.abs(self.interpolator(frames[t - 1], frames[t + 1]).astype(np.int16)
                        - frames[t].astype(np.int16)).mean() for t in odd]
        return {"motion_smoothness": ((255.0 - np.asarray(diffs, dtype=np.float64)) / 255.0, odd + 2)}
