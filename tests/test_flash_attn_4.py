"""flash-attn-4 as diffusers' `flash_4_hub` backend (track2view/model/flash_attn_4.py). The CuTe kernel needs a
Hopper/Blackwell GPU, so on CPU it is stood in for by exact math attention with FA4's signatures (the third-party
kernel, not our code, is what is replaced): the op's fake, autograd and compile registrations, the routing through
diffusers' dispatch to every processor (one-way too), and the fallback to diffusers when the package is missing."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName, _AttentionBackendRegistry
from torch._subclasses.fake_tensor import is_fake

from test_one_way_attention import inputs, model, pipeline
from track2view.inference.speed import SpeedOptions, apply_speed_options
from track2view.model import flash_attn_4
from track2view.model.speed import SpeedSettings


def math_attention(q, k, v, scale):
    """[B, S, H, D] -> (out [B, S, H, D], lse [B, H, S]) accumulated in (at least) float32, as FA4 defines them."""
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * scale
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.to(acc)).to(q.dtype)
    return out.contiguous(), scores.logsumexp(-1).float()


def refuse_traced(*tensors):
    """The real kernel reads data pointers: a fake tensor (torch.compile's tracing) fails in it, as here."""
    if any(is_fake(t) for t in tensors):
        raise RuntimeError("Cannot access data pointer of Tensor (e.g. FakeTensor, FunctionalTensor)")


def stand_in_forward(q, k, v, softmax_scale=None, return_lse=False):
    refuse_traced(q, k, v)
    return (*math_attention(q, k, v, softmax_scale), None, None, None)


def stand_in_backward(q, k, v, out, dout, lse, softmax_scale):
    """Softmax attention's backward from the forward's out (FA4's also reads the float32 log-sum-exp; here the
    probabilities are recomputed in the inputs' precision, so float64 gradients check exactly)."""
    refuse_traced(q, k, v, out, dout, lse)
    acc = torch.promote_types(q.dtype, torch.float32)
    qa, ka, va, out, dout = (x.to(acc) for x in (q, k, v, out, dout))
    probs = (torch.einsum("bqhd,bkhd->bhqk", qa, ka) * softmax_scale).softmax(-1)
    row = torch.einsum("bqhd,bqhd->bhq", dout, out)[..., None]
    dscores = probs * (torch.einsum("bqhd,bkhd->bhqk", dout, va) - row) * softmax_scale
    grads = (torch.einsum("bhqk,bkhd->bqhd", dscores, ka), torch.einsum("bhqk,bqhd->bkhd", dscores, qa),
             torch.einsum("bhqk,bqhd->bkhd", probs, dout))
    return tuple(torch.empty_like(x).copy_(g) for x, g in zip((q, k, v), grads))  # FA4: empty_like(q) ...


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
    q, k, v = (x.detach() for x in qkv())  # no double backward (FA4 has none)
    out, lse = math_attention(q, k, v, 0.3)
    torch.library.opcheck(flash_attn_4.flash_attn_4_backward, (q, k, v, out, torch.randn_like(out), lse, 0.3))


def test_compiled_forward_and_backward_keep_the_kernel_out_of_the_trace(stand_in_kernel):
    """torch.compile traces the forward and the autograd formula with fake tensors; both kernels are ops it does not
    enter (the H200's compiled training step failed in FA4's backward before it was one)."""
    q, k, v = qkv()
    loss = torch.compile(lambda *x: flash_attn_4.attend(*x)[0].square().sum(), backend="aot_eager", fullgraph=True)
    grads = torch.autograd.grad(loss(q, k, v), (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(grads, torch.autograd.grad(ref.square().sum(), (q, k, v)))


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


@pytest.mark.parametrize("checkpointing, self_attention_calls", [("full", 4), ("selective", 2)])
def test_selective_checkpointing_keeps_the_kernels_self_attention(stand_in_kernel, monkeypatch, checkpointing,
                                                                   self_attention_calls):
    """"selective" saves FA4's self-attention outputs as it saves SDPA's: the backward's recompute (2 blocks) does
    not run the kernel again; "full" does. Gradients equal the default backend's."""
    calls = []
    counting = lambda q, k, v, **kw: calls.append(q.shape == k.shape) or stand_in_forward(q, k, v, **kw)
    monkeypatch.setattr(flash_attn_4, "_kernels", lambda: (counting, stand_in_backward))
    x, t, text, tracks = inputs()
    reference, m = model("full").train(), model("full").train()
    reference(x, t, text, tracks=tracks).square().mean().backward()
    m.configure_speed(SpeedSettings(checkpointing, attention_backend="flash_4_hub"))
    m(x, t, text, tracks=tracks).square().mean().backward()
    assert sum(calls) == self_attention_calls and len(calls) - sum(calls) == 4  # cross-attention: recomputed
    for (name, p), q in zip(m.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("on_cuda, dtype, capability, expected", [
    (True, torch.bfloat16, (9, 0), "flash_4_hub"),  # H100 / H200
    (True, torch.float16, (10, 0), "flash_4_hub"),  # B200
    (True, torch.float32, (9, 0), None),  # FA4 takes bf16 / fp16 only
    (True, torch.bfloat16, (8, 0), None),  # A100: no FA4 kernels
    (False, torch.bfloat16, (9, 0), None),
])
def test_default_backend_is_flash_attn_4_where_it_runs(stand_in_kernel, monkeypatch, on_cuda, dtype, capability,
                                                         expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert flash_attn_4.default_backend(on_cuda, dtype) == expected


@pytest.mark.parametrize("named, context_parallel, expected", [
    (None, False, AttentionBackendName.FLASH_4_HUB),
    (None, True, None),  # diffusers' flash_4_hub has no context-parallel support: SDPA stays
    ("native", False, "native"),  # a named backend is kept
])
def test_inference_takes_the_default_backend_unless_one_is_named(stand_in_kernel, monkeypatch, named,
                                                                 context_parallel, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    pipe = pipeline(model("full").to(torch.bfloat16))
    apply_speed_options(pipe, "cuda", SpeedOptions(attention_backend=named), context_parallel=context_parallel)
    assert {b.attn1.processor._attention_backend for b in pipe.transformer.transformer.blocks} == {expected}


def test_without_the_package_the_default_is_sdpa(monkeypatch):
    monkeypatch.setattr(flash_attn_4, "_kernels", missing_kernels)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert flash_attn_4.default_backend(True, torch.bfloat16) is None


def missing_kernels():
    raise ImportError("No module named 'flash_attn'")


@pytest.mark.skipif(importlib.util.find_spec("kernels") is not None, reason="the `kernels` package is installed")
def test_without_flash_attn_4_diffusers_decides(monkeypatch):
    """No PyPI flash-attn-4: diffusers' own method runs, and says what it needs for the Hub kernel."""
    monkeypatch.setattr(flash_attn_4, "_kernels", missing_kernels)
    with pytest.raises(RuntimeError, match="kernels"):
        flash_attn_4.set_attention_backend(model().transformer, "flash_4_hub")
