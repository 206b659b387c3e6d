import numpy as np
import pytest
import torch

from track2view.inference.pipeline import Track2ViewPipeline
from track2view.tracks import PairedTracks

T, H, W, N = 9, 32, 48, 24  # 9 frames -> 3 latent frames; 32x48 -> 4x6 latents -> 2x3 tokens per frame


@pytest.fixture(scope="module")
def pipe(tiny_wan_dir):
    p = Track2ViewPipeline.from_checkpoint(tiny_wan_dir, torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def random_video(t=T, h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def random_tracks(t=T, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return PairedTracks.from_projections(torch.rand(2, t, n, 2, generator=g), 1 + torch.rand(2, t, n, generator=g))


@pytest.mark.parametrize("frames, height, width", [(T, H, W), (13, 48, 32)])
def test_output_has_the_clip_length_and_model_size(pipe, frames, height, width):
    out = pipe(random_video(frames), {"tracks": random_tracks(frames)}, prompt="a red ball", num_inference_steps=2,
               height=height, width=width, generator=torch.Generator().manual_seed(0), fps=12.0)
    assert out.frames.shape == (frames, height, width, 3) and out.frames.dtype == np.float32
    assert 0 <= out.frames.min() and out.frames.max() <= 1 and out.fps == 12.0
    pt = pipe(random_video(), {"tracks": random_tracks()}, num_inference_steps=1, height=H, width=W, output_type="pt").frames
    assert pt.shape == (T, 3, H, W)


def test_source_encoded_once_and_reused_gives_the_same_video(pipe):
    video, tracks = random_video(seed=1), random_tracks(seed=1)
    direct = pipe(video, {"tracks": tracks}, prompt="a blue box", num_inference_steps=2, height=H, width=W,
                  generator=torch.Generator().manual_seed(3)).frames
    cache = pipe.prepare_source(video, "a blue box", None, H, W)
    assert cache.latents.shape == (1, 16, 3, H // 8, W // 8) and cache.frames.shape == (T, H, W, 3)
    reused = pipe(source=cache, inputs={"tracks": tracks}, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(3)).frames
    np.testing.assert_allclose(reused, direct, atol=1e-5)
    # tracks given at the latent stride are the same input as full-rate tracks
    strided = pipe(source=cache, inputs={"tracks": tracks.at_latent_stride(4)}, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(3)).frames
    np.testing.assert_allclose(strided, direct, atol=1e-5)


def test_denoising_keeps_the_source_clean_and_batches_cfg(pipe):
    """Every transformer call sees [clean source | target], CFG as one batch of 2, one timestep per sample."""
    cache = pipe.prepare_source(random_video(seed=2), "a car", "", H, W)
    calls = []

    def record(module, args, kwargs):
        calls.append((kwargs["hidden_states"].detach().clone(), kwargs["timestep"].clone(), kwargs["tracks"]))

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        target = pipe.denoise(cache.latents, cache.prompt_embeds, {"tracks": random_tracks().at_latent_stride(4)},
                              cache.negative_prompt_embeds, num_inference_steps=3, guidance_scale=5.0,
                              generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    f = cache.latents.shape[2]
    assert len(calls) == 3 and target.shape == cache.latents.shape
    timesteps = []
    for hidden, timestep, tracks in calls:
        assert hidden.shape == (2, 16, 2 * f, H // 8, W // 8)
        for b in range(2):
            torch.testing.assert_close(hidden[b, :, :f], cache.latents[0])  # the source half is always clean
        torch.testing.assert_close(hidden[0], hidden[1])  # the two CFG branches differ only in the prompt
        assert timestep.shape == (2,) and timestep[0] == timestep[1]
        assert tracks.depth.shape == (1, 2, f, N)  # one video's tracks, shared by the CFG branches
        timesteps.append(float(timestep[0]))
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[0] > timesteps[-1]
    # the target half moves between steps (the scheduler steps it), the source half never does
    assert not torch.allclose(calls[0][0][:, :, f:], calls[1][0][:, :, f:])


def test_guidance_one_runs_a_single_branch(pipe):
    cache = pipe.prepare_source(random_video(seed=3), "a tree", None, H, W, guidance_scale=1.0)
    assert cache.negative_prompt_embeds is None
    batches = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: batches.append(k["hidden_states"].shape[0]), with_kwargs=True)
    try:
        pipe(source=cache, inputs={"tracks": random_tracks()}, num_inference_steps=2, guidance_scale=1.0)
    finally:
        handle.remove()
    assert batches == [1, 1]


def test_bad_inputs(pipe):
    video = random_video()
    with pytest.raises(ValueError, match="tracks have 5 frames; expected 9"):
        pipe(video, {"tracks": random_tracks(t=5)}, num_inference_steps=1, height=H, width=W)
    with pytest.raises(ValueError, match="4k\\+1"):
        pipe(random_video(t=8), {"tracks": random_tracks(t=8)}, num_inference_steps=1, height=H, width=W)
    with pytest.raises(ValueError, match="multiple of 16"):
        pipe(video, {"tracks": random_tracks()}, num_inference_steps=1, height=40, width=W)
    with pytest.raises(ValueError, match="has 9 frames, 13 are needed"):
        pipe(video, {"tracks": random_tracks(t=13)}, num_inference_steps=1, height=H, width=W, num_frames=13)


def test_trained_checkpoint_loads_and_a_mismatched_one_is_refused(tiny_wan_dir, tmp_path):
    from track2view.testing.tiny import TINY_TRANSFORMER
    from track2view.model.transformer import Track2ViewTransformer

    model = Track2ViewTransformer.from_pretrained(tiny_wan_dir, conditioning_config={"width": 32, "num_heads": 2},
                                                  lora={"rank": 4, "alpha": 4.0})
    with torch.no_grad():
        for p in model.conditioning.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    export = model.save_trained(tmp_path / "export")
    pipe = Track2ViewPipeline.from_checkpoint(tiny_wan_dir, export, torch_dtype=torch.float32)
    for name, p in model.conditioning.state_dict().items():
        torch.testing.assert_close(pipe.transformer.conditioning.state_dict()[name], p)
    assert pipe.transformer.lora.rank == 4
    # with a trained (non-zero) conditioning the tracks steer the result; full-rate tracks = strided tracks
    pipe.set_progress_bar_config(disable=True)
    cache = pipe.prepare_source(random_video(seed=4), "a house", "", H, W)
    run = lambda tr: pipe(source=cache, inputs={"tracks": tr}, num_inference_steps=2, output_type="latent",  # noqa: E731
                          generator=torch.Generator().manual_seed(0)).frames
    a, b = random_tracks(seed=5), random_tracks(seed=6)
    out_a = run(a)
    torch.testing.assert_close(run(a.at_latent_stride(4)), out_a)
    assert (run(b) - out_a).abs().max() > 1e-2
    # the track tokens computed once per video (cached) equal those computed at every step and branch
    calls = []
    handle = pipe.transformer.conditioning.register_forward_hook(lambda *a: calls.append(1))
    try:
        kwargs = dict(num_inference_steps=3, guidance_scale=5.0)
        cached = pipe.denoise(cache.latents, cache.prompt_embeds, {"tracks": a.at_latent_stride(4)}, cache.negative_prompt_embeds,
                              generator=torch.Generator().manual_seed(0), **kwargs)
        assert len(calls) == 1
        plain = pipe.denoise(cache.latents, cache.prompt_embeds, {"tracks": a.at_latent_stride(4)}, cache.negative_prompt_embeds,
                             generator=torch.Generator().manual_seed(0), reuse_conditioning=False, **kwargs)
        assert len(calls) == 1 + 3
    finally:
        handle.remove()
    torch.testing.assert_close(cached, plain)
    assert pipe.transformer.hook.tokens is None and not pipe.transformer.hook.reuse_tokens  # reset after the run
    # fusing the LoRA into the base weights changes the speed, not the result
    pipe.fuse_lora()
    torch.testing.assert_close(run(a), out_a, atol=1e-4, rtol=1e-4)

    other = Track2ViewTransformer.from_config({**TINY_TRANSFORMER, "num_layers": 3},
                                              conditioning_config={"width": 32, "num_heads": 2})
    mismatched = other.save_trained(tmp_path / "other")
    with pytest.raises(ValueError, match="num_layers"):
        Track2ViewPipeline.from_checkpoint(tiny_wan_dir, mismatched, torch_dtype=torch.float32)


def test_per_token_export_gets_per_token_timesteps_with_a_clean_source_half(tiny_wan_dir, tmp_path):
    """An export trained with timestep_mode per_token is run with the training timesteps: [B, S], t = 0 on the
    source tokens, the scheduler's t on the target tokens; exports without the setting run per sample."""
    from track2view.model.export import ExportInfo
    from track2view.model.transformer import Track2ViewTransformer

    model = Track2ViewTransformer.from_pretrained(tiny_wan_dir, conditioning_config={"width": 32, "num_heads": 2},
                                                  lora={"rank": 4, "alpha": 4.0})
    assert ExportInfo.read(model.save_trained(tmp_path / "plain")).timestep_mode == "per_sample"
    export = model.save_trained(tmp_path / "per_token",
                                training={"flow_matching": {"timestep_mode": "per_token", "shift": 5.0}})
    pipe = Track2ViewPipeline.from_checkpoint(tiny_wan_dir, export, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.timestep_mode == "per_token"
    cache = pipe.prepare_source(random_video(seed=7), "a dog", "", H, W)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: calls.append(k["timestep"].clone()), with_kwargs=True)
    try:
        pipe.denoise(cache.latents, cache.prompt_embeds, {"tracks": random_tracks().at_latent_stride(4)},
                     cache.negative_prompt_embeds, num_inference_steps=2, guidance_scale=5.0,
                     generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    pipe.scheduler.set_timesteps(2)
    f, per_frame = cache.latents.shape[2], (H // 16) * (W // 16)  # 8x VAE, 2x2 patches
    assert len(calls) == 2
    for timestep, t in zip(calls, pipe.scheduler.timesteps):
        assert timestep.shape == (2, 2 * f * per_frame)
        assert (timestep[:, : f * per_frame] == 0).all() and (timestep[:, f * per_frame:] == t).all() and t > 0
    with pytest.raises(ValueError, match="timestep_mode"):
        Track2ViewPipeline(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.transformer, pipe.scheduler,
                           timestep_mode="per_frame")


def test_benchmark_smoke_runs_on_cpu():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench" / "infer_video.py"), "--tiny", "--device", "cpu",
                        "--variants", "plain,ours_nocache,ours"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    by_variant = {row["variant"]: row for row in rows if "variant" in row}
    assert set(by_variant) == {"plain", "ours_nocache", "ours"}
    assert all(row["video_50steps_cfg_s"] > 0 and row["extrapolated"] for row in by_variant.values())
    assert rows[-1]["event"] == "summary" and set(rows[-1]["video_s_relative_to_plain"]) == {"ours_nocache", "ours"}


def test_benchmark_variant_backend_does_not_carry_over():
    """diffusers' set_attention_backend also sets its process-wide default: a `@BACKEND` variant's backend must not
    leak into the variants after it (it did on the H200: ours_fused after plain@flash_4_hub ran at FA4's speed)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench" / "infer_video.py"), "--tiny", "--device", "cpu",
                        "--steps", "1", "--warmup", "0", "--variants", "plain@_native_math,plain"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"variant"')]
    assert [row["attention_backend"] for row in rows] == ["_native_math", "native"]
