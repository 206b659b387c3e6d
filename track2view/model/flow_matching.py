"""Flow matching on the target half of dual-view latents, and the training augmentations of section 3.2.

    x_t = (1 - sigma) x0 + sigma noise,   velocity target = noise - x0,   timestep = 1000 sigma   (Wan)

Only the target half is noised; the source latents stay clean and are concatenated in front on the frame
axis: model input [B, C, 2F, h, w] = cat(source [B, C, F, h, w], x_t [B, C, F, h, w]). The loss is the MSE
of the prediction's target half against the velocity, in float32.

Timesteps: one scalar per sample (default, as ReCamMaster) or per token (`timestep_mode="per_token"`),
[B, S] with S = 2F * h/p_h * w/p_w tokens in Wan's frame-major order and t = 0 on the source half.

Every random draw takes a `torch.Generator` (on the device where the draw happens; the tensors it returns
are moved to the latents' device) and happens on-device without host syncs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


SIGMA_SAMPLINGS = ("shifted_uniform", "logit_normal")
TIMESTEP_MODES = ("per_sample", "per_token")


@dataclass
class FlowMatchingConfig:
    sigma_sampling: str = "shifted_uniform"  # or "logit_normal" (finetrainers)
    shift: float = 5.0  # sigma -> shift sigma / (1 + (shift - 1) sigma), after either sampling; 1 = no shift
    logit_mean: float = 0.0
    logit_std: float = 1.0
    timestep_mode: str = "per_sample"  # or "per_token" (t = 0 on the source half)
    source_frame_dropout: float = 0.5  # zero k ~ U{0..floor(this * F)} random source latent frames; 0 = off
    track_keep_min: float = 0.5  # tracks conditioning: keep a fraction ~ U[min, max] of the tracks (others invalid)
    track_keep_max: float = 1.0

    def __post_init__(self):
        if self.sigma_sampling not in SIGMA_SAMPLINGS:
            raise ValueError(f"sigma_sampling must be one of {SIGMA_SAMPLINGS}, got {self.sigma_sampling!r}")
        if self.timestep_mode not in TIMESTEP_MODES:
            raise ValueError(f"timestep_mode must be one of {TIMESTEP_MODES}, got {self.timestep_mode!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if not 0 <= self.source_frame_dropout <= 1:
            raise ValueError(f"source_frame_dropout is a fraction of frames in [0, 1], got {self.source_frame_dropout}")
        if not 0 < self.track_keep_min <= self.track_keep_max <= 1:
            raise ValueError(f"need 0 < track_keep_min <= track_keep_max <= 1, got "
                             f"{self.track_keep_min}, {self.track_keep_max}")


def _device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan / SD3 timestep shift: sigma -> shift sigma / (1 + (shift - 1) sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(batch_size: int, config: FlowMatchingConfig, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """[B] noise levels in (0, 1): shifted uniform or logit-normal (then shifted)."""
    gen_device = _device(generator, torch.device(device))
    if config.sigma_sampling == "shifted_uniform":
        u = 1 - torch.rand(batch_size, generator=generator, device=gen_device)  # (0, 1]
    else:
        normal = torch.randn(batch_size, generator=generator, device=gen_device)
        u = torch.sigmoid(config.logit_mean + config.logit_std * normal)
    return shift_sigmas(u, config.shift).to(device)


def noise_target(source_latents: torch.Tensor, target_latents: torch.Tensor, sigmas: torch.Tensor,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise the target half only.

    -> (model input [B, C, 2F, h, w] = cat(source, x_t), velocity target noise - x0 [B, C, F, h, w])
    """
    if source_latents.shape != target_latents.shape:
        raise ValueError(f"source {tuple(source_latents.shape)} and target {tuple(target_latents.shape)} latents "
                         f"must have the same shape [B, C, F, h, w]")
    if noise is None:
        noise = torch.randn(target_latents.shape, generator=generator,
                            device=_device(generator, target_latents.device), dtype=target_latents.dtype)
        noise = noise.to(target_latents.device)
    s = sigmas.view(-1, 1, 1, 1, 1).to(target_latents.dtype)
    noisy = (1 - s) * target_latents + s * noise
    return torch.cat([source_latents, noisy], dim=2), noise - target_latents


def timesteps(sigmas: torch.Tensor, config: FlowMatchingConfig, latent_shape: tuple[int, ...],
              patch_size: tuple[int, int, int] = (1, 2, 2)) -> torch.Tensor:
    """1000 sigma as [B] ("per_sample") or [B, S] ("per_token", source tokens at t = 0).

    latent_shape is the dual-view model input's [B, C, 2F, h, w]; tokens are frame-major as in Wan.
    """
    return token_timesteps(1000.0 * sigmas.float(), config.timestep_mode, latent_shape, patch_size)


def token_timesteps(t: torch.Tensor, timestep_mode: str, latent_shape: tuple[int, ...],
                    patch_size: tuple[int, int, int] = (1, 2, 2)) -> torch.Tensor:
    """Timesteps t [B] -> t [B] ("per_sample") or [B, S] ("per_token", source tokens at t = 0).

    latent_shape as in `timesteps`. Shared by training (`timesteps`) and inference (the pipeline, with the
    scheduler's timesteps), so that both build the same timesteps.
    """
    if timestep_mode not in TIMESTEP_MODES:
        raise ValueError(f"timestep_mode must be one of {TIMESTEP_MODES}, got {timestep_mode!r}")
    if timestep_mode == "per_sample":
        return t
    _, _, f2, h, w = latent_shape
    frames, per_frame = f2 // patch_size[0], (h // patch_size[1]) * (w // patch_size[2])
    per_frame_t = torch.cat([torch.zeros_like(t).unsqueeze(1).expand(-1, frames // 2),
                             t.unsqueeze(1).expand(-1, frames - frames // 2)], dim=1)  # [B, frames]
    return per_frame_t.repeat_interleave(per_frame, dim=1)


def flow_matching_loss(prediction: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """MSE between the prediction's target half (last F of 2F frames) and the velocity [B, C, F, h, w], in fp32."""
    f = velocity.shape[2]
    expected = (*velocity.shape[:2], 2 * f, *velocity.shape[3:])
    if tuple(prediction.shape) != expected:
        raise ValueError(f"prediction must be [B, C, 2F, h, w] for velocity {tuple(velocity.shape)}, "
                         f"got {tuple(prediction.shape)}")
    return torch.nn.functional.mse_loss(prediction[:, :, f:].float(), velocity.float())


def drop_source_frames(source_latents: torch.Tensor, max_fraction: float, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero k ~ U{0..floor(max_fraction F)} random latent frames per sample.

    source_latents [B, C, F, h, w] -> (latents with those frames zeroed, kept [B, F] bool).
    """
    b, _, f = source_latents.shape[:3]
    device = _device(generator, source_latents.device)
    k_max = int(max_fraction * f)
    k = torch.randint(0, k_max + 1, (b, 1), generator=generator, device=device)
    rank = torch.rand(b, f, generator=generator, device=device).argsort(dim=1).argsort(dim=1)  # random permutation
    kept = (rank >= k).to(source_latents.device)  # the k frames of lowest rank are dropped
    return source_latents * kept.view(b, 1, f, 1, 1).to(source_latents.dtype), kept


@dataclass
class TrainingInputs:
    """Everything one training step feeds the model and the loss."""
    hidden_states: torch.Tensor  # [B, C, 2F, h, w] clean source, noisy target
    timestep: torch.Tensor  # [B] or [B, S]
    velocity: torch.Tensor  # [B, C, F, h, w] target of the target half
    source_frame_mask: torch.Tensor | None  # [B, F] bool, False = dropped; None without dropout
    sigmas: torch.Tensor  # [B]


def prepare_training_inputs(source_latents: torch.Tensor, target_latents: torch.Tensor, config: FlowMatchingConfig, generator: torch.Generator | None = None,
                            augment: bool = True, sigmas: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                            patch_size: tuple[int, int, int] = (1, 2, 2)) -> TrainingInputs:
    """Augment (source-frame dropout; `augment=False` at validation), sample sigma, noise the target half.

    source/target latents [B, C, F, h, w]. Fixed `sigmas` [B] / `noise` skip their draws. The conditioning's own
    augmentation (e.g. track subsampling) is `Conditioning.augment`, drawn from the same generator after this.
    """
    source_frame_mask = None
    if augment and config.source_frame_dropout > 0:
        source_latents, source_frame_mask = drop_source_frames(source_latents, config.source_frame_dropout, generator)
    if sigmas is None:
        sigmas = sample_sigmas(source_latents.shape[0], config, source_latents.device, generator)
    hidden_states, velocity = noise_target(source_latents, target_latents, sigmas, noise, generator)
    return TrainingInputs(hidden_states, timesteps(sigmas, config, hidden_states.shape, patch_size), velocity,
                          source_frame_mask, sigmas)
