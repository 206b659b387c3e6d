"""flash-attn-4 from PyPI (`pip install flash-attn-4`, the CuTe-DSL FlashAttention) as diffusers' `flash_4_hub`
attention backend, without the Hugging Face Hub.

diffusers names FlashAttention-4 `flash_4_hub` and fetches its kernel from the Hub through the `kernels` package at
`set_attention_backend` time; a cluster without network (or without `kernels`) cannot. The same kernel ships on
PyPI as `flash_attn.cute`. `set_attention_backend(transformer, name)` is the project's one entry for a backend
name: for `flash_4_hub` with `flash_attn.cute` importable it hands diffusers' backend the local kernel (its
registry's `kernel_fn`, which diffusers otherwise downloads) and sets the backend on every attention processor as
diffusers' method does, skipping only its check for `kernels`, the downloader this replaces. Any other name, or
`flash_4_hub` without the PyPI package, goes to diffusers' `set_attention_backend` as it is.
`default_backend(on_cuda, dtype)` is the backend inference and training use when none is named: this one wherever
it can run (one H200: 1.13x SDPA's 480p re-render loop and training step, docs/benchmarks.md), else SDPA.

The kernel runs as one custom op, `track2view::flash_attn_4` (q, k, v [B, S, H, D] -> out [B, S, H, Dv] and the
log-sum-exp [B, H, S]): opaque to torch.compile (its fake implementation gives the shapes), with FA4's backward
as its autograd formula through a second op, `track2view::flash_attn_4_backward`: AOTAutograd traces the autograd
formula into the compiled backward graph with fake tensors, which the raw kernel cannot take (a compiled training
step failed on the H200 with "Cannot access data pointer of Tensor" before the backward was an op of its own).
"""

from __future__ import annotations

import math

import torch

BACKEND = "flash_4_hub"
COMPUTE_CAPABILITIES = (9, 10, 11, 12)  # the major versions FA4 has kernels for (Hopper, Blackwell)


def _kernels():
    """FA4's forward and backward functions; ImportError when flash-attn-4 is not installed."""
    from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd

    return _flash_attn_fwd, _flash_attn_bwd


def available() -> bool:
    try:
        _kernels()
    except ImportError:
        return False
    return True


def default_backend(on_cuda: bool, dtype: torch.dtype) -> str | None:
    """`flash_4_hub` where flash-attn-4 is installed, attention runs on a CUDA GPU it has kernels for and in
    bf16/fp16 (the dtypes it takes); else None: diffusers' default, PyTorch SDPA. Exact as SDPA is (max abs
    difference 2.4e-4 in bf16 on the H200, one rounding step, as SDPA's own flash kernel)."""
    if not (on_cuda and dtype in (torch.bfloat16, torch.float16) and available()):
        return None
    return BACKEND if torch.cuda.get_device_capability()[0] in COMPUTE_CAPABILITIES else None


@torch.library.custom_op("track2view::flash_attn_4", mutates_args=())
def flash_attn_4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Sq, H, D], k [B, Sk, H, D], v [B, Sk, H, Dv] (bf16/fp16, CUDA) -> (out [B, Sq, H, Dv], lse [B, H, Sq])."""
    forward, _ = _kernels()
    out, lse = forward(q, k, v, softmax_scale=scale, return_lse=True)[:2]
    return out, lse


@flash_attn_4.register_fake
def _(q, k, v, scale):
    b, sq, h, _ = q.shape
    return q.new_empty(b, sq, h, v.shape[-1]), q.new_empty(b, h, sq, dtype=torch.float32)


@torch.library.custom_op("track2view::flash_attn_4_backward", mutates_args=())
def flash_attn_4_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                          grad_out: torch.Tensor, lse: torch.Tensor, scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FA4's backward: the forward's inputs, its (out, lse) and d out [B, Sq, H, Dv] -> (dq, dk, dv)."""
    _, backward = _kernels()
    dq, dk, dv = backward(q, k, v, out, grad_out.contiguous(), lse, scale)[:3]
    return dq, dk, dv


@flash_attn_4_backward.register_fake
def _(q, k, v, out, grad_out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, *output)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    return *flash_attn_4_backward(q, k, v, out, grad_out, lse, ctx.scale), None


flash_attn_4.register_autograd(_backward, setup_context=_setup_context)


def attend(q, k, v, softmax_scale: float | None = None, causal: bool = False):
    """The signature diffusers' `flash_4_hub` backend calls its kernel with -> (out, lse)."""
    if causal:
        raise ValueError("track2view's flash-attn-4 adapter is non-causal (Wan's attention is)")
    return flash_attn_4(q, k, v, softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1]))


def set_attention_backend(transformer, name: str) -> None:
    """`transformer.set_attention_backend(name)`, with `flash_4_hub` served by PyPI's flash-attn-4 when installed."""
    if name.lower() != BACKEND or not available():
        transformer.set_attention_backend(name)
        return
    from diffusers.models.attention_dispatch import (_HUB_KERNELS_REGISTRY, AttentionBackendName,
                                                     _AttentionBackendRegistry)

    from diffusers.models.attention import AttentionModuleMixin

    processors = [m.processor for m in transformer.modules()
                  if isinstance(m, AttentionModuleMixin) and hasattr(m.processor, "_attention_backend")]
    if any(getattr(p, "_parallel_config", None) is not None for p in processors):
        raise ValueError(f"{BACKEND} has no context-parallel support in diffusers; choose _native_cudnn for "
                         f"ring attention or PyTorch SDPA for Ulysses")
    backend = AttentionBackendName(BACKEND)
    _HUB_KERNELS_REGISTRY[backend].kernel_fn = attend
    for processor in processors:
        processor._attention_backend = backend
    _AttentionBackendRegistry.set_active_backend(backend)
