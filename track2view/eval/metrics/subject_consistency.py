"""VBench subject consistency: DINO ViT-B/16 [CLS] features, VBench's consistency formula (consistency.py).

Network: transformers' ViTModel from a local directory holding DINO ViT-B/16 (e.g. `facebook/dino-vitb16`,
model_type "vit"). Preprocessing as VBench's `dino_transform(224)`: shorter side resized to 224 (bilinear,
antialiased), values / 255, ImageNet mean/std; the ViT interpolates its position embeddings to the frame's
aspect ratio. Feature: the final layer-normed [CLS] token (DINO's backbone output), L2-normalized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from track2view.eval.metric import Clip, FrameMetric, pair_values
from track2view.eval.metrics.consistency import consistency_values
from track2view.eval.networks.device import resolve_device
from track2view.eval.networks.weights import pretrained

SHORT_SIDE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FRAME_BATCH = 16


class DINOEncoder:
    """frames [T, H, W, 3] uint8 -> unit [CLS] features [T, D]."""

    def __init__(self, path, device: str | None = None):
        from transformers import ViTModel

        self.path, self.device = path, resolve_device(device)
        self.model = pretrained(ViTModel, path, "DINO ViT-B/16", "--dino", ("vit", "dino"),
                                add_pooling_layer=False).to(self.device).eval()

    def preprocess(self, frames) -> torch.Tensor:
        x = torch.as_tensor(frames).permute(0, 3, 1, 2).float().to(self.device) / 255.0
        h, w = x.shape[-2:]
        scale = SHORT_SIDE / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                          align_corners=False)
        mean, std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, frames) -> torch.Tensor:
        out = []
        for start in range(0, len(frames), FRAME_BATCH):
            pixels = self.preprocess(frames[start:start + FRAME_BATCH]).to(self.model.dtype)
            cls = self.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 0]
            out.append(F.normalize(cls.float(), dim=-1))
        return torch.cat(out)


class SubjectConsistency(FrameMetric):
    name, names = "subject_consistency", ("subject_consistency",)

    def __init__(self, encoder: DINOEncoder):
        self.encoder = encoder

    def per_frame(self, clip: Clip) -> dict:
        return {"subject_consistency": pair_values(consistency_values(self.encoder(clip.generated)))}
