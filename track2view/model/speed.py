"""Training-speed levers for the 65K-token dual-view step, where self-attention is ~89% of the FLOPs.

* checkpointing="selective": blocks are checkpointed but the self-attention kernel outputs are kept, so the
  backward's recompute skips the attention (selective activation checkpointing), costing one [B, S, D]
  bf16 tensor per block (`selective_blocks=m`: only the first m blocks do so, the others recompute fully);
  `checkpoint_blocks=k` checkpoints only the first k blocks (the rest keep all their activations).
* the conditioning module is checkpointed whenever the blocks are (its activations would otherwise live
  through the whole DiT); the base can stay in bf16 (`torch_dtype`) with fp32 trainable master weights.
* ffn_chunk_tokens: the LoRA feed-forward runs as one op (`lora_ffn.py`) that saves only its input and whose
  backward recomputes the [tokens, ffn_dim] activations a chunk of tokens at a time.
* compile_blocks: each block's (checkpointed) call is compiled once and reused by all blocks.
* attention_backend: diffusers' `set_attention_backend` ("native", "_native_cudnn", "flash", ...).

`configure_speed(transformer, conditioning, settings)` applies them to a Wan transformer and its conditioning.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from track2view.model.flash_attn_4 import set_attention_backend
from track2view.model.lora_ffn import set_lean_ffn

CHECKPOINTING_MODES = ("none", "full", "selective")


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
    """The attention kernels' ops as autograd sees them (CUDA flash / efficient / cuDNN, CPU, flash-attn, and
    flash-attn-4 as track2view's op: without it, selective checkpointing recomputed FA4's attention, measured on
    the H200 as a 6% slower training step than SDPA's)."""
    names = [("aten", "_scaled_dot_product_flash_attention"), ("aten", "_scaled_dot_product_efficient_attention"),
             ("aten", "_scaled_dot_product_cudnn_attention"), ("aten", "_scaled_dot_product_flash_attention_for_cpu"),
             ("aten", "_flash_attention_forward"), ("aten", "_efficient_attention_forward"),
             ("flash_attn", "_flash_attn_forward"), ("flash_attn_3", "fwd"), ("track2view", "flash_attn_4")]
    ops = set()
    for namespace, name in names:
        try:
            ops.add(getattr(getattr(torch.ops, namespace), name).default)
        except (AttributeError, RuntimeError):
            pass  # kernel not built into this torch / package not installed
    return ops


def save_self_attention_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep the outputs of self-attention kernels; recompute everything else.

    Self-attention: query and key of equal shape, or one-way attention's target call (track2view/model/one_way.py:
    the keys are all tokens, twice the target queries). Cross-attention over 512 text tokens is cheap to recompute
    and is not kept.
    """
    if op in _ATTENTION_OPS and len(args) >= 2 and _is_self_attention(args[0].shape, args[1].shape):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _is_self_attention(query: torch.Size, key: torch.Size) -> bool:
    """Equal shapes, or shapes that differ in one axis only (the sequence), where the key is twice the query."""
    differ = [(q, k) for q, k in zip(query, key) if q != k]
    return len(query) == len(key) and (not differ or (len(differ) == 1 and differ[0][1] == 2 * differ[0][0]))


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



def configure_speed(transformer, conditioning, settings: SpeedSettings) -> None:
    """Apply `settings` to a `WanTransformer3DModel` (checkpointing, compile, attention backend, lean FFN) and
    checkpoint `conditioning` whenever the blocks are (if it supports gradient checkpointing)."""
    s = settings
    if s.attention_backend is not None:
        set_attention_backend(transformer, s.attention_backend)
    blocks = transformer.blocks
    if s.checkpointing == "none" or s.checkpoint_blocks == 0:
        transformer.disable_gradient_checkpointing()
        if s.compile_blocks:
            transformer.compile_repeated_blocks()
    else:
        transformer.enable_gradient_checkpointing(BlockCheckpointing(
            blocks, s.checkpointing == "selective", s.checkpoint_blocks, s.selective_blocks, s.compile_blocks))
        if s.compile_blocks and s.checkpoint_blocks is not None:  # the blocks that are not checkpointed
            for block in list(blocks)[s.checkpoint_blocks:]:
                block.compile()
    checkpoint_conditioning(conditioning, s)
    for block in blocks:
        set_lean_ffn(block.ffn, s.ffn_chunk_tokens)


def checkpoint_conditioning(conditioning, settings: SpeedSettings) -> None:
    """Recompute the conditioning in backward whenever the blocks are checkpointed (if it supports it)."""
    if not getattr(conditioning, "_supports_gradient_checkpointing", False):
        return
    if settings.checkpointing != "none" and settings.checkpoint_blocks != 0:
        conditioning.enable_gradient_checkpointing()
    else:
        conditioning.disable_gradient_checkpointing()
