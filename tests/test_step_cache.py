"""infer.py's speed options end to end (in-process, tiny random-init Wan with a trained-looking export, a synthetic
scene's oracle tracks): diffusers' step caches, the guidance interval, the attention backend, VAE tiling, and
their bad values."""

import functools
import json

import numpy as np
import pytest
import torch

from track2view.io import read_video

T, H, W, STEPS, LAYERS = 9, 32, 48, 6, 2  # the tiny Wan has 2 blocks
TINY = ["--num-frames", T, "--height", H, "--width", W, "--steps", STEPS, "--num-queries", 64, "--device", "cpu"]


@pytest.fixture(scope="module")
def video_and_tracks(tmp_path_factory):
    from track2view.inference.reprojection import track_video
    from track2view.synthetic import random_scene, write_scene

    spec = random_scene(seed=5, index=1, num_cameras=2, height=H, width=W, num_frames=T, lens="f24_aperture5")
    video = write_scene(tmp_path_factory.mktemp("scenes"), spec, supersample=1) / "videos" / "cam01.mp4"
    frames, _ = read_video(video)
    result = track_video(frames, "oracle", 64, [(str(video), i) for i in range(len(frames))])
    return video, result.save(tmp_path_factory.mktemp("tracks") / "tracks.npz")


@pytest.fixture(scope="module")
def export(tiny_wan_dir, tmp_path_factory):
    """An export whose LoRA and conditioner are not zero (as after training), so both change the output."""
    from track2view.model.transformer import Track2ViewTransformer

    model = Track2ViewTransformer.from_pretrained(tiny_wan_dir, conditioning_config={"width": 32, "num_heads": 2},
                                                  lora={"rank": 4, "alpha": 4.0})
    torch.manual_seed(1)
    for p in model.trainable_parameters():
        p.data.normal_(0.0, 0.05)
    return model.save_trained(tmp_path_factory.mktemp("export") / "export")


@pytest.fixture
def calls(monkeypatch):
    """Records, during a run: the batch of every transformer call, the block calls that computed, the decoded
    latents."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    from track2view.inference.pipeline import Track2ViewPipeline
    from track2view.model.transformer import Track2ViewTransformer

    seen = {"batches": [], "blocks": 0, "latents": []}
    forward, block_forward, decode = Track2ViewTransformer.forward, WanTransformerBlock.forward, Track2ViewPipeline.decode

    @functools.wraps(forward)
    def counted_forward(self, hidden_states, *args, **kwargs):
        seen["batches"].append(hidden_states.shape[0])
        return forward(self, hidden_states, *args, **kwargs)

    @functools.wraps(block_forward)  # diffusers' caches read the block's signature
    def counted_block(self, *args, **kwargs):
        seen["blocks"] += 1
        return block_forward(self, *args, **kwargs)

    @functools.wraps(decode)
    def recorded_decode(self, latents):
        seen["latents"].append(latents.clone())
        return decode(self, latents)

    monkeypatch.setattr(Track2ViewTransformer, "forward", counted_forward)
    monkeypatch.setattr(WanTransformerBlock, "forward", counted_block)
    monkeypatch.setattr(Track2ViewPipeline, "decode", recorded_decode)
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "error")  # infer.main sets them; restored after the test
    return seen


def infer(out, video_and_tracks, model, *args):
    """infer.py's main in this process on the scene (one trajectory); returns its exit status."""
    import infer as cli

    video, tracks = video_and_tracks
    argv = ["--video", video, "--tracks", tracks, "--trajectory", "arc_left", "--amount", 10, "--model", model,
            "--out", out, *TINY, *args]
    return cli.main([str(a) for a in argv])


def frames(path):
    return read_video(path)[0]


@pytest.fixture(scope="module")
def uncached(video_and_tracks, tiny_wan_dir, export, tmp_path_factory):
    """The plain re-render (no cache, full CFG, LoRA kept separate): frames and final latents."""
    from track2view.inference.pipeline import Track2ViewPipeline

    latents, decode = [], Track2ViewPipeline.decode
    out = tmp_path_factory.mktemp("uncached") / "out.mp4"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Track2ViewPipeline, "decode", lambda self, z: latents.append(z.clone()) or decode(self, z))
        for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
            m.setenv(name, "error")
        assert infer(out, video_and_tracks, tiny_wan_dir, "--checkpoint", export, "--no-fuse-lora") == 0
    return frames(out), latents[0]


# ---- the presets -----------------------------------------------------------------------------------------------
AGGRESSIVE = {  # options that make each preset skip within STEPS steps on a random model
    "first_block": ["threshold=10"],
    "taylorseer": ["disable_cache_before_step=2", "cache_interval=2"],
    "mag": ["threshold=10", "retention_ratio=0", "max_skip_steps=4"],
}


@pytest.mark.parametrize("preset, extra", [("first_block", ["--no-fuse-lora"]),
                                           ("taylorseer", ["--vae-tiling", "--attention-backend", "native"]),
                                           ("mag", [])])
def test_each_preset_skips_blocks_and_re_renders_finite_frames(preset, extra, video_and_tracks, tiny_wan_dir, export,
                                                               calls, tmp_path):
    from track2view.inference.step_cache import write_mag_ratios

    ratios = [f"mag_ratios_file={write_mag_ratios(tmp_path / 'r.json', [[1.0] * STEPS])}"] if preset == "mag" else []
    options = [a for o in AGGRESSIVE[preset] + ratios for a in ("--cache-option", o)]
    out = tmp_path / "out.mp4"
    assert infer(out, video_and_tracks, tiny_wan_dir, "--checkpoint", export, "--cache", preset, *options, *extra) == 0
    assert frames(out).shape == (T, H, W, 3)
    assert len(calls["latents"]) == 1 and torch.isfinite(calls["latents"][0]).all()
    assert calls["batches"] == [2] * STEPS
    assert 0 < calls["blocks"] < STEPS * LAYERS  # the cache skipped blocks of our conditioned, LoRA'd model


def test_a_first_block_cache_that_never_skips_gives_the_uncached_video(video_and_tracks, tiny_wan_dir, export,
                                                                       uncached, calls, tmp_path):
    out = tmp_path / "out.mp4"
    assert infer(out, video_and_tracks, tiny_wan_dir, "--checkpoint", export, "--no-fuse-lora",
                 "--cache", "first_block", "--cache-option", "threshold=0") == 0
    assert calls["blocks"] == STEPS * LAYERS
    torch.testing.assert_close(calls["latents"][0], uncached[1], rtol=0, atol=0)
    np.testing.assert_array_equal(frames(out), uncached[0])


def test_mag_calibration_writes_ratios_that_a_second_run_uses(video_and_tracks, tiny_wan_dir, export, uncached,
                                                              calls, tmp_path):
    ratios = tmp_path / "cal" / "ratios.json"
    common = ["--checkpoint", export, "--no-fuse-lora", "--cache", "mag"]
    assert infer(tmp_path / "a.mp4", video_and_tracks, tiny_wan_dir, *common, "--cache-calibrate", ratios) == 0
    record = json.loads(ratios.read_text())
    assert record["num_inference_steps"] == STEPS == len(record["mag_ratios"]) and record["runs"] == 1
    assert record["mag_ratios"][0] == 1.0 and all(r > 0 for r in record["mag_ratios"])
    assert calls["blocks"] == STEPS * LAYERS  # calibration computes every step: the exact re-render
    torch.testing.assert_close(calls["latents"][0], uncached[1], rtol=0, atol=0)
    assert sorted(p.name for p in ratios.parent.iterdir()) == ["ratios.json"]  # written atomically
    calls["blocks"] = 0
    assert infer(tmp_path / "b.mp4", video_and_tracks, tiny_wan_dir, *common, "--cache-option",
                 f"mag_ratios_file={ratios}", *[a for o in AGGRESSIVE["mag"] for a in ("--cache-option", o)]) == 0
    assert 0 < calls["blocks"] < STEPS * LAYERS and torch.isfinite(calls["latents"][1]).all()


# ---- the guidance interval ---------------------------------------------------------------------------------
def test_guidance_interval_full_is_the_full_cfg_loop_and_a_half_runs_fewer_two_branch_calls(
        video_and_tracks, tiny_wan_dir, export, uncached, calls, tmp_path):
    assert infer(tmp_path / "full.mp4", video_and_tracks, tiny_wan_dir, "--checkpoint", export, "--no-fuse-lora",
                 "--guidance-interval", "0,1") == 0
    torch.testing.assert_close(calls["latents"][0], uncached[1], rtol=0, atol=0)
    assert calls["batches"] == [2] * STEPS
    calls["batches"].clear()
    assert infer(tmp_path / "half.mp4", video_and_tracks, tiny_wan_dir, "--checkpoint", export, "--no-fuse-lora",
                 "--guidance-interval", "0,0.5") == 0
    assert calls["batches"] == [2] * (STEPS // 2) + [1] * (STEPS // 2)
    assert not torch.allclose(calls["latents"][1], uncached[1])


def test_full_guidance_interval_equals_the_cfg_loop_written_out(tiny_wan_dir):
    """The pipeline's loop against the plain CFG loop (both branches as a batch of 2 at every step), exactly."""
    from track2view.inference.pipeline import Track2ViewPipeline
    from track2view.model.flow_matching import token_timesteps
    from track2view.tracks import PairedTracks

    pipe = Track2ViewPipeline.from_checkpoint(tiny_wan_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    video = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    source = pipe.prepare_source(video, "a red ball", "", H, W)
    g = torch.Generator().manual_seed(0)
    tracks = PairedTracks.from_projections(torch.rand(2, 3, 16, 2, generator=g), 1 + torch.rand(2, 3, 16, generator=g))
    noise = torch.randn(source.latents.shape, generator=g)
    ours = pipe.denoise(source.latents, source.prompt_embeds, {"tracks": tracks}, source.negative_prompt_embeds,
                        num_inference_steps=4, guidance_scale=5.0, latents=noise, guidance_interval=(0.0, 1.0))
    embeds = torch.cat([source.negative_prompt_embeds, source.prompt_embeds])
    pipe.scheduler.set_timesteps(4)
    pipe.scheduler.set_begin_index(0)
    latents, f = noise, source.latents.shape[2]
    with torch.no_grad(), pipe.transformer.constant_conditioning():
        for t in pipe.scheduler.timesteps:
            hidden = torch.cat([source.latents, latents], 2).expand(2, -1, -1, -1, -1)
            timestep = token_timesteps(t.expand(2), "per_sample", hidden.shape, (1, 2, 2))
            out = pipe.transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=embeds,
                                   tracks=PairedTracks.stack([tracks]))
            uncond, cond = out[:, :, f:].float().chunk(2)
            latents = pipe.scheduler.step(uncond + 5.0 * (cond - uncond), t, latents, return_dict=False)[0]
    torch.testing.assert_close(ours, latents, rtol=0, atol=0)


# ---- memory options ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="offload needs a CUDA device")
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_an_offloaded_re_render_equals_the_resident_one(offload, video_and_tracks, tiny_wan_dir, export, calls,
                                                        tmp_path):
    """The pipeline's tensors, the tracks and the conditioning land on the GPU under offload hooks (GPU only)."""
    gpu = ["--device", "cuda", "--dtype", "float32", "--checkpoint", export, "--cache", "first_block", "--vae-tiling"]
    assert infer(tmp_path / "resident.mp4", video_and_tracks, tiny_wan_dir, *gpu) == 0
    assert infer(tmp_path / "offloaded.mp4", video_and_tracks, tiny_wan_dir, *gpu, "--offload", offload) == 0
    assert calls["latents"][1].device.type == "cuda"
    torch.testing.assert_close(calls["latents"][1], calls["latents"][0])
    np.testing.assert_array_equal(frames(tmp_path / "offloaded.mp4"), frames(tmp_path / "resident.mp4"))


# ---- bad values: one line `error: ...`, exit 2, nothing written ---------------------------------------------
BAD = {
    "unknown cache": (["--cache", "teacache"], "unknown --cache 'teacache'; choose one of none, first_block"),
    "unknown cache option": (["--cache", "first_block", "--cache-option", "interval=3"],
                             "--cache-option interval: --cache first_block has no such option; its options: threshold"),
    "bad cache option value": (["--cache", "taylorseer", "--cache-option", "cache_interval=0"],
                               "cache_interval must be >= 1"),
    "malformed cache option": (["--cache", "first_block", "--cache-option", "threshold"], "takes KEY=VALUE"),
    "option without a preset": (["--cache-option", "threshold=0.1"], "give --cache first_block, taylorseer or mag"),
    "mag without ratios": (["--cache", "mag"], "--cache-calibrate ratios.json, then pass --cache-option "
                                               "mag_ratios_file=ratios.json"),
    "missing ratios file": (["--cache", "mag", "--cache-option", "mag_ratios_file=nope.json"], "nope.json not found"),
    "calibration without mag": (["--cache", "first_block", "--cache-calibrate", "{tmp}/r.json"],
                                "use it with --cache mag"),
    "mag across a split interval": (["--cache", "mag", "--cache-calibrate", "{tmp}/r.json", "--guidance-interval",
                                     "0,0.5"], "splits the steps between two"),
    "interval outside [0, 1]": (["--guidance-interval", "0,1.5"], "--guidance-interval must lie within [0, 1]"),
    "interval start after end": (["--guidance-interval", "0.6,0.2"], "starts after it ends (0.6 > 0.2)"),
    "malformed interval": (["--guidance-interval", "half"], "takes START,END"),
    "unknown attention backend": (["--attention-backend", "fastest"], "unknown --attention-backend 'fastest'"),
    "unknown offload": (["--offload", "disk"], "unknown --offload 'disk'; choose one of none, model, sequential"),
    "offload on a cpu": (["--offload", "model"], "--offload model keeps the weights in CPU memory"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_speed_option_exits_2_with_one_error_line_and_no_file(case, video_and_tracks, tiny_wan_dir, calls,
                                                                  tmp_path, capsys):
    argv, expected = BAD[case]
    out = tmp_path / "out"
    assert infer(out / "out.mp4", video_and_tracks, tiny_wan_dir, *[a.format(tmp=out) for a in argv]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert not out.exists() and calls["batches"] == []  # refused before anything ran
