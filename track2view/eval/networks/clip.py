"""CLIP image and text embeddings (transformers' CLIPModel) from a local directory.

The directory is a transformers CLIP checkpoint, e.g. `openai/clip-vit-base-patch32` downloaded elsewhere:
config.json, model weights, tokenizer files, preprocessor_config.json. Images are preprocessed by
transformers' PIL CLIP processor (shorter side to the crop size, bicubic, centre crop, CLIP mean/std) on every
machine, so scores do not depend on whether torchvision is installed. Embeddings are L2-normalized.
"""

from __future__ import annotations

import numpy as np
import torch

from track2view.eval.networks.device import resolve_device
from track2view.eval.networks.weights import pretrained

FRAME_BATCH = 32


def _image_processor(path):
    try:
        from transformers.models.clip import CLIPImageProcessorPil
    except ImportError:  # transformers releases without the PIL/torchvision split have one (PIL) processor
        from transformers import CLIPImageProcessor as CLIPImageProcessorPil

    if (path / "preprocessor_config.json").is_file():
        return CLIPImageProcessorPil.from_pretrained(str(path), local_files_only=True)
    return CLIPImageProcessorPil()  # CLIP's own defaults (224, bicubic, centre crop, CLIP mean/std)


class CLIPEncoder:
    """`image_features(frames [T, H, W, 3] uint8) -> [T, D]`, `text_features(text) -> [D]`, both unit length."""

    def __init__(self, path, device: str | None = None, option: str = "--clip", what: str = "CLIP"):
        from pathlib import Path

        from transformers import AutoTokenizer, CLIPModel

        self.path, self.device = Path(path), resolve_device(device)
        self.model = pretrained(CLIPModel, path, what, option, ("clip",)).to(self.device).eval()
        self.processor = _image_processor(self.path)
        self._tokenizer, self._tokenizer_cls = None, AutoTokenizer

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # loaded on first use: image-only metrics need no tokenizer files
            self._tokenizer = self._tokenizer_cls.from_pretrained(str(self.path), local_files_only=True)
        return self._tokenizer

    @torch.no_grad()
    def image_features(self, frames: np.ndarray) -> torch.Tensor:
        out = []
        for start in range(0, len(frames), FRAME_BATCH):
            batch = self.processor(images=list(frames[start:start + FRAME_BATCH]), return_tensors="pt")
            pixels = batch["pixel_values"].to(self.device, self.model.dtype)
            out.append(_unit(_as_tensor(self.model.get_image_features(pixel_values=pixels))))
        return torch.cat(out).float()

    @torch.no_grad()
    def text_features(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer([text], padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _unit(_as_tensor(self.model.get_text_features(**tokens)))[0].float()


def _as_tensor(output) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
