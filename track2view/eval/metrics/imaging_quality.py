"""VBench imaging quality: MUSIQ trained on SPAQ, per frame, score / 100.

Convention (VBench's `imaging_quality`, default 'longer' mode): a frame whose longer side exceeds 512 is
resized (bilinear, no antialias) so that side is 512; values / 255; MUSIQ's predicted MOS (0-100) per frame;
the score is the mean over frames / 100.
Network: pyiqa's MUSIQ architecture with the local checkpoint --musiq (`musiq_spaq_ckpt-358bb6af.pth`). pyiqa
needs torchvision, so this metric runs where pyiqa installs (GPU machines), not in the CPU test environment;
the formula is tested there with another network in its place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from track2view.eval.errors import EvalInputError
from track2view.eval.metric import Clip, FrameMetric, frame_values
from track2view.eval.networks.device import resolve_device
from track2view.eval.networks.weights import require_path

LONGER_SIDE = 512


def load_musiq(path, device: str):
    """pyiqa's MUSIQ with the SPAQ checkpoint at `path`."""
    path = require_path(path, "MUSIQ (SPAQ)", "--musiq")
    try:
        from pyiqa.archs.musiq_arch import MUSIQ
    except ImportError as e:
        raise EvalInputError(f"imaging quality needs pyiqa's MUSIQ (`pip install pyiqa`, which needs torchvision): "
                             f"{e}") from None
    try:
        return MUSIQ(pretrained_model_path=str(path)).to(device).eval()
    except (RuntimeError, KeyError, OSError) as e:
        raise EvalInputError(f"--musiq {path} holds another network than MUSIQ: {str(e).splitlines()[0]}") from None


def vbench_resize(frames: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] float in [0, 255] -> longer side <= 512, values in [0, 1]."""
    h, w = frames.shape[-2:]
    if max(h, w) > LONGER_SIDE:
        scale = LONGER_SIDE / max(h, w)
        frames = F.interpolate(frames, size=(int(scale * h), int(scale * w)), mode="bilinear", antialias=False,
                               align_corners=False)
    return frames / 255.0


class ImagingQuality(FrameMetric):
    name, names = "imaging_quality", ("imaging_quality",)

    def __init__(self, network, device: str | None = None):
        """network: frame [1, 3, H, W] in [0, 1] -> MOS score (MUSIQ from `load_musiq`)."""
        self.network = network
        self.device = resolve_device(device)

    @torch.no_grad()
    def per_frame(self, clip: Clip) -> dict:
        frames = vbench_resize(torch.as_tensor(clip.generated).permute(0, 3, 1, 2).float())
        scores = [float(self.network(frame[None].to(self.device))) / 100.0 for frame in frames]
        return {"imaging_quality": frame_values(scores)}
