"""Dual-view track conditioner (paper section 3.2): paired 3D tracks -> tokens added to Wan's video tokens.

    tokens [B, D, 2F, h, w] (patch-embedded source frames, then target frames), tracks [B, 2, F, N]
    1. sample the source half at the source uv of each latent frame      -> [B, N, F, D]   (bilinear, no params)
    2. project to the working width + Fourier(uv) projection; residual MLP -> [B, N, F, C]   (eq. 1)
    3. zero tracks invalid in the source view
    4. temporal transformer over each track's F frames, key padding mask = invalid frames    (eq. 2)
    5. per view: + projection of Fourier(disparity), disparity normalized jointly over views  (eq. 3)
    6. LayerNorm, zero-initialised projection to D, bilinear scatter (averaged) to each view's grid (eq. 4)
    -> [B, D, 2F, h, w], zero at initialisation so that the untrained model is the base model exactly.

Choices where the paper is silent (all config values):
* `width` (512) and `num_heads` (8): the conditioner sees B*N*F = 1152 x 21 = 24K points, so a 512-wide
  8-layer transformer costs well under 1% of a Wan-1.3B step; D = 1536 would only add cost.
* "Add a Fourier encoding" to D-dim features: the sampled features are projected to the working width and
  the Fourier features get their own linear projection; the sum is the same function class as adding a
  D-dim projection of the encoding before the input projection, at a fraction of the cost.
* `sample_pre_bias` (False): sampling reads exactly the tokens the DiT sees (after the patch embedding's
  bias). The bias is a constant that the input projection's own bias absorbs (with "border" padding the
  sampling weights sum to 1), so the choice only matters with "zeros" padding.
* `padding_mode` ("border"): tracks in the outer half-cell read the edge tokens at full strength instead of
  fading to zero (see `geometry.py`).
* `mask_dropped_source_frames` (True): source-frame dropout zeroes source latents; the conditioner then
  treats those frames as invalid in the source view (zero features, masked keys), so the temporal
  transformer fills them from the frames that were kept, which is the robustness the augmentation aims at.
  Scattering still uses the geometric validity, so dropped source frames still receive track tokens.
* `frame_position_encoding` (True): eq. 2's transformer is otherwise blind to frame order; a fixed
  sinusoidal encoding of the latent frame index (any F, no parameters) is added before it.
* `disparity_norm` ("max"): disparity 1/depth of the valid points of both views and all frames of a sample
  is divided by its maximum (so it lies in (0, 1], scale-free for relative-depth trackers, and the relative
  scale between the views is kept); "mean" divides by the mean instead (less sensitive to one near point).
* Tracks valid in no source frame: `nn.TransformerEncoder` returns NaN for an all-masked sequence, so frame 0
  is unmasked for such tracks and their temporal output is zeroed (they still carry their disparity
  encoding into the views where they are valid).
* Precision: uv, depth, disparity and their Fourier features are float32 (or wider) whatever the parameters'
  dtype; only the features are cast, to the projection's dtype. With bf16 parameters (DeepSpeed bf16) bf16
  inputs would round uv by up to a tenth of a cell and make the top bands' sin/cos noise, and training
  would see other inputs than inference in float32.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from track2view.conditioning.base import Conditioning, batch_expand
from track2view.conditioning.geometry import PADDING_MODES, bilinear_sample, bilinear_scatter
from track2view.tracks import PairedTracks

DISPARITY_NORMS = ("max", "mean")


def coordinates(x: torch.Tensor) -> torch.Tensor:
    """x in float32 or wider: coordinates and depths are never computed in half precision (module docstring)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def fourier_features(x: torch.Tensor, num_bands: int) -> torch.Tensor:
    """[..., K] -> [..., K * (2 * num_bands + 1)]: x, sin(2^i pi x), cos(2^i pi x) for i < num_bands.

    Computed in float32 or wider (bf16 sin of 2^7 pi x is off by up to 1.5).
    """
    x = coordinates(x)
    freqs = math.pi * 2.0 ** torch.arange(num_bands, device=x.device, dtype=x.dtype)
    angles = (x.unsqueeze(-1) * freqs).flatten(-2)  # [..., K * bands]
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


def sinusoidal_frame_encoding(num_frames: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """[F, dim] fixed transformer position encoding of frame indices 0..F-1."""
    pos = torch.arange(num_frames, device=device, dtype=torch.float32).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(num_frames, dim, device=device)
    enc[:, 0::2] = torch.sin(pos * freqs)
    enc[:, 1::2] = torch.cos(pos * freqs[: dim // 2])
    return enc.to(dtype)


class ResidualMLP(nn.Module):
    """x + MLP(LayerNorm(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(self.norm(x))


class DualViewTrackConditioner(ModelMixin, ConfigMixin, Conditioning):
    """Paired tracks + patch-embedded dual-view tokens -> track tokens of the same shape (module docstring).

    The `tracks` conditioning kind (track2view/conditioning/base.py): inputs `tracks` (and the optional
    `source_frame_mask`); training augmentation: a random fraction of the tracks is kept (`subsample_tracks`).

    `enable_gradient_checkpointing()` recomputes the whole conditioner in backward: otherwise its
    activations (about 3 GB at 1152 tracks x 21 frames, width 512) stay alive through the entire DiT.
    """

    _supports_gradient_checkpointing = True
    kind = "tracks"
    inputs = ("tracks",)

    @register_to_config
    def __init__(self, token_dim: int = 1536, width: int = 512, num_layers: int = 8, num_heads: int = 8,
                 mlp_ratio: float = 4.0, uv_fourier_bands: int = 8, disparity_fourier_bands: int = 8,
                 dropout: float = 0.0, padding_mode: str = "border", sample_pre_bias: bool = False,
                 disparity_norm: str = "max", mask_dropped_source_frames: bool = True,
                 frame_position_encoding: bool = True):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if disparity_norm not in DISPARITY_NORMS:
            raise ValueError(f"disparity_norm must be one of {DISPARITY_NORMS}, got {disparity_norm!r}")
        if width % num_heads or width % 2:
            raise ValueError(f"width {width} must be even and divisible by num_heads {num_heads}")
        hidden = int(width * mlp_ratio)
        self.in_proj = nn.Linear(token_dim, width)
        self.uv_proj = nn.Linear(2 * (2 * uv_fourier_bands + 1), width)
        self.mlp = ResidualMLP(width, hidden)
        layer = nn.TransformerEncoderLayer(width, num_heads, hidden, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.disparity_proj = nn.Linear(2 * disparity_fourier_bands + 1, width)
        self.out_norm = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, token_dim)
        nn.init.zeros_(self.out_proj.weight)  # untrained conditioner adds exactly 0
        nn.init.zeros_(self.out_proj.bias)
        self.gradient_checkpointing = False

    def check_inputs(self, inputs: Mapping[str, Any], batch_size: int, latent_frames: int) -> None:
        super().check_inputs(inputs, batch_size, latent_frames)
        tracks = inputs["tracks"]
        if not isinstance(tracks, PairedTracks) or not tracks.batched:
            raise ValueError("tracks must be batched PairedTracks [B, 2, F, N] (use PairedTracks.stack or "
                             "add a leading axis)")
        if tracks.num_frames != latent_frames or tracks.valid.shape[0] not in (1, batch_size):
            raise ValueError(f"tracks {tuple(tracks.depth.shape)} must be [B={batch_size} or 1, 2, F={latent_frames}, "
                             f"N] (source + target frames of the input); subsample tracks to the latent frame rate "
                             f"with PairedTracks.at_latent_stride")

    def condition_tokens(self, tokens, inputs, patch_bias=None):
        inputs = batch_expand(inputs, tokens.shape[0])  # one video's inputs for a batch (e.g. the CFG branches)
        return self(tokens, inputs["tracks"], inputs.get("source_frame_mask"), patch_bias=patch_bias)

    def augment(self, inputs: dict, config, generator: torch.Generator | None = None) -> dict:
        """Keep a random fraction ~ U[config.track_keep_min, track_keep_max] of each sample's tracks."""
        if config.track_keep_min >= 1:
            return inputs
        return {**inputs, "tracks": subsample_tracks(inputs["tracks"], config.track_keep_min, config.track_keep_max,
                                                     generator)}

    def normalized_disparity(self, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """depth, valid [B, 2, F, N] -> disparity / (max or mean over the valid points of both views) [B, 2, F, N]."""
        disparity = torch.where(valid, 1.0 / torch.where(valid, depth, 1.0), 0.0)
        if self.config.disparity_norm == "max":
            scale = disparity.amax(dim=(1, 2, 3), keepdim=True)
        else:
            scale = disparity.sum(dim=(1, 2, 3), keepdim=True) / valid.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
        return disparity / scale.clamp_min(1e-12)

    def forward(self, tokens: torch.Tensor, tracks: PairedTracks, source_frame_mask: torch.Tensor | None = None,
                patch_bias: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, D, 2F, h, w], tracks [B, 2, F, N] -> track tokens [B, D, 2F, h, w] (dtype of `tokens`).

        source_frame_mask [B, F] bool: False where a source latent frame was zeroed (source-frame dropout).
        patch_bias [D]: the patch embedding's bias, subtracted before sampling when `sample_pre_bias`.
        """
        cfg = self.config
        b, d, f2, h, w = tokens.shape
        f, n = f2 // 2, tracks.num_tracks
        if d != cfg.token_dim or f2 % 2:
            raise ValueError(f"tokens must be [B, {cfg.token_dim}, 2F, h, w] (source then target frames), "
                             f"got {tuple(tokens.shape)}")
        if not tracks.batched or tuple(tracks.depth.shape) != (b, 2, f, n):
            raise ValueError(f"tracks must be [B={b}, 2, F={f}, N] at the latent frame rate to match tokens "
                             f"{tuple(tokens.shape)}, got depth {tuple(tracks.depth.shape)}")
        if source_frame_mask is not None and tuple(source_frame_mask.shape) != (b, f):
            raise ValueError(f"source_frame_mask must be [B, F] = {(b, f)}, got {tuple(source_frame_mask.shape)}")
        source = tokens[:, :, :f]
        if cfg.sample_pre_bias and patch_bias is not None:
            source = source - patch_bias.view(1, -1, 1, 1, 1).to(source.dtype)
        # Sampling has no parameters, so it runs outside the checkpoint: the checkpoint then holds the sampled
        # features [B, F, N, D] instead of the whole patch-embedded video [B, D, 2F, h, w] until backward.
        sampled = self.sample_source(source, tracks.uv[:, 0], tracks.valid[:, 0])
        args = (sampled, tracks.uv, tracks.depth, tracks.valid, source_frame_mask, (h, w))
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            grid = self._gradient_checkpointing_func(self.track_tokens, *args)
        else:
            grid = self.track_tokens(*args)
        return grid.to(tokens.dtype)

    def sample_source(self, source: torch.Tensor, uv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """source tokens [B, D, F, h, w], source-view uv [B, F, N, 2] / valid [B, F, N] -> [B, F, N, D].

        Returned in the autocast dtype when autocast is on (the input projection casts to it anyway), else in
        the parameters' dtype.
        """
        uv = coordinates(torch.where(valid.unsqueeze(-1), uv, 0.5))  # no NaN/inf from invalid points
        b = source.shape[0]
        sampled = bilinear_sample(rearrange(source, "b d f h w -> (b f) d h w"), rearrange(uv, "b f n c -> (b f) n c"),
                                  self.config.padding_mode)
        device_type = sampled.device.type
        autocast = torch.is_autocast_enabled(device_type)
        sampled = sampled.to(torch.get_autocast_dtype(device_type) if autocast else self.in_proj.weight.dtype)
        return rearrange(sampled, "(b f) n d -> b f n d", b=b)

    def track_tokens(self, sampled: torch.Tensor, uv: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                     source_frame_mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """sampled source tokens [B, F, N, D] (`sample_source`), uv [B, 2, F, N, 2], depth/valid [B, 2, F, N]
        -> track tokens [B, D, 2F, h, w] (float32 or wider)."""
        cfg = self.config
        b, f, (h, w) = sampled.shape[0], sampled.shape[1], size
        uv = coordinates(torch.where(valid.unsqueeze(-1), uv, 0.5))  # no NaN/inf from invalid points
        depth = coordinates(torch.where(valid, depth, 1.0))

        # 1-3: (sampled source tokens) + Fourier(uv), residual MLP, zero tracks invalid in the source view
        uv_features = fourier_features(uv[:, 0], cfg.uv_fourier_bands).to(self.uv_proj.weight.dtype)
        x = self.in_proj(sampled) + self.uv_proj(uv_features)
        x = rearrange(self.mlp(x), "b f n c -> b n f c")
        source_valid = rearrange(valid[:, 0], "b f n -> b n f")
        if source_frame_mask is not None and cfg.mask_dropped_source_frames:
            source_valid = source_valid & source_frame_mask.bool().unsqueeze(1)
        x = x * source_valid.unsqueeze(-1)

        # 4: temporal transformer over each track's frames; never-valid tracks get frame 0 unmasked, output 0
        if cfg.frame_position_encoding:
            x = x + sinusoidal_frame_encoding(f, x.shape[-1], x.device, x.dtype)
        ignore = ~rearrange(source_valid, "b n f -> (b n) f")
        never_valid = ignore.all(dim=1, keepdim=True)  # [(b n), 1]
        first_frame = torch.arange(f, device=ignore.device) == 0
        ignore = ignore & ~(never_valid & first_frame)
        x = self.temporal(rearrange(x, "b n f c -> (b n) f c"), src_key_padding_mask=ignore)
        x = rearrange(x * ~never_valid.unsqueeze(-1), "(b n) f c -> b f n c", b=b)

        # 5-6: per-view disparity encoding, output projection, bilinear scatter to each view's token grid
        disparity = self.normalized_disparity(depth, valid).unsqueeze(-1)  # [B, 2, F, N, 1]
        disparity_features = fourier_features(disparity, cfg.disparity_fourier_bands)
        views = x.unsqueeze(1) + self.disparity_proj(disparity_features.to(self.disparity_proj.weight.dtype))
        values = self.out_proj(self.out_norm(views))  # [B, 2, F, N, D]
        grid = bilinear_scatter(rearrange(values, "b v f n d -> (b v f) n d"),
                                rearrange(uv, "b v f n c -> (b v f) n c"), (h, w),
                                valid=rearrange(valid, "b v f n -> (b v f) n"), padding_mode=cfg.padding_mode)
        return rearrange(grid, "(b v f) d h w -> b d (v f) h w", b=b, v=2)


def subsample_tracks(tracks: PairedTracks, keep_min: float, keep_max: float,
                     generator: torch.Generator | None = None) -> PairedTracks:
    """Keep a random fraction ~ U[keep_min, keep_max] of each sample's tracks by marking the rest invalid.

    Shapes stay [B, 2, F, N] (static shapes for compiled models and padded batches).
    """
    b, n = tracks.valid.shape[0], tracks.num_tracks
    device = generator.device if generator is not None else tracks.valid.device
    fraction = keep_min + (keep_max - keep_min) * torch.rand(b, 1, generator=generator, device=device)
    rank = torch.rand(b, n, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    keep = (rank < (fraction * n).ceil()).to(tracks.valid.device)  # [B, N]
    return PairedTracks(tracks.uv, tracks.depth, tracks.valid & keep.view(b, 1, 1, n))
