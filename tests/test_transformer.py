import json
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from track2view.model.flow_matching import flow_matching_loss, noise_target
from track2view.testing.tiny import tiny_transformer
from track2view.tracks import PairedTracks
from track2view.model.speed import _ATTENTION_OPS, SpeedSettings
from track2view.model.transformer import Track2ViewTransformer

COND = dict(width=16, num_layers=1, num_heads=2, uv_fourier_bands=2, disparity_fourier_bands=2)
B, F, H, W, N = 2, 2, 8, 8, 6


def inputs(seed=0, batch=B):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2 * F, H, W, generator=g)
    t = torch.tensor([500.0, 200.0][:batch])
    text = torch.randn(batch, 5, 32, generator=g)
    tracks = PairedTracks(torch.rand(batch, 2, F, N, 2, generator=g), 1 + torch.rand(batch, 2, F, N, generator=g),
                          torch.rand(batch, 2, F, N, generator=g) < 0.8)
    return x, t, text, tracks


def model(seed=0, lora=None, **base_overrides) -> Track2ViewTransformer:
    return Track2ViewTransformer(tiny_transformer(seed, **base_overrides), conditioning_config=COND,
                                 lora=lora or dict(rank=4, alpha=8))


def randomize_trainables(m: Track2ViewTransformer, seed=1):
    """Stand-in for training: every LoRA and conditioning weight nonzero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def test_untrained_model_equals_the_bare_wan_transformer_exactly():
    m, bare = model(), tiny_transformer(0)
    x, t, text, tracks = inputs()
    out = m(x, t, text, tracks=tracks)
    assert out.shape == x.shape
    assert torch.equal(out, bare(x, t, text, return_dict=False)[0])


def test_untrained_model_with_the_lean_ffn_equals_the_bare_wan_transformer_exactly():
    m, bare = model(), tiny_transformer(0)
    m.configure_speed(SpeedSettings("selective", ffn_chunk_tokens=7))
    x, t, text, tracks = inputs()
    out = m(x, t, text, tracks=tracks)  # grad enabled: the lean op runs
    assert out.requires_grad
    assert torch.equal(out, bare(x, t, text, return_dict=False)[0])


def test_lean_ffn_matches_peft_in_bfloat16_autocast():
    """The op's forward equals peft's under autocast; its chunked backward matches autograd's closely."""
    grads = []
    for chunk in (None, 5):
        m = model()
        randomize_trainables(m)
        m.configure_speed(SpeedSettings("none", ffn_chunk_tokens=chunk))
        ffn = m.transformer.blocks[0].ffn
        h = torch.randn(2, 16, ffn.net[0].proj.in_features, generator=torch.Generator().manual_seed(3),
                        dtype=torch.bfloat16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = ffn(h)
        y.float().square().sum().backward()
        grads.append((y.detach(), h.grad, [p.grad for n, p in ffn.named_parameters() if "lora_" in n]))
    (y0, h0, p0), (y1, h1, p1) = grads
    assert y1.dtype == torch.bfloat16 and len(p0) == len(p1) == 4
    torch.testing.assert_close(y1, y0, rtol=0.02, atol=0.02 * y0.abs().max().item())  # bf16 rounding
    torch.testing.assert_close(h1, h0, rtol=0.05, atol=0.05 * h0.abs().max().item())
    for a, b in zip(p1, p0):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * b.abs().max().item())


def test_gradients_reach_only_lora_and_conditioning():
    m = model()
    torch.nn.init.normal_(m.conditioning.out_proj.weight, std=0.1)  # otherwise the conditioner's grads vanish
    x, t, text, tracks = inputs()
    m(x, t, text, tracks=tracks).square().mean().backward()
    lora = {n: p for n, p in m.transformer.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert all(p.grad is not None for p in lora.values())
    # lora_A gets zero grad while lora_B is zero (peft init); lora_B must get a gradient
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    cond = dict(m.conditioning.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cond.values())
    base = [(n, p) for n, p in m.transformer.named_parameters() if "lora_" not in n]
    assert base and all(not p.requires_grad and p.grad is None for _, p in base)
    trainable = {id(p) for p in m.trainable_parameters()}
    assert trainable == {id(p) for p in list(lora.values()) + list(cond.values())}


def test_tracks_change_the_output_once_trained_and_bad_tracks_are_rejected():
    m = model()
    randomize_trainables(m)
    x, t, text, tracks = inputs()
    other = inputs(seed=5)[3]
    assert not torch.allclose(m(x, t, text, tracks=tracks), m(x, t, text, tracks=other))
    with pytest.raises(ValueError, match="tracks"):
        m(x, t, text, tracks=tracks.frames([0]))
    with pytest.raises(ValueError, match="batched PairedTracks"):
        m(x, t, text, tracks=PairedTracks(tracks.uv[0], tracks.depth[0], tracks.valid[0]))
    # one set of tracks broadcasts over the batch (e.g. classifier-free guidance)
    one = PairedTracks(tracks.uv[:1], tracks.depth[:1], tracks.valid[:1])
    both = PairedTracks(*(a[:1].expand(B, *a.shape[1:]) for a in (tracks.uv, tracks.depth, tracks.valid)))
    torch.testing.assert_close(m(x, t, text, tracks=one), m(x, t, text, tracks=both))


class CountAttention(TorchDispatchMode):
    """Counts the DiT's attention-kernel calls (forward and checkpoint recomputes), self- vs cross-attention."""

    def __init__(self, video_tokens: int):
        super().__init__()
        self.video_tokens = video_tokens  # [B, heads, S, head_dim]; the conditioner's sequences are F long
        self.self_attention = self.cross_attention = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _ATTENTION_OPS and args[0].shape[-2] == self.video_tokens:
            if args[0].shape == args[1].shape:
                self.self_attention += 1
            else:
                self.cross_attention += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("settings,self_calls,cross_calls", [
    (SpeedSettings("none"), 2, 2),
    (SpeedSettings("full"), 4, 4),
    (SpeedSettings("selective"), 2, 4),  # the recompute reuses the saved self-attention outputs
    (SpeedSettings("full", checkpoint_blocks=1), 3, 3),
    (SpeedSettings("selective", selective_blocks=1), 3, 4),
    (SpeedSettings("none", ffn_chunk_tokens=7), 2, 2),  # chunked LoRA FFN backward (7 does not divide tokens)
    (SpeedSettings("full", ffn_chunk_tokens=7), 4, 4),
    (SpeedSettings("selective", ffn_chunk_tokens=1000), 2, 4),
])
def test_checkpointing_modes_give_the_same_gradients(settings, self_calls, cross_calls):
    x, t, text, tracks = inputs()
    reference = model()
    randomize_trainables(reference)
    reference(x, t, text, tracks=tracks).square().mean().backward()
    m = model()
    randomize_trainables(m)
    m.configure_speed(settings)
    with CountAttention(video_tokens=2 * F * (H // 2) * (W // 2)) as counts:
        m(x, t, text, tracks=tracks).square().mean().backward()
    assert (counts.self_attention, counts.cross_attention) == (self_calls, cross_calls)  # tiny model: 2 blocks
    for (n, p), q in zip(m.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_save_trained_reloads_through_diffusers_and_load_trained(tiny_wan_dir, tmp_path):
    from diffusers import WanPipeline

    m = Track2ViewTransformer.from_pretrained(tiny_wan_dir, conditioning_config=COND, lora=dict(rank=4, alpha=8))
    randomize_trainables(m)
    x, t, text, tracks = inputs()
    expected = m(x, t, text, tracks=tracks)
    export = m.save_trained(tmp_path / "export", latent_stride=4, num_tracks=N)
    assert {p.name for p in export.iterdir()} == {"pytorch_lora_weights.safetensors", "conditioning", "track2view.json",
                                                  ".track2view-output"}
    assert json.loads((export / "track2view.json").read_text())["num_tracks"] == N

    # the LoRA alone, through plain diffusers (alpha != rank: needs the adapter metadata)
    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    pipe.load_lora_weights(export)
    lora_only = m.transformer(x, t, text, return_dict=False)[0]  # no inputs: the hook adds nothing
    assert not torch.allclose(lora_only, tiny_transformer(0)(x, t, text, return_dict=False)[0])
    torch.testing.assert_close(pipe.transformer(x, t, text, return_dict=False)[0], lora_only)

    # everything, through our own loader (fresh model with default LoRA settings: rebuilt from the export)
    fresh = Track2ViewTransformer.from_pretrained(tiny_wan_dir)
    fresh.load_trained(export)
    assert fresh.lora.rank == 4 and fresh.conditioning.config.width == COND["width"]
    torch.testing.assert_close(fresh(x, t, text, tracks=tracks), expected)
    torch.testing.assert_close(Track2ViewTransformer.from_trained(tiny_wan_dir, export)(x, t, text, tracks=tracks), expected)

    # a checkpoint for another base model fails with a clear message
    other = Track2ViewTransformer(tiny_transformer(0, num_layers=3))
    with pytest.raises(ValueError, match="trained for another base model than this model .*num_layers"):
        other.load_trained(export)
    with pytest.raises(FileNotFoundError, match="not a Track2View export"):
        fresh.load_trained(tmp_path)


def test_overfits_one_batch():
    # 128 wide so that the frozen output projection can express unit-variance velocities; scaled like a
    # trained one (a random-init projection reaches only about half the target's magnitude).
    base = tiny_transformer(0, attention_head_dim=64)
    with torch.no_grad():
        base.proj_out.weight *= 2.5
    m = Track2ViewTransformer(base, conditioning_config=COND, lora=dict(rank=16, alpha=16))
    g = torch.Generator().manual_seed(0)
    source, target, noise = (torch.randn(1, 16, F, H, W, generator=g) for _ in range(3))
    x, velocity = noise_target(source, target, torch.tensor([0.5]), noise=noise)
    _, t, text, tracks = inputs(batch=1)
    opt = torch.optim.Adam(m.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = flow_matching_loss(m(x, t, text, tracks=tracks), velocity)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses[::25]


@pytest.mark.skipif(not os.environ.get("T2V_SLOW"), reason="compiles on CPU (about a minute); set T2V_SLOW=1")
@pytest.mark.parametrize("ffn_chunk_tokens", [None, 7])
def test_compiled_selective_checkpointing_matches_eager(ffn_chunk_tokens):
    import torch._dynamo
    from torch._dynamo.utils import counters

    x, t, text, tracks = inputs()
    reference = model(num_layers=3)
    randomize_trainables(reference)
    reference(x, t, text, tracks=tracks).square().mean().backward()
    m = model(num_layers=3)
    randomize_trainables(m)
    torch._dynamo.reset()
    counters.clear()
    m.configure_speed(SpeedSettings("selective", compile_blocks=True, ffn_chunk_tokens=ffn_chunk_tokens))
    m(x, t, text, tracks=tracks).square().mean().backward()
    assert counters["stats"]["unique_graphs"] == 1  # one graph shared by the 3 blocks, no recompiles
    assert not counters["graph_break"]
    for (n, p), q in zip(m.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)
