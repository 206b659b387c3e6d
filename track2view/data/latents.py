"""Encoding helpers shared by latent precomputation and inference: resize/crop, Wan VAE, UMT5 prompts.

    frames [T, H0, W0, 3] uint8 --resize_and_crop--> video [3, T, H, W] in [-1, 1]
    video  [B, 3, T, H, W]      --encode_video-----> latents [B, 16, (T-1)//4+1, H/8, W/8], normalized
    prompts list[str]           --encode_prompt----> list of [L_i, text_dim] (each trimmed to its tokens)

Normalization is the one `WanPipeline` undoes before decoding: (z - latents_mean) / latents_std with the
per-channel statistics of the VAE config. The crop (`CenterCrop`) also maps normalized track coordinates
and normalized intrinsics from the original frame to the cropped one (convention: track2view/tracks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange


@dataclass(frozen=True)
class CenterCrop:
    """Aspect-preserving resize of an (in_h, in_w) frame to cover (out_h, out_w), then a centred crop.

    `resized` is the size after the resize, `top`/`left` the crop offset in resized pixels.
    """
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def resized(self) -> tuple[int, int]:
        (h0, w0), (h, w) = self.in_hw, self.out_hw
        scale = max(h / h0, w / w0)
        return max(h, round(h0 * scale)), max(w, round(w0 * scale))

    @property
    def offset(self) -> tuple[int, int]:
        (hr, wr), (h, w) = self.resized, self.out_hw
        return (hr - h) // 2, (wr - w) // 2

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) per axis (x, y) with uv_out = uv_in * scale + shift."""
        (hr, wr), (top, left), (h, w) = self.resized, self.offset, self.out_hw
        return np.array([wr / w, hr / h], np.float32), np.array([-left / w, -top / h], np.float32)

    def apply_uv(self, uv):
        """Map normalized uv [..., 2] of the original frame to the cropped frame (outside: <0 or >1)."""
        scale, shift = self._affine()
        if isinstance(uv, torch.Tensor):
            return uv * uv.new_tensor(scale) + uv.new_tensor(shift)
        return np.asarray(uv, np.float32) * scale + shift

    def apply_intrinsics(self, k_normalized: np.ndarray) -> np.ndarray:
        """Map normalized intrinsics [..., 3, 3] (row 0 / W, row 1 / H) to the cropped frame."""
        scale, shift = self._affine()
        k = np.array(k_normalized, dtype=np.float32, copy=True)
        # uv = K_n @ (x/z, y/z, 1); uv' = uv * scale + shift  =>  rows 0/1 scale, shift goes to column 2
        for axis in (0, 1):
            k[..., axis, :] = k[..., axis, :] * scale[axis] + shift[axis] * k[..., 2, :]
        return k


def resize_and_crop(frames, height: int, width: int) -> torch.Tensor:
    """RGB frames [T, H0, W0, 3] uint8 (numpy, or torch on any device) -> [3, T, height, width] float32 in [-1, 1].

    Aspect-preserving bilinear resize with antialiasing (as torchvision's Resize) to cover the output,
    then a centred crop (`CenterCrop` gives the same geometry for tracks and intrinsics).
    """
    frames = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be RGB [T, H, W, 3], got {tuple(frames.shape)}")
    crop = CenterCrop(tuple(frames.shape[1:3]), (height, width))
    video = rearrange(frames, "t h w c -> t c h w").float()
    if crop.resized != tuple(frames.shape[1:3]):
        video = F.interpolate(video, size=crop.resized, mode="bilinear", antialias=True, align_corners=False)
    top, left = crop.offset
    video = video[:, :, top:top + height, left:left + width]
    video = (video / 127.5 - 1.0).clamp(-1.0, 1.0)
    return rearrange(video, "t c h w -> c t h w").contiguous()


def latent_stats(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents_mean, latents_std) of the VAE config, shaped [1, C, 1, 1, 1] float32."""
    c = vae.config
    mean = torch.tensor(c.latents_mean, dtype=torch.float32).view(1, c.z_dim, 1, 1, 1)
    std = torch.tensor(c.latents_std, dtype=torch.float32).view(1, c.z_dim, 1, 1, 1)
    return mean, std


@torch.no_grad()
def encode_video(vae, frames: torch.Tensor, temporal_stride: int = 4,
                 device: torch.device | None = None) -> torch.Tensor:
    """Encode videos [B, 3, T, H, W] in [-1, 1] with the Wan VAE -> normalized latents [B, C, F, H/8, W/8] float32.

    Uses the posterior mode (deterministic, as `WanImageToVideoPipeline` does for its condition).
    T must be temporal_stride*k + 1 (the causal VAE maps it to k + 1 latent frames). Each video in
    the batch is encoded on its own by the VAE, so source and target never mix. `device`: where the VAE computes
    (default: where its weights are; under CPU offload, the pipeline's execution device).
    """
    if frames.dim() != 5 or frames.shape[1] != 3:
        raise ValueError(f"videos must be [B, 3, T, H, W], got {tuple(frames.shape)}")
    t = frames.shape[2]
    if (t - 1) % temporal_stride:
        raise ValueError(f"{t} frames cannot be encoded by the Wan VAE: it needs {temporal_stride}k+1 frames "
                         f"(e.g. 81); trim the video (--num-frames)")
    param = next(vae.parameters())
    z = vae.encode(frames.to(device=device or param.device, dtype=param.dtype)).latent_dist.mode().float()
    mean, std = latent_stats(vae)
    return (z - mean.to(z.device)) / std.to(z.device)


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompts: list[str], max_length: int = 512,
                  device: torch.device | None = None) -> list[torch.Tensor]:
    """UMT5 embeddings of each prompt, trimmed to its tokens: list of [L_i, text_dim] (text encoder dtype).

    Same steps as `WanPipeline._get_t5_prompt_embeds` (prompt cleaning, padding to max_length, attention
    mask), except that the zero padding is not added: the loader pads at collate time. Hand-written
    because the pipeline method returns the padded batch without the lengths. `device`: as in `encode_video`.
    """
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    if isinstance(prompts, str):
        prompts = [prompts]
    inputs = tokenizer([prompt_clean(p) for p in prompts], padding="max_length", max_length=max_length,
                       truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = device or next(text_encoder.parameters()).device
    hidden = text_encoder(inputs.input_ids.to(device), inputs.attention_mask.to(device)).last_hidden_state
    lengths = inputs.attention_mask.gt(0).sum(dim=1).tolist()
    return [h[:n] for h, n in zip(hidden, lengths)]
