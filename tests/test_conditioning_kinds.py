"""Every conditioning kind behind the one interface: the untrained model equals the bare Wan transformer, a model
refuses another kind's inputs, the camera embedding's convention, the hook composing with diffusers' step caches,
and each kind through train.py fit -> train.py export -> infer.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from track2view.conditioning import CameraConditioning, relative_camera_features
from track2view.inference.trajectories import rotation
from track2view.model.transformer import Track2ViewTransformer
from track2view.testing.tiny import tiny_transformer
from track2view.tracks import PairedTracks

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("tracks", "camera", "none")
COND = {"tracks": dict(width=16, num_layers=1, num_heads=2, uv_fourier_bands=2, disparity_fourier_bands=2)}
B, F, H, W, N = 2, 2, 8, 8, 6


def call_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 16, 2 * F, H, W, generator=g)
    return x, torch.tensor([500.0, 200.0]), torch.randn(B, 5, 32, generator=g)


def kind_inputs(name: str, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if name == "tracks":
        return {"tracks": PairedTracks(torch.rand(B, 2, F, N, 2, generator=g), 1 + torch.rand(B, 2, F, N, generator=g),
                                       torch.rand(B, 2, F, N, generator=g) < 0.8)}
    if name == "cameras":
        return {"cameras": torch.randn(B, F, 12, generator=g)}
    return {}


INPUT_OF = {"tracks": "tracks", "camera": "cameras", "none": None}


def model(kind: str) -> Track2ViewTransformer:
    return Track2ViewTransformer(tiny_transformer(0), conditioning=kind, conditioning_config=COND.get(kind),
                                 lora=dict(rank=4, alpha=8))


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_model_of_every_kind_equals_the_bare_wan_transformer_exactly(kind):
    m, bare = model(kind), tiny_transformer(0)
    x, t, text = call_inputs()
    out = m(x, t, text, **kind_inputs(INPUT_OF[kind]))
    assert torch.equal(out, bare(x, t, text, return_dict=False)[0])


@pytest.mark.parametrize("kind, given", [("tracks", "cameras"), ("camera", "tracks"), ("none", "tracks"),
                                         ("tracks", None), ("camera", None)])
def test_a_model_refuses_the_inputs_of_another_kind_with_one_message(kind, given):
    m = model(kind)
    x, t, text = call_inputs()
    with pytest.raises(ValueError, match=f"conditioning is '{kind}'.*(lacks|was given)"):
        m(x, t, text, **kind_inputs(given))


def test_trained_camera_and_track_kinds_steer_the_output_and_none_cannot():
    x, t, text = call_inputs()
    for kind, name in (("tracks", "tracks"), ("camera", "cameras")):
        m = model(kind)
        with torch.no_grad():
            for p in m.conditioning.parameters():
                p.normal_(0, 0.2)
        a, b = m(x, t, text, **kind_inputs(name, 0)), m(x, t, text, **kind_inputs(name, 1))
        assert (a - b).abs().max() > 1e-3, kind
    assert not list(model("none").conditioning.parameters())


def test_camera_features_are_the_target_relative_to_the_source_at_frame_0():
    t = 9
    rng = np.random.default_rng(0)
    source = np.stack([np.eye(4)] * t)
    source[:, :3, :3] = [rotation((0, 1, 0), 5.0 * i) for i in range(t)]  # a panning source camera
    source[:, :3, 3] = rng.normal(size=(t, 3))
    relative = np.stack([np.eye(4)] * t)
    relative[:, :3, :3] = [rotation((1, 0, 0), 2.0 * i) for i in range(t)]
    relative[:, :3, 3] = np.linspace(0, 1, t)[:, None] * [0.5, 0.0, 2.0]
    target = source[0] @ relative  # the target in the world frame
    features = relative_camera_features(source, target, stride=4)
    assert features.shape == (3, 12) and features.dtype == np.float32
    np.testing.assert_allclose(features, relative[::4, :3, :4].reshape(3, 12), atol=1e-6)
    scaled = relative_camera_features(source, target, stride=4, units_per_metre=2.0)  # scene units -> metres
    np.testing.assert_allclose(scaled.reshape(3, 3, 4)[..., 3], relative[::4, :3, 3] / 2, atol=1e-6)
    with pytest.raises(ValueError, match="4k\\+1"):
        relative_camera_features(source[:8], target[:8])


def test_camera_tokens_go_to_the_target_half_only():
    c = CameraConditioning(token_dim=8)
    tokens = torch.randn(B, 8, 2 * F, 3, 3)
    cameras = torch.randn(B, F, 12)
    assert not c(tokens, cameras).any()  # zero-init
    torch.nn.init.normal_(c.proj.weight)
    out = c(tokens, cameras)
    assert out.shape == (B, 8, 2 * F, 1, 1)
    assert not out[:, :, :F].any() and out[:, :, F:].abs().min() > 0


def test_the_conditioning_hook_composes_with_diffusers_first_block_cache(tiny_wan_dir):
    from diffusers import FirstBlockCacheConfig

    from track2view.inference.pipeline import Track2ViewPipeline

    pipe = Track2ViewPipeline.from_checkpoint(tiny_wan_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for p in pipe.transformer.conditioning.out_proj.parameters():
            p.normal_(0, 0.2)
    video = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    source = pipe.prepare_source(video, "a red ball", "", 32, 48)
    g = torch.Generator().manual_seed(0)
    tracks = PairedTracks.from_projections(torch.rand(2, 3, 12, 2, generator=g), 1 + torch.rand(2, 3, 12, generator=g))

    def render(t):
        return pipe.denoise(source.latents, source.prompt_embeds, {"tracks": t}, source.negative_prompt_embeds,
                            num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(1))

    exact, other = render(tracks), render(tracks.apply(lambda a: a.flip(-1)))
    base = pipe.transformer.transformer
    base.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # never skips: the same result
    try:
        torch.testing.assert_close(render(tracks), exact)
        assert (render(tracks.apply(lambda a: a.flip(-1))) - exact).abs().max() > 1e-4  # the tracks still steer
    finally:
        base.disable_cache()
    # the context-parallel plan splits after the patch embedding, where the hook adds its tokens
    assert "patch_embedding" not in base._cp_plan and "blocks.0" in base._cp_plan
    assert (other - exact).abs().max() > 1e-4


# ---- every kind through the command lines -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_fixtures import write_stage2_shards

    root = tmp_path_factory.mktemp("kind-shards")
    write_stage2_shards(root, num_shards=1, per_shard=2)  # latents of 9-frame 32x48 videos
    return root



def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_fits_exports_and_rerenders_through_the_command_lines(kind, tiny_wan_dir, shards, two_camera_scene,
                                                                        tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["trainer"]["limit_val_batches"] = 0
    config["trainer"]["callbacks"] = [cb for cb in config["trainer"]["callbacks"]
                                      if cb.get("init_args", {}).get("monitor") != "val/loss"]
    if kind != "tracks":  # the demo's conditioning_config is the track conditioner's
        config["model"]["conditioning_config"] = None
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    fit = run("train.py", "fit", "--config", tmp_path / "c.yaml", "--model.model_path", tiny_wan_dir,
              "--model.conditioning", kind, "--data.train_shards", shards, "--data.num_tracks", 10,
              "--data.num_workers", 0, "--data.batch_size", 2, "--model.warmup_steps", 1, "--trainer.max_steps", 2,
              "--trainer.default_root_dir", tmp_path / "run", "--trainer.enable_progress_bar", "false")
    assert fit.returncode == 0, fit.stderr[-3000:]
    export = tmp_path / "export"
    exported = run("train.py", "export", "--ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt", "--out", export)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert '"conditioning": "%s"' % kind in (export / "track2view.json").read_text()

    video, out = two_camera_scene / "videos" / "cam01.mp4", tmp_path / "out.mp4"
    common = ["infer.py", "--video", video, "--model", tiny_wan_dir, "--checkpoint", export, "--num-frames", 9,
              "--height", 32, "--width", 48, "--steps", 2, "--num-queries", 32, "--device", "cpu", "--out", out]
    camera = ["--tracker", "oracle", "--trajectory", "arc_left", "--amount", 10]
    ok, wrong = (common + camera, common) if kind != "none" else (common, common + camera)
    refused = run(*wrong)
    assert refused.returncode == 2 and not out.exists(), refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and ("--trajectory" in last), last
    rendered = run(*ok)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    from track2view.io import read_video

    assert read_video(out)[0].shape == (9, 32, 48, 3)
