"""Camera-embedding conditioning, the ReCamMaster-style baseline: the target camera as numbers, not geometry.

    cameras [B, F, 12]: the target camera relative to the source camera at frame 0, per latent frame, its
                        c2w's top 3x4 rows flattened (rotation then translation in metres, OpenCV axes)
      -> Linear(12, D), zero-initialised -> [B, D, F] added to every token of target latent frame f
      (the source half gets nothing)

ReCamMaster adds such a projection inside every DiT block; here it is added once, to the patch-embedded target
tokens, like the track conditioner, so that the two kinds differ only in what they tell the model. The
untrained projection adds exactly 0 (the base model).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from track2view.conditioning.base import Conditioning

CAMERA_FEATURES = 12  # a 3x4 [R | t] per latent frame


def relative_camera_features(source_c2w: np.ndarray, target_c2w: np.ndarray, stride: int = 4,
                             units_per_metre: float = 1.0) -> np.ndarray:
    """Source and target c2w [T, 4, 4] (one world frame, T = stride k + 1) -> [F, 12] float32 features.

    The target camera at frames 0, stride, 2 stride, ... relative to the source camera at frame 0,
    translations divided by `units_per_metre` (a monocular tracker's scene units -> metres).
    """
    source_c2w, target_c2w = np.asarray(source_c2w, np.float64), np.asarray(target_c2w, np.float64)
    if target_c2w.ndim != 3 or target_c2w.shape[1:] != (4, 4) or (len(target_c2w) - 1) % stride:
        raise ValueError(f"target cameras must be [T, 4, 4] with T = {stride}k+1, got {list(target_c2w.shape)}")
    relative = np.linalg.inv(source_c2w[0]) @ target_c2w[::stride]
    relative[:, :3, 3] /= units_per_metre
    return relative[:, :3, :4].reshape(len(relative), CAMERA_FEATURES).astype(np.float32)


class CameraConditioning(ModelMixin, ConfigMixin, Conditioning):
    kind = "camera"
    inputs = ("cameras",)

    @register_to_config
    def __init__(self, token_dim: int = 1536):
        super().__init__()
        self.proj = nn.Linear(CAMERA_FEATURES, token_dim)
        nn.init.zeros_(self.proj.weight)  # untrained: adds exactly 0
        nn.init.zeros_(self.proj.bias)

    def check_inputs(self, inputs: Mapping[str, Any], batch_size: int, latent_frames: int) -> None:
        super().check_inputs(inputs, batch_size, latent_frames)
        cameras = inputs["cameras"]
        if cameras.dim() != 3 or cameras.shape[0] not in (1, batch_size) or tuple(cameras.shape[1:]) != (
                latent_frames, CAMERA_FEATURES):
            raise ValueError(f"cameras must be [B={batch_size} or 1, F={latent_frames}, {CAMERA_FEATURES}] "
                             f"(relative target camera per latent frame), got {tuple(cameras.shape)}")

    def forward(self, tokens: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """tokens [B, D, 2F, h, w], cameras [B, F, 12] -> [B, D, 2F, 1, 1] (zero on the source half)."""
        f = tokens.shape[2] // 2
        embedding = self.proj(cameras.to(self.proj.weight.dtype))  # [B, F, D]
        target = embedding.transpose(1, 2)[..., None, None]  # [B, D, F, 1, 1]
        return torch.cat([torch.zeros_like(target), target], dim=2).to(tokens.dtype)

    def condition_tokens(self, tokens, inputs, patch_bias=None):
        return self(tokens, inputs["cameras"])
