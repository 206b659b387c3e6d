"""One-way attention (track2view/model/one_way.py) and the source KV cache of inference (source_kv.py): the
source half ignores the target, the cached re-render equals the uncached one, the cache composes with step
caches, fused LoRA and compiled blocks, training with `model.attention: one_way` exports it and the export's
re-render uses the cache."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train
from test_training import fit, make_config
from track2view.inference.pipeline import Track2ViewPipeline, default_scheduler
from track2view.model.export import ExportInfo
from track2view.model.flow_matching import token_timesteps
from track2view.model.one_way import OneWayAttnProcessor
from track2view.model.speed import _ATTENTION_OPS, SpeedSettings
from track2view.model.transformer import Track2ViewTransformer
from track2view.testing.tiny import tiny_transformer
from track2view.tracks import PairedTracks

COND = dict(width=16, num_layers=1, num_heads=2, uv_fourier_bands=2, disparity_fourier_bands=2)
F, H, W, N = 2, 8, 8, 6
SOURCE_TOKENS = F * (H // 2) * (W // 2)


def model(attention: str = "one_way", seed: int = 0) -> Track2ViewTransformer:
    """The tiny Wan + LoRA + track conditioning, every trainable weight nonzero (as if trained)."""
    m = Track2ViewTransformer(tiny_transformer(seed), conditioning_config=COND, lora=dict(rank=4, alpha=8),
                              attention=attention)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return m.eval()


def inputs(seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2 * F, H, W, generator=g)
    t = token_timesteps(torch.tensor([700.0, 300.0][:batch]), "per_token", x.shape)
    text = torch.randn(batch, 5, 32, generator=g)
    tracks = PairedTracks(torch.rand(1, 2, F, N, 2, generator=g), 1 + torch.rand(1, 2, F, N, generator=g),
                          torch.rand(1, 2, F, N, generator=g) < 0.8)
    return x, t, text, tracks


def with_new_target(x: torch.Tensor, seed: int = 5) -> torch.Tensor:
    out = x.clone()
    out[:, :, F:] = torch.randn(out[:, :, F:].shape, generator=torch.Generator().manual_seed(seed))
    return out


def pipeline(transformer) -> Track2ViewPipeline:
    pipe = Track2ViewPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                              scheduler=default_scheduler(), timestep_mode="per_token")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoise(pipe, guidance_scale: float = 5.0, steps: int = 3, **kwargs):
    g = torch.Generator().manual_seed(3)
    source, text, negative = torch.randn(1, 16, F, H, W, generator=g), torch.randn(1, 5, 32, generator=g), \
        torch.randn(1, 5, 32, generator=g)
    _, _, _, tracks = inputs()
    return pipe.denoise(source, text, {"tracks": tracks}, negative, num_inference_steps=steps,
                        guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), **kwargs)


class BlockTokens:
    """Records how many tokens the first block sees per call."""

    def __init__(self, transformer: Track2ViewTransformer):
        self.seen: list[int] = []
        self.handle = transformer.transformer.blocks[0].register_forward_pre_hook(
            lambda module, args: self.seen.append(args[0].shape[1]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@contextlib.contextmanager
def uncached(transformer: Track2ViewTransformer):
    """The plain one-way forward at every step (the pipeline's source KV cache switched off)."""
    transformer.source_kv_cache = contextlib.nullcontext
    try:
        yield
    finally:
        del transformer.source_kv_cache


# ---- the attention itself -------------------------------------------------------------------------------------
@torch.no_grad()
def test_source_tokens_ignore_the_target_with_one_way_attention_only():
    x, t, text, tracks = inputs()
    changed = with_new_target(x)
    for attention in ("one_way", "full"):
        m = model(attention)
        a, b = m(x, t, text, tracks=tracks), m(changed, t, text, tracks=tracks)
        source_change = (a[:, :, :F] - b[:, :, :F]).abs().max()
        assert (a[:, :, F:] - b[:, :, F:]).abs().max() > 1e-2
        assert source_change == 0 if attention == "one_way" else source_change > 1e-3, (attention, source_change)


@torch.no_grad()
def test_one_way_attention_equals_full_attention_under_the_one_way_mask():
    """The two-call processor = one dense SDPA with a mask: source rows see source columns, target rows all."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    m = model()
    x, _, _, _ = inputs()
    m.transformer.set_attention_backend("native")  # diffusers' backends reach the one-way processor ...
    m.set_attention("one_way")  # ... and stay when it is set again
    attn = m.transformer.blocks[0].attn1
    assert attn.processor._attention_backend == "native"
    rope = m.transformer.rope(x)
    hidden = torch.randn(2, 2 * SOURCE_TOKENS, attn.inner_dim, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2 * SOURCE_TOKENS, 2 * SOURCE_TOKENS, dtype=torch.bool)
    mask[:SOURCE_TOKENS, SOURCE_TOKENS:] = False
    one_way = attn(hidden, None, None, rope)
    assert isinstance(attn.processor, OneWayAttnProcessor)
    attn.set_processor(WanAttnProcessor())
    torch.testing.assert_close(one_way, attn(hidden, None, mask, rope), rtol=1e-5, atol=1e-5)
    assert (one_way - attn(hidden, None, None, rope)).abs().max() > 1e-3


class SelfAttentionCalls(TorchDispatchMode):
    """Counts the attention-kernel calls of one-way self-attention (queries: half the video tokens)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in _ATTENTION_OPS and args[0].shape[-2] == SOURCE_TOKENS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("checkpointing, calls", [("full", 8), ("selective", 4)])
def test_selective_checkpointing_keeps_both_one_way_attention_outputs(checkpointing, calls):
    """Same gradients as without checkpointing; "selective" saves the source and the target call's outputs (2
    blocks x 2 calls in the forward, no recompute), "full" recomputes them."""
    x, t, text, tracks = inputs()
    reference, m = model().train(), model().train()
    reference(x, t, text, tracks=tracks).square().mean().backward()
    m.configure_speed(SpeedSettings(checkpointing))
    with SelfAttentionCalls() as counted:
        m(x, t, text, tracks=tracks).square().mean().backward()
    assert counted.calls == calls
    for (name, p), q in zip(m.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


# ---- the source KV cache ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance_scale, interval, primes", [
    (5.0, (0.0, 1.0), 1),  # CFG at every step: one context ("cond_uncond"), primed once
    (1.0, (0.0, 1.0), 1),  # no CFG
    (5.0, (0.0, 0.5), 2),  # CFG on the first 2 of 4 steps, then the positive branch alone ("cond"): primed again
])
def test_cached_rerender_equals_the_uncached_one_way_loop(guidance_scale, interval, primes):
    m = model()
    pipe = pipeline(m)
    with BlockTokens(m) as plain, uncached(m):
        expected = denoise(pipe, guidance_scale, steps=4, guidance_interval=interval)
    with BlockTokens(m) as cached:
        got = denoise(pipe, guidance_scale, steps=4, guidance_interval=interval)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert plain.seen == [2 * SOURCE_TOKENS] * 4
    assert cached.seen == [SOURCE_TOKENS] * (primes + 4)  # priming calls (the source), then the target per step
    assert all(p.source_key is None and p.mode == "full" for p in (b.attn1.processor for b in m.transformer.blocks))


@torch.no_grad()
def test_each_cache_context_primes_its_own_cache():
    """A CFG batch of 2 ("cond_uncond") and single-branch steps ("cond") within one re-render."""
    m = model()
    x, t, text, tracks = inputs()
    later = token_timesteps(torch.tensor([400.0, 100.0]), "per_token", x.shape)  # a later step
    calls = [("cond_uncond", x, t, text), ("cond", x[1:], t[1:], text[1:]),
             ("cond_uncond", with_new_target(x), later, text), ("cond", with_new_target(x[1:]), later[1:], text[1:])]

    def run():
        out = []
        for name, *args in calls:
            with m.cache_context(name):
                out.append(m(*args, tracks=tracks)[:, :, F:])
        return out

    expected = run()
    with BlockTokens(m) as cached, m.source_kv_cache():
        got = run()
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert cached.seen == [SOURCE_TOKENS] * 6  # two primes, four target calls
    with m.source_kv_cache(), pytest.raises(ValueError, match="holds a batch of 2, this call has 1"):
        for batch in (2, 1):
            with m.cache_context("cond_uncond"):
                m(x[:batch], t[:batch], text[:batch], tracks=tracks)


def test_the_cache_composes_with_step_caches_fused_lora_and_compiled_blocks():
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    from track2view.inference.speed import compile_blocks

    m = model()
    pipe = pipeline(m)
    with uncached(m):
        expected = denoise(pipe)
    base = m.transformer
    base.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # never skips: the same result
    try:
        with BlockTokens(m) as cached:
            torch.testing.assert_close(denoise(pipe), expected, rtol=0, atol=1e-5)
        assert cached.seen == [SOURCE_TOKENS] * 4
    finally:
        base.disable_cache()
    pipe.fuse_lora()
    torch.testing.assert_close(denoise(pipe), expected, rtol=0, atol=1e-5)
    taylorseer = TaylorSeerCacheConfig(use_lite_mode=True, cache_interval=2, disable_cache_before_step=1)
    base.enable_cache(taylorseer)  # extrapolates on some steps: its own result, which compiling must not change
    try:
        eager_taylorseer = denoise(pipe, steps=5)
    finally:
        base.disable_cache()
    torch._dynamo.reset()
    compile_blocks(base, backend="eager")  # dynamo's trace: no graph break in the blocks
    try:
        torch.testing.assert_close(denoise(pipe), expected, rtol=0, atol=1e-5)
        for config, steps, want in ((FirstBlockCacheConfig(threshold=0.0), 3, expected),
                                    (taylorseer, 5, eager_taylorseer)):
            base.enable_cache(config)  # a step cache's hooks around the compiled blocks (infer.py --compile --cache)
            try:
                got = denoise(pipe, steps=steps)
            finally:
                base.disable_cache()
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    finally:
        torch._dynamo.reset()


# ---- settings, training, export ---------------------------------------------------------------------------------
def test_one_way_attention_with_per_sample_timesteps_is_refused_with_one_message():
    from track2view.testing.tiny import TINY_TRANSFORMER
    from track2view.training.module import ConfigError, Track2ViewModule

    with pytest.raises(ConfigError, match="one_way needs per-token timesteps.*timestep_mode: per_token"):
        Track2ViewModule(wan_config=TINY_TRANSFORMER, attention="one_way")
    with pytest.raises(ConfigError, match="attention must be one of"):
        Track2ViewModule(wan_config=TINY_TRANSFORMER, attention="sparse")
    Track2ViewModule(wan_config=TINY_TRANSFORMER, attention="one_way", flow_matching={"timestep_mode": "per_token"})
    x, _, text, tracks = inputs()
    with pytest.raises(ValueError, match="one_way needs per-token timesteps.*timestep_mode: per_token"):
        model()(x, torch.tensor([500.0, 500.0]), text, tracks=tracks)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_fixtures import stage2_sample, write_shard

    root = tmp_path_factory.mktemp("latent-shards")
    write_shard(root / "shard-000000.tar", [stage2_sample(f"f24-scene0-cam01-cam{j + 2:02d}", seed=j) for j in range(3)])
    return root


def test_one_way_training_exports_it_and_the_export_rerenders_with_the_cache(tmp_path, tiny_wan_dir, shards):
    root, out = tmp_path / "run", tmp_path / "export"
    config = make_config(tmp_path / "c.yaml", val_every=2)  # validation renders go through the cache too
    assert fit(config, root, tiny_wan_dir, shards, "--model.attention", "one_way",
               "--model.flow_matching", '{"timestep_mode": "per_token"}', "--trainer.max_steps", "2") == 0
    assert train.main(["export", "--ckpt", str(root / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    info = ExportInfo.read(out)
    assert (info.attention, info.timestep_mode) == ("one_way", "per_token")

    pipe = Track2ViewPipeline.from_checkpoint(tiny_wan_dir, out, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.attention == "one_way" and pipe.config.timestep_mode == "per_token"
    with BlockTokens(pipe.transformer) as cached:
        got = denoise(pipe, steps=2)
    assert cached.seen == [SOURCE_TOKENS] * 3
    with uncached(pipe.transformer):
        torch.testing.assert_close(got, denoise(pipe, steps=2), rtol=0, atol=1e-5)
    # save_trained records it as well, and loading an export applies it
    resaved = ExportInfo.read(pipe.transformer.save_trained(tmp_path / "resaved"))
    assert resaved.attention == "one_way"
    full = Track2ViewTransformer.from_pretrained(tiny_wan_dir, conditioning_config=info.conditioning_config,
                                                 lora=info.lora)
    assert full.attention == "full" and full.load_trained(out).attention == "one_way"
