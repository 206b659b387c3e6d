"""flash-attn-4 as diffusers' `flash_4_hub` backend (track2view/model/flash_attn_4.py). The CuTe kernel needs a
Hopper/Blackwell GPU, so on CPU it is stood in for by exact math attention with FA4's signatures (the third-party
kernel, not our code, is what is replaced): the op's fake, autograd and compile registrations, the routing through
diffusers' dispatch to every processor (one-way too), and the fallback to diffusers when the package is missing."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName, _AttentionBackendRegistry

from test_one_way_attention import inputs, model
from track2view.model import flash_attn_4


def math_attention(q, k, v, scale):
    """[B, S, H, D] -> (out [B, S, H, D], lse [B, H, S]) accumulated in (at least) float32, as FA4 defines them."""
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * scale
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.to(acc)).to(q.dtype)
    return out.contiguous(), scores.logsumexp(-1).float()


def stand_in_forward(q, k, v, softmax_scale=None, return_lse=False):
    return (*math_attention(q, k, v, softmax_scale), None, None, None)


def stand_in_backward(q, k, v, out, dout, lse, softmax_scale):
    _, vjp = torch.func.vjp(lambda *qkv: math_attention(*qkv, softmax_scale)[0], q, k, v)
    return vjp(dout)


@pytest.fixture
def stand_in_kernel(monkeypatch):
    """FA4 'installed' as math attention; diffusers' registry and active backend restored afterwards."""
    monkeypatch.setattr(flash_attn_4, "_kernels", lambda: (stand_in_forward, stand_in_backward))
    config = _HUB_KERNELS_REGISTRY[AttentionBackendName.FLASH_4_HUB]
    monkeypatch.setattr(config, "kernel_fn", config.kernel_fn)
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)


def qkv(seed=0, shape=(2, 12, 2, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def test_op_registrations_pass_opcheck(stand_in_kernel):
    """Schema, fake (shapes for torch.compile), autograd and AOT registrations of the custom op agree."""
    torch.library.opcheck(flash_attn_4.flash_attn_4, (*qkv(), 0.3))


def test_op_gradients_are_the_kernels(stand_in_kernel):
    q, k, v = qkv()
    out, _ = flash_attn_4.attend(q, k, v)  # default scale 1 / sqrt(D)
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    torch.testing.assert_close(grads, torch.autograd.grad(ref.square().sum(), (q, k, v)))
    with pytest.raises(ValueError, match="non-causal"):
        flash_attn_4.attend(q, k, v, causal=True)


@pytest.mark.parametrize("attention", ["full", "one_way"])
@torch.no_grad()
def test_flash_4_hub_backend_runs_the_local_kernel_in_every_processor(stand_in_kernel, monkeypatch, attention):
    calls = []
    monkeypatch.setattr(flash_attn_4, "flash_attn_4", lambda *a: calls.append(a[0].shape) or math_attention(*a))
    m = model(attention)
    x, t, text, tracks = inputs()
    reference = m(x, t, text, tracks=tracks)
    flash_attn_4.set_attention_backend(m.transformer, "flash_4_hub")
    processors = [b.attn1.processor for b in m.transformer.blocks] + [b.attn2.processor for b in m.transformer.blocks]
    assert {p._attention_backend for p in processors} == {AttentionBackendName.FLASH_4_HUB}
    torch.testing.assert_close(m(x, t, text, tracks=tracks), reference, rtol=1e-4, atol=1e-4)
    per_block = 3 if attention == "one_way" else 2  # self-attention (one-way: source, target), cross-attention
    assert len(calls) == per_block * len(m.transformer.blocks)


@pytest.mark.skipif(importlib.util.find_spec("kernels") is not None, reason="the `kernels` package is installed")
def test_without_flash_attn_4_diffusers_decides(monkeypatch):
    """No PyPI flash-attn-4: diffusers' own method runs, and says what it needs for the Hub kernel."""
    def missing():
        raise ImportError("No module named 'flash_attn'")

    monkeypatch.setattr(flash_attn_4, "_kernels", missing)
    with pytest.raises(RuntimeError, match="kernels"):
        flash_attn_4.set_attention_backend(model().transformer, "flash_4_hub")
