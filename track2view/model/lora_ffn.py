"""A memory-lean LoRA feed-forward for training: one op whose backward recomputes its activations in chunks.

Wan's FFN is Linear(D -> ffn_dim) + GELU(tanh) + Linear(ffn_dim -> D), both with LoRA. In a checkpointed
block's backward, autograd (and inductor's compiled backward alike) holds about seven [tokens, ffn_dim]
tensors at once (the recomputed hidden, its GELU, the LoRA branches, their gradients, peft's float32 cast):
7 x 1.1 GiB at 65K tokens, the largest part of the step's peak. `lora_ffn` computes the same function as one
opaque op whose backward recomputes the hidden activations `chunk` tokens at a time, so only a few
[chunk, ffn_dim] tensors ever exist in backward; the forward saves nothing but its input. Hand-written
because neither peft nor diffusers offers a token-chunked backward (and inductor cannot be told to chunk).
"""

from __future__ import annotations

import functools

import torch
from torch import nn


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

