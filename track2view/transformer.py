"""Track2ViewTransformer: frozen Wan-2.1 + peft LoRA + the dual-view track conditioner.

    hidden_states [B, 16, 2F, h, w] (source latents, then noisy target latents), tracks [B, 2, F, N]
    -> Wan's patch_embedding -> tokens [B, D, 2F, h/2, w/2] + conditioner(tokens, tracks)
    -> Wan's blocks, norm and projection -> prediction [B, 16, 2F, h, w]

The track tokens are added by a forward hook on `patch_embedding`, so diffusers' forward is used as is
(LoRA, gradient checkpointing, attention backends, compiled blocks and context parallelism keep working).
Only the LoRA and the conditioner train; `save_trained` writes only them (layout: docs/architecture.md,
"Trained checkpoint"), the LoRA in diffusers' format so that `WanPipeline.load_lora_weights(dir)` reads it.

Training-speed levers (`SpeedSettings`, `configure_speed`), for the 65K-token dual-view step where
self-attention is ~89% of the FLOPs:
* checkpointing="selective": blocks are checkpointed but the self-attention kernel outputs are kept, so the
  backward's recompute skips the attention (selective activation checkpointing), costing one [B, S, D]
  bf16 tensor per block (`selective_blocks=m`: only the first m blocks do so, the others recompute fully);
  `checkpoint_blocks=k` checkpoints only the first k blocks (the rest keep all their activations).
* the conditioner is checkpointed whenever the blocks are (its activations would otherwise live through
  the whole DiT); the base can stay in bf16 (`torch_dtype`) with fp32 LoRA/conditioner master weights.
* ffn_chunk_tokens: the LoRA feed-forward runs as one op (`lora_ffn`) that saves only its input and whose
  backward recomputes the [tokens, ffn_dim] activations a chunk of tokens at a time. The peak of a step is in
  the backward of the last block: all blocks' saved tensors plus that block's backward, where about seven
  [tokens, ffn_dim] tensors (7 x 1.1 GiB at 65K tokens, eager and compiled alike) dominated; this removes them.
* compile_blocks: each block's (checkpointed) call is compiled once and reused by all blocks.
* attention_backend: diffusers' `set_attention_backend` ("native", "_native_cudnn", "flash", ...).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .conditioner import DualViewTrackConditioner
from .tracks import PairedTracks

TRAINED_CONFIG_NAME = "track2view.json"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CONDITIONER_SUBFOLDER = "conditioner"
# The Wan config entries that decide whether a LoRA/conditioner fits a base model.
FINGERPRINT_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                    "text_dim", "freq_dim", "ffn_dim", "num_layers", "image_dim", "added_kv_proj_dim")
CHECKPOINTING_MODES = ("none", "full", "selective")


def base_fingerprint(config) -> dict:
    """The base-model settings an export must match (FINGERPRINT_KEYS of a Wan transformer config), JSON-typed."""
    return json.loads(json.dumps({k: config.get(k) for k in FINGERPRINT_KEYS}))  # tuples -> lists


def fingerprint_differences(trained: dict, base: dict) -> dict:
    """{key: (checkpoint value, base value)} for every fingerprint key on which the two disagree."""
    return {k: (trained.get(k), base.get(k)) for k in FINGERPRINT_KEYS if trained.get(k) != base.get(k)}


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


@dataclass
class SpeedSettings:
    checkpointing: str = "full"  # "none" | "full" | "selective" (keep self-attention outputs, recompute the rest)
    checkpoint_blocks: int | None = None  # checkpoint only the first k blocks; None = all
    compile_blocks: bool = False
    attention_backend: str | None = None  # None keeps diffusers' default (PyTorch SDPA)
    selective_blocks: int | None = None  # "selective": only the first m checkpointed blocks keep attention outputs
    ffn_chunk_tokens: int | None = None  # LoRA FFN as one op whose backward goes this many tokens at a time

    def __post_init__(self):
        if self.checkpointing not in CHECKPOINTING_MODES:
            raise ValueError(f"checkpointing must be one of {CHECKPOINTING_MODES}, got {self.checkpointing!r}")
        for name in ("checkpoint_blocks", "selective_blocks"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {getattr(self, name)}")
        if self.ffn_chunk_tokens is not None and self.ffn_chunk_tokens <= 0:
            raise ValueError(f"ffn_chunk_tokens must be > 0 or None, got {self.ffn_chunk_tokens}")


# ---- selective activation checkpointing ------------------------------------------------------------
def _attention_ops() -> set:
    """The attention kernels' ops as autograd sees them (CUDA flash / efficient / cuDNN, CPU, flash-attn)."""
    names = [("aten", "_scaled_dot_product_flash_attention"), ("aten", "_scaled_dot_product_efficient_attention"),
             ("aten", "_scaled_dot_product_cudnn_attention"), ("aten", "_scaled_dot_product_flash_attention_for_cpu"),
             ("aten", "_flash_attention_forward"), ("aten", "_efficient_attention_forward"),
             ("flash_attn", "_flash_attn_forward"), ("flash_attn_3", "fwd")]
    ops = set()
    for namespace, name in names:
        try:
            ops.add(getattr(getattr(torch.ops, namespace), name).default)
        except (AttributeError, RuntimeError):
            pass  # kernel not built into this torch / package not installed
    return ops


def save_self_attention_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep the outputs of self-attention kernels (query and key of equal shape); recompute everything else.

    Cross-attention over 512 text tokens is cheap to recompute and is not kept.
    """
    if op in _ATTENTION_OPS and len(args) >= 2 and args[0].shape == args[1].shape:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_ATTENTION_OPS = _attention_ops()


def _checkpointed_call(block: nn.Module, *args, selective: bool):
    context_fn = functools.partial(create_selective_checkpoint_contexts, save_self_attention_policy)
    kwargs = {"context_fn": context_fn} if selective else {}
    return checkpoint(block, *args, use_reentrant=False, **kwargs)


class BlockCheckpointing:
    """A `gradient_checkpointing_func` for diffusers' `enable_gradient_checkpointing`.

    Checkpoints the first `num_blocks` of `blocks` (all when None); with `selective`, the first
    `selective_blocks` of those (all when None) keep their self-attention outputs and the others are fully
    recomputed, a knob to trade the saved attention outputs' memory against the recompute. With `compile`,
    each kind of checkpointed call is compiled once (one graph shared by all blocks: parameters are inputs).
    """

    def __init__(self, blocks: nn.ModuleList, selective: bool, num_blocks: int | None = None,
                 selective_blocks: int | None = None, compile: bool = False):
        checkpointed = list(blocks)[:num_blocks]
        self.selective = {id(b) for b in checkpointed[:selective_blocks]} if selective else set()
        self.full = {id(b) for b in checkpointed} - self.selective
        wrap = torch.compile if compile else (lambda f: f)
        self.selective_call = wrap(functools.partial(_checkpointed_call, selective=True))
        self.full_call = wrap(functools.partial(_checkpointed_call, selective=False))

    def __call__(self, block, *args):
        if id(block) in self.selective:
            return self.selective_call(block, *args)
        if id(block) in self.full:
            return self.full_call(block, *args)
        return block(*args)


# ---- memory-lean LoRA feed-forward ------------------------------------------------------------------
# Wan's FFN is Linear(D -> ffn_dim) + GELU(tanh) + Linear(ffn_dim -> D), both with LoRA. In a checkpointed
# block's backward, autograd (and inductor's compiled backward alike) holds about seven [tokens, ffn_dim]
# tensors at once (the recomputed hidden, its GELU, the LoRA branches, their gradients, peft's float32 cast):
# 7 x 1.1 GiB at 65K tokens, the largest part of the step's peak. `lora_ffn` computes the same function as one
# opaque op whose backward recomputes the hidden activations `chunk` tokens at a time, so only a few
# [chunk, ffn_dim] tensors ever exist in backward; the forward saves nothing but its input. Hand-written
# because neither peft nor diffusers offers a token-chunked backward (and inductor cannot be told to chunk).
def _lora_linear(x, weight, bias, lora_a, lora_b, scale: float):
    """x [M, in] -> (x W^T + b + scale (x A^T) B^T [M, out] (peft's vanilla LoRA, the LoRA term accumulated in
    place instead of through a temporary), x A^T [M, r]), in x's dtype."""
    down = nn.functional.linear(x, lora_a)
    return nn.functional.linear(x, weight, bias).addmm_(down, lora_b.t(), alpha=scale), down


def _lora_ffn_impl(x, w1, b1, a1, bb1, w2, b2, a2, bb2, s1: float, s2: float, approximate: str, chunk: int):
    with torch.autocast(x.device.type, enabled=False):
        pre = _lora_linear(x.reshape(-1, x.shape[-1]), w1, b1, a1, bb1, s1)[0]
        hidden = torch.ops.aten.gelu_(pre, approximate=approximate)  # in place: one [tokens, ffn_dim] tensor
        return _lora_linear(hidden, w2, b2, a2, bb2, s2)[0].reshape(*x.shape[:-1], w2.shape[0])


def _lora_ffn_backward_impl(grad, x, w1, b1, a1, bb1, w2, a2, bb2, s1: float, s2: float, approximate: str,
                            chunk: int):
    """-> gradients of x, lora_a1, lora_b1, lora_a2, lora_b2 (the base weights are frozen), chunk by chunk."""
    x2, grad2 = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    grad_x = torch.empty_like(x2)
    acc = [torch.zeros(p.shape, device=x.device, dtype=torch.float32) for p in (a1, bb1, a2, bb2)]
    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, x2.shape[0], chunk):
            xc, gy = x2[start:start + chunk], grad2[start:start + chunk]
            pre, down1 = _lora_linear(xc, w1, b1, a1, bb1, s1)  # [m, ffn_dim], [m, r]
            hidden = nn.functional.gelu(pre, approximate=approximate)
            down2 = nn.functional.linear(hidden, a2)  # [m, r]
            grad_down2 = (gy @ bb2).mul_(s2)  # [m, r]
            acc[3] += (gy.t() @ down2).float().mul_(s2)  # lora_b2 [D, r]
            acc[2] += (grad_down2.t() @ hidden).float()  # lora_a2 [r, ffn_dim]
            del hidden, down2
            grad_hidden = (gy @ w2).addmm_(grad_down2, a2)  # [m, ffn_dim]
            grad_pre = torch.ops.aten.gelu_backward(grad_hidden, pre, approximate=approximate)
            del grad_hidden, pre
            grad_down1 = (grad_pre @ bb1).mul_(s1)  # [m, r]
            acc[1] += (grad_pre.t() @ down1).float().mul_(s1)  # lora_b1 [ffn_dim, r]
            acc[0] += (grad_down1.t() @ xc).float()  # lora_a1 [r, D]
            grad_x[start:start + chunk] = (grad_pre @ w1).addmm_(grad_down1, a1)
    return grad_x.reshape(x.shape), *(g.to(p.dtype) for g, p in zip(acc, (a1, bb1, a2, bb2)))


_FFN_ARGS = ("Tensor x, Tensor w1, Tensor? b1, Tensor a1, Tensor bb1, Tensor w2, {b2}Tensor a2, Tensor bb2, "
             "float s1, float s2, str approximate, int chunk")
lora_ffn = torch.library.custom_op("track2view::lora_ffn", _lora_ffn_impl, mutates_args=(),
                                   schema=f"({_FFN_ARGS.format(b2='Tensor? b2, ')}) -> Tensor")
_lora_ffn_backward = torch.library.custom_op(
    "track2view::lora_ffn_backward", _lora_ffn_backward_impl, mutates_args=(),
    schema=f"(Tensor grad, {_FFN_ARGS.format(b2='')}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


@lora_ffn.register_fake
def _lora_ffn_fake(x, w1, b1, a1, bb1, w2, b2, a2, bb2, s1, s2, approximate, chunk):
    return x.new_empty(*x.shape[:-1], w2.shape[0])


@_lora_ffn_backward.register_fake
def _lora_ffn_backward_fake(grad, x, w1, b1, a1, bb1, w2, a2, bb2, s1, s2, approximate, chunk):
    return x.new_empty(x.shape), *(p.new_empty(p.shape) for p in (a1, bb1, a2, bb2))


def _lora_ffn_setup(ctx, inputs, output):
    x, w1, b1, a1, bb1, w2, _, a2, bb2, *ctx.scalars = inputs
    ctx.save_for_backward(x, w1, b1, a1, bb1, w2, a2, bb2)


def _lora_ffn_backward_rule(ctx, grad):
    grad_x, ga1, gb1, ga2, gb2 = _lora_ffn_backward(grad, *ctx.saved_tensors, *ctx.scalars)
    return grad_x, None, None, ga1, gb1, None, None, ga2, gb2, None, None, None, None


lora_ffn.register_autograd(_lora_ffn_backward_rule, setup_context=_lora_ffn_setup)


def _vanilla_lora(layer: nn.Module):
    """(base Linear, lora_A, lora_B, scaling) of a peft LoRA Linear with one plain active adapter, else None."""
    adapters = getattr(layer, "active_adapters", None)
    if (adapters is None or len(adapters) != 1 or layer.merged or layer.disable_adapters
            or adapters[0] not in layer.lora_A or adapters[0] in getattr(layer, "lora_variant", {})):
        return None
    name = adapters[0]
    dropout = layer.lora_dropout[name]
    if not isinstance(dropout, nn.Identity) and dropout.p > 0:
        return None
    return layer.base_layer, layer.lora_A[name], layer.lora_B[name], float(layer.scaling[name])


def lean_ffn_forward(ffn: nn.Module, hidden_states: torch.Tensor, chunk: int, original) -> torch.Tensor:
    """diffusers' `FeedForward` (GELU(proj) -> Dropout -> Linear, LoRA on both linears) via `lora_ffn` when
    training; `original` (its own forward) otherwise or when the layers are not plain single-adapter LoRA."""
    act, drop, out = ffn.net[0], ffn.net[1], ffn.net[2]
    first, second = _vanilla_lora(act.proj), _vanilla_lora(out)
    if (not torch.is_grad_enabled() or first is None or second is None or (drop.training and drop.p > 0)
            or any(p.requires_grad for p in (first[0].weight, second[0].weight))):
        return original(hidden_states)
    device_type = hidden_states.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden_states.dtype

    def cast(t):
        return None if t is None else t.to(dtype)

    (base1, a1, b1, s1), (base2, a2, b2, s2) = first, second
    return lora_ffn(cast(hidden_states), cast(base1.weight), cast(base1.bias), cast(a1.weight), cast(b1.weight),
                    cast(base2.weight), cast(base2.bias), cast(a2.weight), cast(b2.weight), s1, s2,
                    act.approximate, chunk)


class _LeanFeedForward:
    """Mixin in front of a diffusers `FeedForward` class: training forward through `lora_ffn` (`set_lean_ffn`)."""
    ffn_chunk_tokens: int

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return lean_ffn_forward(self, hidden_states, self.ffn_chunk_tokens,
                                lambda h: super(_LeanFeedForward, self).forward(h, *args, **kwargs))


@functools.cache
def _lean_class(cls: type) -> type:
    return type(f"Lean{cls.__name__}", (_LeanFeedForward, cls), {"plain_class": cls})


def set_lean_ffn(ffn: nn.Module, chunk_tokens: int | None) -> None:
    """Switch a block's FeedForward to the lean LoRA op (backward `chunk_tokens` tokens at a time) or back (None).

    The module's class is swapped rather than its forward patched per instance, so that compiled blocks
    still share one graph (and parameter names, hence state dicts, do not change).
    """
    if isinstance(ffn, _LeanFeedForward):
        ffn.__class__ = ffn.plain_class
        del ffn.ffn_chunk_tokens
    if chunk_tokens is not None:
        ffn.__class__ = _lean_class(type(ffn))
        ffn.ffn_chunk_tokens = chunk_tokens


# ---- the model ----------------------------------------------------------------------------------------
class Track2ViewTransformer(nn.Module):
    """Frozen `WanTransformer3DModel` + LoRA + `DualViewTrackConditioner` (module docstring).

    Trainable parameters (LoRA, conditioner) are kept in `trainable_dtype` (float32 master weights) whatever
    the base's dtype (load the base in bfloat16 with `torch_dtype` and train under bf16 autocast).
    """

    def __init__(self, transformer, conditioner_config: dict | None = None, lora: LoraSettings | dict | None = None,
                 trainable_dtype: torch.dtype = torch.float32, adapter_name: str = "default"):
        super().__init__()
        transformer.requires_grad_(False)
        self.transformer = transformer
        self.adapter_name = adapter_name
        self.trainable_dtype = trainable_dtype
        self.lora = LoraSettings.coerce(lora)
        self._add_lora(self.lora)
        token_dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        conditioner_config = dict(conditioner_config or {})
        if conditioner_config.setdefault("token_dim", token_dim) != token_dim:
            raise ValueError(f"conditioner token_dim {conditioner_config['token_dim']} must equal the base model's "
                             f"width {token_dim}")
        self.conditioner = self._placed(DualViewTrackConditioner(**conditioner_config))
        self.speed = SpeedSettings(checkpointing="none")
        self._condition: tuple[PairedTracks, torch.Tensor | None] | None = None
        transformer.patch_embedding.register_forward_hook(self._add_track_tokens)

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

    def _placed(self, conditioner: DualViewTrackConditioner) -> DualViewTrackConditioner:
        # nn.Module.to: ModelMixin.to warns about fp32-kept modules on any dtype cast; the conditioner has none
        return nn.Module.to(conditioner, self.transformer.patch_embedding.weight.device, self.trainable_dtype)

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

    def cache_context(self, name: str):
        return self.transformer.cache_context(name)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def fingerprint(self) -> dict:
        return base_fingerprint(dict(self.transformer.config))

    # ---- forward --------------------------------------------------------------------------------------
    def _add_track_tokens(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        if self._condition is None:  # called as a bare Wan transformer (e.g. a pipeline without tracks)
            return output
        tracks, source_frame_mask = self._condition
        b = output.shape[0]
        if tracks.valid.shape[0] == 1 and b > 1:  # one set of tracks for a batch (e.g. cond + uncond)
            tracks = PairedTracks(*(t.expand(b, *t.shape[1:]) for t in (tracks.uv, tracks.depth, tracks.valid)))
        return output + self.conditioner(output, tracks, source_frame_mask, patch_bias=module.bias)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                tracks: PairedTracks, source_frame_mask: torch.Tensor | None = None,
                attention_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
        """hidden_states [B, C, 2F, h, w], timestep [B] or [B, S], encoder_hidden_states [B, L, text_dim],
        tracks [B or 1, 2, F, N] at the latent frame rate -> prediction [B, C, 2F, h, w] (a tensor, not a tuple).

        source_frame_mask [B, F] bool: False where source-frame dropout zeroed a latent frame.
        """
        if hidden_states.dim() != 5:
            raise ValueError(f"hidden_states must be [B, C, 2F, h, w], got {tuple(hidden_states.shape)}")
        if not isinstance(tracks, PairedTracks) or not tracks.batched:
            raise ValueError("tracks must be batched PairedTracks [B, 2, F, N] (use PairedTracks.stack or "
                             "add a leading axis)")
        frames = hidden_states.shape[2] // self.config.patch_size[0]
        if tracks.num_frames * 2 != frames or tracks.valid.shape[0] not in (1, hidden_states.shape[0]):
            raise ValueError(f"tracks {tuple(tracks.depth.shape)} must be [B={hidden_states.shape[0]} or 1, 2, "
                             f"F={frames // 2}, N] for hidden_states {tuple(hidden_states.shape)} (source + target "
                             f"frames); subsample tracks to the latent frame rate with PairedTracks.at_latent_stride")
        self._condition = (tracks.to(hidden_states.device), source_frame_mask)
        try:
            return self.transformer(hidden_states=hidden_states, timestep=timestep,
                                    encoder_hidden_states=encoder_hidden_states, attention_kwargs=attention_kwargs,
                                    return_dict=False)[0]
        finally:
            self._condition = None

    # ---- speed levers -------------------------------------------------------------------------------
    def enable_gradient_checkpointing(self, mode: str = "full", num_blocks: int | None = None,
                                      selective_blocks: int | None = None, compile: bool = False) -> None:
        """Checkpoint Wan's blocks ("full" or "selective", the first `num_blocks` or all) and the conditioner."""
        self.configure_speed(SpeedSettings(checkpointing=mode, checkpoint_blocks=num_blocks,
                                           selective_blocks=selective_blocks, compile_blocks=compile,
                                           attention_backend=self.speed.attention_backend,
                                           ffn_chunk_tokens=self.speed.ffn_chunk_tokens))

    def disable_gradient_checkpointing(self) -> None:
        self.configure_speed(SpeedSettings(checkpointing="none", compile_blocks=self.speed.compile_blocks,
                                           attention_backend=self.speed.attention_backend,
                                           ffn_chunk_tokens=self.speed.ffn_chunk_tokens))

    def set_attention_backend(self, backend: str) -> None:
        self.transformer.set_attention_backend(backend)
        self.speed.attention_backend = backend

    def configure_speed(self, settings: SpeedSettings | dict) -> None:
        s = settings if isinstance(settings, SpeedSettings) else SpeedSettings(**settings)
        if s.attention_backend is not None:
            self.transformer.set_attention_backend(s.attention_backend)
        blocks = self.transformer.blocks
        if s.checkpointing == "none" or s.checkpoint_blocks == 0:
            self.transformer.disable_gradient_checkpointing()
            self.conditioner.disable_gradient_checkpointing()
            if s.compile_blocks:
                self.transformer.compile_repeated_blocks()
        else:
            func = BlockCheckpointing(blocks, s.checkpointing == "selective", s.checkpoint_blocks, s.selective_blocks,
                                      s.compile_blocks)
            self.transformer.enable_gradient_checkpointing(func)
            self.conditioner.enable_gradient_checkpointing()
            if s.compile_blocks and s.checkpoint_blocks is not None:  # the blocks that are not checkpointed
                for block in list(blocks)[s.checkpoint_blocks:]:
                    block.compile()
        for block in blocks:
            set_lean_ffn(block.ffn, s.ffn_chunk_tokens)
        self.speed = s

    # ---- save / load what trained ------------------------------------------------------------------
    def save_trained(self, directory: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write the LoRA (diffusers format + adapter metadata), the conditioner and track2view.json.

        `extra` (latent stride, number of tracks, training config excerpt, ...) goes into track2view.json.
        Written to a temporary sibling directory and swapped in, so a crash never leaves half an export.
        """
        from diffusers import WanPipeline
        from peft.utils import get_peft_model_state_dict

        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            lora_state = get_peft_model_state_dict(self.transformer, adapter_name=self.adapter_name)
            WanPipeline.save_lora_weights(
                tmp, transformer_lora_layers=lora_state, weight_name=LORA_WEIGHT_NAME,
                transformer_lora_adapter_metadata=self.transformer.peft_config[self.adapter_name].to_dict())
            self.conditioner.save_pretrained(tmp / CONDITIONER_SUBFOLDER)
            meta = {"format": 1, "base_model": self.fingerprint(), "lora": asdict(self.lora),
                    "conditioner": dict(self.conditioner.config), **(extra or {})}
            (tmp / TRAINED_CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str))
            old = directory.with_name(f".{directory.name}.old{os.getpid()}")
            if directory.exists():
                os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @staticmethod
    def read_trained_config(directory: str | os.PathLike) -> dict:
        path = Path(directory) / TRAINED_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a Track2View export "
                                    f"(written by Track2ViewTransformer.save_trained)")
        return json.loads(path.read_text())

    def load_trained(self, directory: str | os.PathLike) -> "Track2ViewTransformer":
        """Load an export written by `save_trained` into this model (in place; returns self).

        Raises ValueError when the export was trained for a different base model. The LoRA is rebuilt
        when the export's LoRA settings differ from the current ones.
        """
        from diffusers import WanPipeline
        from peft.utils import set_peft_model_state_dict

        directory = Path(directory)
        meta = self.read_trained_config(directory)
        diff = fingerprint_differences(meta["base_model"], self.fingerprint())
        if diff:
            raise ValueError(f"checkpoint {directory} was trained for {meta['base_model']} but base model is "
                             f"{self.fingerprint()} (differs in {sorted(diff)}: checkpoint vs base {diff})")
        settings = LoraSettings.coerce(meta["lora"])
        if settings != self.lora:
            self._add_lora(settings)
        state = WanPipeline.lora_state_dict(directory, weight_name=LORA_WEIGHT_NAME)
        prefix = "transformer."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        result = set_peft_model_state_dict(self.transformer, state, adapter_name=self.adapter_name)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{directory / LORA_WEIGHT_NAME} holds LoRA weights this model does not have, e.g. "
                             f"{result.unexpected_keys[:3]}")
        loaded = {k.replace(".lora_A.", f".lora_A.{self.adapter_name}.").replace(
            ".lora_B.", f".lora_B.{self.adapter_name}.") for k in state}
        missing = [n for n, _ in self.transformer.named_parameters() if "lora_" in n and n not in loaded]
        if missing:
            raise ValueError(f"{directory / LORA_WEIGHT_NAME} lacks LoRA weights, e.g. {missing[:3]}")
        self.conditioner = self._placed(DualViewTrackConditioner.from_pretrained(directory / CONDITIONER_SUBFOLDER))
        if self.speed.checkpointing != "none":
            self.conditioner.enable_gradient_checkpointing()
        for name, p in self.transformer.named_parameters():
            if "lora_" in name:
                p.data = p.data.to(self.trainable_dtype)
        return self

    @classmethod
    def from_trained(cls, model_dir: str | os.PathLike, trained_dir: str | os.PathLike,
                     torch_dtype: torch.dtype | None = None, device: torch.device | str | None = None
                     ) -> "Track2ViewTransformer":
        """Base model from `model_dir` (diffusers layout) + the export in `trained_dir`, ready for inference."""
        meta = cls.read_trained_config(trained_dir)
        model = cls.from_pretrained(model_dir, torch_dtype=torch_dtype, device=device,
                                    conditioner_config={k: v for k, v in meta["conditioner"].items()
                                                        if not k.startswith("_")},
                                    lora=meta["lora"])
        return model.load_trained(trained_dir)
