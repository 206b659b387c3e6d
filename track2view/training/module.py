"""`Track2ViewModule`: the science of training as a LightningModule (paper sections 3.1-3.4).

    batch (docs/architecture.md "Batch"): source/target latents [B, 16, F, h, w], prompt embeds [B, L, D],
                                           the conditioning's inputs (tracks [B, 2, F, N] | cameras [B, F, 12] | -)
    -> augment (source-frame dropout, the conditioning's own), sigma ~ p(sigma), noise the target half only
    -> Track2ViewTransformer(cat(source, x_t) [B, 16, 2F, h, w], t, prompt, inputs)   (frozen Wan + LoRA + conditioning)
    -> flow-matching MSE on the target half (fp32) -> AdamW on LoRA + conditioning, warm-up then constant/cosine LR

Every setting is an init argument (plain types, so LightningCLI reads them from YAML and they round-trip
through checkpoints without pickle). The model is built in `configure_model` (Lightning calls it once the
devices are known), so instantiating the module from a config is cheap and checks the config first.

Determinism: every random draw of a training step (augmentations, sigma, noise) comes from a generator
seeded by (seed, global step, position of the micro-batch in the global batch), so a resumed run draws
exactly what the uninterrupted run would have, ranks draw differently, and 1 GPU with gradient accumulation
draws what N GPUs draw. bf16 comes from the Trainer's precision: "bf16-mixed" autocasts here
(and under DeepSpeed, whose bf16 mode casts the model and keeps fp32 master weights in ZeRO's partitions).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn

from track2view.conditioning import KINDS, batch_slice, input_names
from track2view.dtypes import DTYPES
from track2view.model.flow_matching import FlowMatchingConfig, flow_matching_loss, prepare_training_inputs
from track2view.model.one_way import check_timestep_mode
from track2view.training.checkpoints import base_config
from track2view.video_size import latent_frames, video_size_problem

LR_SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the setting and the fix."""


def check_video_size(height: int | None, width: int | None, num_frames: int | None, spatial_multiple: int = 16,
                     temporal_stride: int = 4) -> None:
    """Raise ConfigError unless height/width are multiples of VAE stride x patch (Wan-2.1: 16) and num_frames is
    (temporal stride)k+1."""
    problem = video_size_problem(height, width, num_frames, spatial_multiple, temporal_stride,
                                 names=("model.height", "model.width", "model.num_frames"))
    if problem:
        raise ConfigError(problem)


def vae_strides(model_path: str | None) -> tuple[int, int]:
    """(spatial, temporal) compression of the model directory's VAE: its config's scale_factor_spatial/_temporal
    (diffusers' AutoencoderKLWan fields); Wan-2.1's 8 and 4 when there is no directory or the config lacks them."""
    config = Path(model_path or "", "vae", "config.json")
    values = json.loads(config.read_text()) if model_path is not None and config.is_file() else {}
    return values.get("scale_factor_spatial") or 8, values.get("scale_factor_temporal") or 4


class Track2ViewModule(L.LightningModule):
    """Track-conditioned Wan-2.1 fine-tuning.

    Model:
        model_path: diffusers Wan-2.1 T2V directory (transformer/, vae/, scheduler/ ...); required by real configs.
        wan_config: `WanTransformer3DModel` config for a random-init base instead (tiny demo, benchmarks).
        torch_dtype: dtype of the frozen base weights ("bfloat16" on GPU; "float32" for the CPU demo).
        conditioning: the conditioning kind, "tracks" (the paper's), "camera" (ReCamMaster-style embedding) or
            "none" (frame concatenation only); track2view/conditioning/.
        conditioning_config: that kind's config overrides (token_dim is taken from the base model).
        lora_rank, lora_alpha, lora_target_modules, lora_dropout: the LoRA on every DiT block.
        train_base: train every parameter of the base too and add no LoRA (models trained from scratch, where no
            pretrained base exists: experiments/synthetic/); the export then carries the trained base.
        init_from: an export directory (`train.py export`) whose trained tensors start this run: its conditioning,
            LoRA and trained base (continue or fine-tune a trained model); its kind and settings must be this run's.
        gradient_checkpointing: "full" (recompute each DiT block and the conditioner in backward), "selective"
            (keep the self-attention outputs, recompute the rest) or "none"; checkpoint_blocks: only the first k.
        attention_backend: diffusers attention backend ("native" = PyTorch SDPA, "_native_cudnn", "flash", ...);
            None: flash-attn-4 where it is installed and the Trainer runs on a Hopper/Blackwell GPU in bf16/fp16
            precision (1.13x SDPA's training step on one H200, docs/benchmarks.md), else SDPA.
        attention: "full" (the paper's) or "one_way": source tokens attend only to the source, a quarter less
            self-attention in training and a source KV cache at inference; needs flow_matching.timestep_mode
            per_token (track2view/model/one_way.py).
        compile_blocks: `torch.compile` each repeated DiT block.
        ffn_chunk_tokens: run each block's LoRA feed-forward as one op whose backward recomputes its activations
            this many tokens at a time (None = peft's own path). With selective checkpointing and compiled
            blocks this pays for the kept attention outputs: docs/benchmarks.md.
    Objective:
        flow_matching: `FlowMatchingConfig` fields (sigma sampling, shift, timestep mode, augmentations).
    Optimizer (AdamW on LoRA + conditioner; no weight decay on biases and norms):
        lr, betas, eps, weight_decay, warmup_steps (linear from 0), lr_schedule ("constant" or "cosine" to
        min_lr_ratio * lr at trainer.max_steps).
    Data sanity (optional): height, width, num_frames of the videos the latent shards were made from;
        checked at start-up (multiples of 16, 4k+1) and against the first batch's latent shape.
    Validation: val_sigmas, the fixed noise levels of the validation loss (one per sample, cycled).
    seed: seeds every training step's random draws (with rank and step).
    """

    def __init__(self, model_path: str | None = None, wan_config: dict | None = None, torch_dtype: str = "bfloat16",
                 conditioning: str = "tracks", conditioning_config: dict | None = None, lora_rank: int = 64, lora_alpha: float = 64.0,
                 lora_target_modules: list[str] | None = None, lora_dropout: float = 0.0,
                 flow_matching: dict | None = None, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, warmup_steps: int = 500, lr_schedule: str = "constant",
                 min_lr_ratio: float = 0.0, gradient_checkpointing: str = "full", checkpoint_blocks: int | None = None,
                 attention_backend: str | None = None, compile_blocks: bool = False,
                 ffn_chunk_tokens: int | None = None, train_base: bool = False, init_from: str | None = None,
                 attention: str = "full", height: int | None = None,
                 width: int | None = None, num_frames: int | None = None, val_sigmas: list[float] | None = None,
                 seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        if (model_path is None) == (wan_config is None):
            raise ConfigError("set exactly one of model.model_path (a diffusers Wan-2.1 directory, e.g. "
                              "Wan2.1-T2V-1.3B-Diffusers) and model.wan_config (random init, for demos/benchmarks)"
                              + ("; got both" if model_path is not None else "; got neither"))
        if model_path is not None and not (Path(model_path) / "transformer" / "config.json").is_file():
            raise ConfigError(f"model.model_path={model_path!r} is not a diffusers Wan directory (no "
                              f"transformer/config.json); download e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers there "
                              f"or fix the path")
        if torch_dtype not in DTYPES:
            raise ConfigError(f"model.torch_dtype={torch_dtype!r}; choose one of {sorted(DTYPES)}")
        if conditioning not in KINDS:
            raise ConfigError(f"model.conditioning={conditioning!r}; choose one of {sorted(KINDS)}")
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"model.lr_schedule={lr_schedule!r}; choose one of {LR_SCHEDULES}")
        if lr <= 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise ConfigError(f"need model.lr > 0, model.warmup_steps >= 0, 0 <= model.min_lr_ratio <= 1; got "
                              f"{lr}, {warmup_steps}, {min_lr_ratio}")
        if lora_rank < 1:
            raise ConfigError(f"model.lora_rank must be >= 1, got {lora_rank}")
        self.vae_strides = vae_strides(model_path)  # (spatial, temporal)
        patch = base_config({"model_path": model_path, "wan_config": wan_config}).get("patch_size", (1, 2, 2))
        check_video_size(height, width, num_frames, self.vae_strides[0] * patch[-1], self.vae_strides[1])
        if init_from is not None:
            check_init_from(init_from, conditioning, train_base, conditioning_config)
        from track2view.model.speed import SpeedSettings

        try:
            self.speed = SpeedSettings(gradient_checkpointing, checkpoint_blocks, compile_blocks, attention_backend,
                                       ffn_chunk_tokens=ffn_chunk_tokens)
        except ValueError as e:
            raise ConfigError(f"model.gradient_checkpointing / checkpoint_blocks / ffn_chunk_tokens: {e}") from e
        try:
            self.fm = FlowMatchingConfig(**(flow_matching or {}))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.flow_matching: {e}") from e
        try:
            check_timestep_mode(attention, self.fm.timestep_mode)
        except ValueError as e:
            raise ConfigError(f"model.attention: {e}") from e
        self.val_sigmas = list(val_sigmas or [0.25, 0.5, 0.75])
        self.model = None  # Track2ViewTransformer, built by configure_model
        self.strict_loading = False  # checkpoints hold only the trainable tensors (see on_save_checkpoint)
        self.last_step_nonfinite = False  # read by callbacks.NonFiniteLossGuard
        self._checked_shape = False
        self._aux: dict = {}  # VAE / scheduler / pipeline for validation renders: not submodules, never saved

    # ---- model -----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from track2view.model.transformer import Track2ViewTransformer

        h = self.hparams
        kwargs = dict(conditioning=h.conditioning, conditioning_config=dict(h.conditioning_config or {}),
                      lora=False if h.train_base else lora_settings(h), torch_dtype=DTYPES[h.torch_dtype])
        if h.model_path is not None:
            model = Track2ViewTransformer.from_pretrained(h.model_path, subfolder="transformer", **kwargs)
        else:
            model = Track2ViewTransformer.from_config(dict(h.wan_config), **kwargs)
        if h.init_from is not None:
            model.load_trained(h.init_from)
        model.set_attention(h.attention)  # this run's, also over an init_from export's
        if h.train_base:
            model.train_base()
        model.configure_speed(replace(self.speed, attention_backend=self._attention_backend()))
        self.model = model.train()  # diffusers loads in eval mode; Lightning switches modes for validation

    def _attention_backend(self) -> str | None:
        """The configured backend, or with none the fastest exact one for this Trainer's device and precision."""
        if self.speed.attention_backend is not None or self._trainer is None:
            return self.speed.attention_backend
        from track2view.model.flash_attn_4 import default_backend

        return default_backend(isinstance(self.trainer.accelerator, CUDAAccelerator), self._precision_dtype())

    def _precision_dtype(self) -> torch.dtype:
        """The Trainer's compute dtype: "bf16-*" bf16, "16-*" fp16, else (or with no Trainer) fp32."""
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        return torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.model.transformer.config.patch_size)

    def tokens_per_sample(self, batch: dict) -> int:
        """Dual-view tokens per sample: 2F * h/p_h * w/p_w."""
        _, _, f, h, w = batch["source_latents"].shape
        p = self.patch_size
        return 2 * (f // p[0]) * (h // p[1]) * (w // p[2])

    def _frozen_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if not p.requires_grad}

    def _trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    # ---- steps -----------------------------------------------------------------------------------------------
    def _generator(self, *key: int) -> torch.Generator:
        """A generator on this device seeded by (seed, *key): same draws on resume, different per rank/step."""
        seed = int(np.random.SeedSequence([self.hparams.seed, *key]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator(self.device).manual_seed(seed)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._precision_dtype() == torch.bfloat16)

    def _check_batch(self, batch: dict) -> None:
        """Once: the latent shape matches height/width/num_frames when those are configured."""
        if self._checked_shape:
            return
        self._checked_shape = True
        h = self.hparams
        _, c, f, lh, lw = batch["source_latents"].shape
        space, time = self.vae_strides
        expected = (latent_frames(h.num_frames, time) if h.num_frames else f, h.height // space if h.height else lh,
                    h.width // space if h.width else lw)
        if (f, lh, lw) != expected:
            raise ConfigError(f"the shards hold latents [C, F, h, w] = {[c, f, lh, lw]} but the config says "
                              f"{h.height}x{h.width}x{h.num_frames} -> {[c, *expected]}; precompute the shards at the "
                              f"configured size or fix model.height/width/num_frames")

    def forward(self, hidden_states, timestep, encoder_hidden_states, **inputs):
        return self.model(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                          **inputs)

    def conditioning_inputs(self, batch: dict) -> dict:
        """The batch entries the conditioning kind reads (docs/architecture.md "Batch")."""
        return {k: batch[k] for k in input_names(self.hparams.conditioning)}

    def _loss(self, batch: dict, generator: torch.Generator, augment: bool, sigmas: torch.Tensor | None = None):
        fm = prepare_training_inputs(batch["source_latents"], batch["target_latents"], self.fm, generator=generator,
                                     augment=augment, sigmas=sigmas, patch_size=self.patch_size)
        inputs = self.conditioning_inputs(batch)
        if augment:
            inputs = self.model.conditioning.augment(inputs, self.fm, generator)
        with self._autocast():
            prediction = self(fm.hidden_states, fm.timestep, batch["prompt_embeds"], **inputs,
                              source_frame_mask=fm.source_frame_mask)
        return flow_matching_loss(prediction, fm.velocity)

    def _batch_slot(self, batch_idx: int) -> int:
        """Position of this micro-batch in the global batch (rank-major, then accumulation): the random draws
        depend on it, not on the rank, so 1 GPU x 2 accumulated micro-batches draws what 2 GPUs draw."""
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        return self.global_rank * accumulate + batch_idx % accumulate

    def training_step(self, batch: dict, batch_idx: int):
        self._check_batch(batch)
        loss = self._loss(batch, self._generator(self.global_step, self._batch_slot(batch_idx)), augment=True)
        # One host sync per step (a scalar, after the forward): needed to skip the step before backward;
        # negligible next to a multi-second step. All ranks decide together, or DDP would hang.
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach())), all=True)
        self.last_step_nonfinite = not finite
        if not finite:
            if isinstance(self.trainer.strategy, DeepSpeedStrategy):
                # DeepSpeed refuses a None loss; its bf16/fp16 overflow check skips the update on non-finite grads.
                return loss
            return None  # Lightning skips backward and the optimizer step
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch["key"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int):
        """Loss at fixed noise levels (`val_sigmas`, cycled over samples) and fixed noise, no augmentation.

        Every rank must get validation batches (at least one validation shard per GPU): Lightning's epoch-end
        reduction of `val/loss` waits for all ranks."""
        b = batch["source_latents"].shape[0]
        sigmas = torch.tensor([self.val_sigmas[(batch_idx * b + i) % len(self.val_sigmas)] for i in range(b)],
                              device=self.device)
        loss = self._loss(batch, self._generator(1_000_003, batch_idx, self.global_rank), augment=False, sigmas=sigmas)
        self.log("val/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True, batch_size=b)
        return loss

    # ---- optimizer -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters; check model.lora_* and model.conditioning")
        groups = [{"name": "decay", "params": [p for p in params if p.ndim >= 2], "weight_decay": h.weight_decay},
                  {"name": "no_decay", "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=h.lr, betas=tuple(h.betas), eps=h.eps)
        total = self.trainer.max_steps if self.trainer is not None else -1
        if h.lr_schedule == "cosine" and (total is None or total <= 0):
            raise ConfigError("model.lr_schedule=cosine needs trainer.max_steps > 0 (the decay length)")
        from transformers.optimization import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

        if h.lr_schedule == "cosine":  # linear warm-up from 0, then a cosine from lr to min_lr_ratio lr at max_steps
            scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, h.warmup_steps, total,
                                                                    min_lr_rate=h.min_lr_ratio)
        else:
            scheduler = get_constant_schedule_with_warmup(optimizer, h.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1,
                                                         "name": "lr"}}  # LearningRateMonitor: lr/decay, lr/no_decay

    # ---- checkpoints: only what trains ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DeepSpeedStrategy):
            strategy.exclude_frozen_parameters = True  # also for `strategy: deepspeed_stage_1` given by name
            if not any(p in str(self.trainer.precision) for p in ("bf16", "16")):
                rank_zero_warn("DeepSpeed without bf16/fp16 precision does not skip steps with non-finite gradients; "
                               "use trainer.precision: bf16-mixed")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:
            frozen = self._frozen_names()
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resume: the settings must be the checkpoint's (track2view/training/resume.py), then its tensors."""
        from track2view.training.resume import check_resumable

        from track2view.model.export import init_defaults

        # A setting added after the checkpoint was written had its default then.
        saved = {**init_defaults(type(self)), **dict(checkpoint.get("hyper_parameters") or {})}
        applied = check_resumable(saved, dict(self.hparams))
        for name, (old, new) in applied.items():
            rank_zero_warn(f"resuming with model.{name}={new!r} instead of the checkpoint's {old!r} (it changes how "
                           f"the step runs, not what it computes)")
        state = checkpoint.get("state_dict")
        if state is not None and self.model is not None:
            missing = sorted(self._trainable_names() - set(state))
            if missing:
                raise ConfigError(f"the checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]}); it was "
                                  f"written with another LoRA/conditioning configuration")

    def load_trainable_state_dict(self, state: dict) -> None:
        """Load LoRA + conditioner tensors (from a training checkpoint) into a configured model; strict on them."""
        missing = sorted(self._trainable_names() - set(state))
        unexpected = sorted(set(state) - set(self.state_dict()))
        if missing or unexpected:
            raise ConfigError(f"checkpoint does not match the model: missing {missing[:3]} ({len(missing)}), "
                              f"unexpected {unexpected[:3]} ({len(unexpected)})")
        self.load_state_dict(state, strict=False)


def check_init_from(path: str, conditioning: str, train_base: bool, conditioning_config: dict | None = None) -> None:
    """Raise ConfigError unless `path` is an export of this run's conditioning kind and settings (and LoRA-ness)."""
    from track2view.conditioning import conditioning_class
    from track2view.model.export import ExportInfo, init_defaults

    try:
        info = ExportInfo.read(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.init_from: {e}") from e
    if info.conditioning != conditioning:
        raise ConfigError(f"model.init_from={path!r} is a {info.conditioning!r} export but model.conditioning is "
                          f"{conditioning!r}; start from an export of the same kind")
    if info.lora is not None and train_base:
        raise ConfigError(f"model.init_from={path!r} holds a LoRA but model.train_base is set (no LoRA is added); "
                          f"merge it into the base first or train a LoRA (model.train_base: false)")
    wanted = {**init_defaults(conditioning_class(conditioning)), **dict(conditioning_config or {})}
    differ = [f"{k}: export {v!r}, config {wanted.get(k)!r}" for k, v in info.conditioning_config.items()
              if k != "token_dim" and v != wanted.get(k)]
    if differ:
        raise ConfigError(f"model.init_from={path!r} was trained with another model.conditioning_config ("
                          f"{'; '.join(differ)}); give the export's settings")


def lora_settings(hparams) -> dict:
    """The LoraSettings fields of the module's hyper-parameters (lora_rank, lora_alpha, ...)."""
    lora = dict(rank=hparams["lora_rank"], alpha=hparams["lora_alpha"], dropout=hparams["lora_dropout"])
    if hparams.get("lora_target_modules"):
        lora["target_modules"] = list(hparams["lora_target_modules"])
    return lora
