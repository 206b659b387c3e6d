"""Track2ViewTransformer: frozen Wan-2.1 + peft LoRA + one conditioning kind, added by a diffusers hook.

    hidden_states [B, 16, 2F, h, w] (source latents, then noisy target latents), conditioning inputs
    (tracks [B, 2, F, N] | cameras [B, F, 12] | nothing: track2view/conditioning/)
    -> Wan's patch_embedding -> tokens [B, D, 2F, h/2, w/2] + conditioning tokens   (ConditioningHook)
    -> Wan's blocks, norm and projection -> prediction [B, 16, 2F, h, w]

diffusers' forward is used as is (LoRA, gradient checkpointing, attention backends, compiled blocks, caches
and context parallelism keep working). Only the LoRA and the conditioning train (or, after `train_base()`, the
conditioning and the whole base, no LoRA); `save_trained` writes only what trained (track2view/model/export.py).
Speed levers: track2view/model/speed.py. `attention="one_way"` (off by default: the paper uses full attention)
lets the source tokens attend only to the source (track2view/model/one_way.py), and `source_kv_cache()` then runs
inference steps on the target tokens only (track2view/model/source_kv.py).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from track2view.conditioning import build_conditioning, inputs_to, load_conditioning
from track2view.conditioning.hook import attach
from track2view.model.export import (CONDITIONING_SUBFOLDER, TRAINED_BASE_SUBFOLDER, ExportInfo, TrainedBase,
                                     base_fingerprint, plain_config, read_lora_state, read_trained_base, write_export)
from track2view.model.one_way import check_timestep_mode, set_attention
from track2view.model.source_kv import source_kv_cache
from track2view.model.speed import SpeedSettings, checkpoint_conditioning, configure_speed


@dataclass
class LoraSettings:
    rank: int = 64
    alpha: float = 64.0
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])

    @classmethod
    def coerce(cls, value: "LoraSettings | dict | None") -> "LoraSettings":
        if value is None or isinstance(value, cls):
            return value or cls()
        unknown = set(value) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown LoRA settings {sorted(unknown)}; known: {list(cls.__dataclass_fields__)}")
        return cls(**{**value, "target_modules": list(value.get("target_modules", cls().target_modules))})

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), init_lora_weights=True)


class Track2ViewTransformer(nn.Module):
    """Frozen `WanTransformer3DModel` + LoRA + a conditioning module of `conditioning` kind (module docstring).

    Trainable parameters (LoRA, conditioning) are kept in `trainable_dtype` (float32 master weights) whatever
    the base's dtype (load the base in bfloat16 with `torch_dtype` and train under bf16 autocast).
    """

    def __init__(self, transformer, conditioning: str = "tracks", conditioning_config: dict | None = None,
                 lora: LoraSettings | dict | None | bool = None, trainable_dtype: torch.dtype = torch.float32,
                 adapter_name: str = "default", attention: str = "full"):
        """lora: LoRA settings (None: the defaults) or False for no LoRA (a base trained as a whole, `train_base`).
        attention: "full" (the paper's) or "one_way" (source tokens attend to the source only; per-token
        timesteps)."""
        super().__init__()
        transformer.requires_grad_(False)
        self.transformer = transformer
        self.adapter_name = adapter_name
        self.trainable_dtype = trainable_dtype
        self.base_trains = False
        self.lora = None if lora is False else LoraSettings.coerce(lora)
        if self.lora is not None:
            self._add_lora(self.lora)
        token_dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        self.speed = SpeedSettings(checkpointing="none")
        self.set_conditioning(build_conditioning(conditioning, token_dim, conditioning_config))
        self.set_attention(attention)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, subfolder: str | None = "transformer",
                        torch_dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                        **kwargs) -> "Track2ViewTransformer":
        """Load the base Wan transformer from a diffusers directory (`subfolder`) and wrap it; kwargs go to __init__."""
        from diffusers import WanTransformer3DModel

        base = WanTransformer3DModel.from_pretrained(model_dir, subfolder=subfolder, torch_dtype=torch_dtype)
        return cls(base.to(device) if device is not None else base, **kwargs)

    @classmethod
    def from_config(cls, wan_config: dict, torch_dtype: torch.dtype | None = None, **kwargs) -> "Track2ViewTransformer":
        """A randomly initialised base built from a Wan config dict (tests, benchmarks)."""
        from diffusers import WanTransformer3DModel

        base = WanTransformer3DModel.from_config(wan_config)
        return cls(base.to(torch_dtype) if torch_dtype is not None else base, **kwargs)

    @classmethod
    def from_trained(cls, model_dir: str | os.PathLike, trained_dir: str | os.PathLike, info: ExportInfo | None = None,
                     torch_dtype: torch.dtype | None = None, device: torch.device | str | None = None
                     ) -> "Track2ViewTransformer":
        """Base model from `model_dir` (diffusers layout) + the export in `trained_dir` (its `info`, read if not
        given), ready for inference."""
        info = info or ExportInfo.read(trained_dir)
        base_dir, subfolder = (trained_dir, info.transformer) if info.transformer else (model_dir, "transformer")
        model = cls.from_pretrained(base_dir, subfolder=subfolder, torch_dtype=torch_dtype, device=device,
                                    conditioning=info.conditioning,
                                    conditioning_config=plain_config(info.conditioning_config),
                                    lora=False if info.lora is None else info.lora)
        return model.load_trained(trained_dir, info, base=not info.transformer)

    def set_conditioning(self, conditioning: nn.Module) -> None:
        """Use `conditioning` (a kind of track2view/conditioning/) from now on: placed and hooked in."""
        # nn.Module.to: ModelMixin.to warns about fp32-kept modules on any dtype cast; ours have none
        self.conditioning = nn.Module.to(conditioning, self.transformer.patch_embedding.weight.device,
                                         self.trainable_dtype)
        self.hook = attach(self.transformer.patch_embedding, self.conditioning)
        checkpoint_conditioning(self.conditioning, self.speed)

    def set_attention(self, attention: str) -> None:
        """Self-attention from now on: "full" or "one_way" (track2view/model/one_way.py)."""
        set_attention(self.transformer, attention)
        self.attention = attention

    def _add_lora(self, settings: LoraSettings) -> None:
        if self.adapter_name in getattr(self.transformer, "peft_config", {}):
            self.transformer.delete_adapters(self.adapter_name)
        self.transformer.add_adapter(settings.peft_config(), adapter_name=self.adapter_name)
        for name, p in self.transformer.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(self.trainable_dtype)
                p.requires_grad_(True)
        self.lora = settings

    # ---- what pipelines read from a transformer ----------------------------------------------------
    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.patch_embedding.weight.device

    @property
    def kind(self) -> str:
        return self.conditioning.kind

    def cache_context(self, name: str):
        """diffusers' cache context of the base (its step caches key their state by it)."""
        return self.transformer.cache_context(name)

    @contextlib.contextmanager
    def constant_conditioning(self):
        """Within the block, the conditioning tokens of the first call are reused by every later call (one
        re-render: every denoising step and CFG branch), for kinds whose tokens do not change over steps."""
        self.hook.reset_state(self.transformer.patch_embedding)
        self.hook.reuse_tokens = True
        try:
            yield
        finally:
            self.hook.reuse_tokens = False
            self.hook.reset_state(self.transformer.patch_embedding)

    def source_kv_cache(self):
        """Within the block, with one-way attention, every call runs only the target tokens through the blocks, over
        the source keys/values computed on the first call of each cache context (one re-render; calls inside
        `cache_context(name)`; the output's source half is then zeros). With full attention: no change."""
        if self.attention != "one_way":
            return contextlib.nullcontext()
        return source_kv_cache(self.transformer)

    def train_base(self) -> None:
        """Train every base parameter too (models trained from scratch: no pretrained base exists), in
        `trainable_dtype`; the export then carries the trained base (ExportInfo.transformer). Needs a model built
        without LoRA (`lora=False`): a LoRA over a base that trains too would only be exported as part of the base."""
        if self.lora is not None:
            raise ValueError("train_base needs a model without LoRA (build it with lora=False)")
        self.transformer.to(self.trainable_dtype).requires_grad_(True)
        self.base_trains = True

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def fingerprint(self) -> dict:
        return base_fingerprint(dict(self.transformer.config))

    # ---- forward --------------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                attention_kwargs: dict[str, Any] | None = None, **inputs) -> torch.Tensor:
        """hidden_states [B, C, 2F, h, w], timestep [B] or [B, S], encoder_hidden_states [B, L, text_dim], the
        conditioning's inputs by name (e.g. tracks=PairedTracks [B or 1, 2, F, N] at the latent frame rate,
        source_frame_mask=[B, F] bool) -> prediction [B, C, 2F, h, w] (a tensor, not a tuple)."""
        if hidden_states.dim() != 5:
            raise ValueError(f"hidden_states must be [B, C, 2F, h, w], got {tuple(hidden_states.shape)}")
        frames = hidden_states.shape[2] // self.config.patch_size[0]
        self.conditioning.check_inputs(inputs, hidden_states.shape[0], frames // 2)
        check_timestep_mode(self.attention, "per_token" if timestep.dim() == 2 else "per_sample")
        self.hook.inputs = inputs_to(inputs, hidden_states.device)
        try:
            return self.transformer(hidden_states=hidden_states, timestep=timestep,
                                    encoder_hidden_states=encoder_hidden_states, attention_kwargs=attention_kwargs,
                                    return_dict=False)[0]
        finally:
            self.hook.inputs = None

    # ---- speed levers -------------------------------------------------------------------------------
    def configure_speed(self, settings: SpeedSettings | dict) -> None:
        self.speed = settings if isinstance(settings, SpeedSettings) else SpeedSettings(**settings)
        configure_speed(self.transformer, self.conditioning, self.speed)

    # ---- save / load what trained ------------------------------------------------------------------
    def lora_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        if self.lora is None:
            return {}
        return get_peft_model_state_dict(self.transformer, adapter_name=self.adapter_name)

    def save_trained(self, directory: str | os.PathLike, **info) -> Path:
        """Write the export (track2view/model/export.py); `info`: ExportInfo fields beyond the model's own
        (latent_stride, num_tracks, training)."""
        export = ExportInfo(conditioning=self.kind, conditioning_config=plain_config(self.conditioning.config),
                            base_model=self.fingerprint(), lora=asdict(self.lora) if self.lora else None,
                            transformer=TRAINED_BASE_SUBFOLDER if self.base_trains else None,
                            attention=self.attention, **info)
        metadata = self.transformer.peft_config[self.adapter_name].to_dict() if self.lora else {}
        base = TrainedBase(self.transformer.state_dict(), dict(self.transformer.config)) if self.base_trains else None
        return write_export(directory, self.lora_state(), metadata, self.conditioning, export, base)

    def load_trained(self, directory: str | os.PathLike, info: ExportInfo | None = None,
                     base: bool = True) -> "Track2ViewTransformer":
        """Load an export into this model (in place; returns self): its conditioning, its LoRA and (`base`) the
        base weights it trained, if any. Raises ValueError when the export was trained for a different base
        model. LoRA, conditioning and attention are rebuilt to the export's settings."""
        directory = Path(directory)
        info = info or ExportInfo.read(directory)
        info.check_base(dict(self.transformer.config), "this model")
        if base and info.transformer:
            self.transformer.load_state_dict(read_trained_base(directory, info), strict=True)
        if info.lora is not None:
            self._load_lora(directory, info)
        self.set_conditioning(load_conditioning(info.conditioning, directory / CONDITIONING_SUBFOLDER))
        self.set_attention(info.attention)
        return self

    def _load_lora(self, directory: Path, info: ExportInfo) -> None:
        from peft.utils import set_peft_model_state_dict

        settings = LoraSettings.coerce(info.lora)
        if settings != self.lora:
            self._add_lora(settings)
        state = read_lora_state(directory)
        result = set_peft_model_state_dict(self.transformer, state, adapter_name=self.adapter_name)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{directory} holds LoRA weights this model does not have, e.g. {result.unexpected_keys[:3]}")
        loaded = {k.replace(".lora_A.", f".lora_A.{self.adapter_name}.").replace(
            ".lora_B.", f".lora_B.{self.adapter_name}.") for k in state}
        missing = [n for n, _ in self.transformer.named_parameters() if "lora_" in n and n not in loaded]
        if missing:
            raise ValueError(f"{directory} lacks LoRA weights, e.g. {missing[:3]}")
        for name, p in self.transformer.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(self.trainable_dtype)

