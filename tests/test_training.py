"""Training end to end on CPU through the real entry point (`train.main` = LightningCLI + configs/demo.yaml),
on tiny stage-2 shards and the tiny random-init Wan: logging, trainable-only checkpoints, kill-and-resume,
export -> inference, the non-finite-loss guard."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

import train
from data_fixtures import stage2_sample, write_shard

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


# ---- test-only callbacks (named by class_path in the generated configs) ---------------------------------------
class CrashAtStep(Callback):
    """Simulates a crash (after the step's checkpoint is written) once `global_step` reaches `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


class PoisonBatches(Callback):
    """Makes the loss of the given steps infinite by scaling the batch's target latents by inf."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            batch["target_latents"].mul_(float("inf"))


# ---- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of identical samples (different keys): the data is the same whatever the stream order, so a
    resumed run must match an uninterrupted one exactly (the loader re-seeds its stream on resume)."""
    root = tmp_path_factory.mktemp("latent-shards")
    for i in range(2):
        write_shard(root / f"shard-{i:06d}.tar", [stage2_sample(f"f24-scene{i}-cam01-cam{j + 2:02d}", seed=0)
                                                  for j in range(3)])
    return root


def make_config(path: Path, *, every_n_steps: int = 1, val_every: int | None = None, extra_callbacks=(),
                max_consecutive: int = 5, wandb: bool = False) -> Path:
    """configs/demo.yaml with test-sized settings, written to `path`."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    if wandb:
        config["trainer"]["logger"].append({"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {
            "project": "track2view-test", "save_dir": "${trainer.default_root_dir}", "offline": True}})
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint") and cb.get("init_args", {}).get("monitor") == "step":
            cb["init_args"]["every_n_train_steps"] = every_n_steps
        if cb["class_path"].endswith("NonFiniteLossGuard"):
            cb["init_args"]["max_consecutive"] = max_consecutive
    if val_every is None:
        config["trainer"]["limit_val_batches"] = 0
        config["trainer"]["callbacks"] = [cb for cb in config["trainer"]["callbacks"]
                                          if cb.get("init_args", {}).get("monitor") != "val/loss"]
    else:
        config["trainer"]["val_check_interval"] = val_every
        config["trainer"]["limit_val_batches"] = 1
    config["trainer"]["callbacks"] += list(extra_callbacks)
    config["trainer"]["enable_progress_bar"] = False
    config["trainer"]["enable_model_summary"] = False
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, root: Path, tiny_wan_dir, shards, *args) -> int:
    return train.main(["fit", "--config", str(config), "--model.model_path", str(tiny_wan_dir),
                       "--data.train_shards", str(shards), "--data.val_shards", str(shards),
                       "--data.num_tracks", "10", "--data.num_workers", "0", "--data.batch_size", "2",
                       "--model.warmup_steps", "2", "--trainer.max_steps", str(STEPS),
                       "--trainer.default_root_dir", str(root), "--trainer.log_every_n_steps", "1", *args])


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics(root: Path) -> list[dict]:
    files = sorted(root.glob("logs/version_*/metrics.csv"))
    return [row for f in files for row in csv.DictReader(f.open())]


# ---- tests ------------------------------------------------------------------------------------------------------
def test_fit_logs_validates_and_saves_only_trainable(tmp_path, tiny_wan_dir, shards):
    root = tmp_path / "run"
    config = make_config(tmp_path / "c.yaml", every_n_steps=2, val_every=2, wandb=True)
    assert fit(config, root, tiny_wan_dir, shards) == 0

    rows = metrics(root)
    logged = set().union(*(k for r in rows for k in [{k for k, v in r.items() if v}]))
    for key in ("train/loss", "train/grad_norm", "lr/decay", "perf/samples_per_s", "perf/tokens_per_s",
                "val/loss", "val/render_latent_mse", "train/nonfinite_steps"):
        assert key in logged, f"{key} not logged; have {sorted(logged)}"
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    videos = list(root.glob("logs/version_*/videos/step*.mp4"))
    assert len(videos) == 2, videos  # validation at steps 2 and 4: source | generated | target
    from track2view.io import read_video

    frames, _ = read_video(videos[0])
    assert frames.shape[1:3] == (32, 3 * 48), frames.shape  # tiny VAE: 4x6 latents -> 32x48 px, 3 panels
    # W&B offline (no network): a run directory to `wandb sync`, with the same videos
    runs = list((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and len(list(runs[0].glob("files/media/videos/val/render_*.mp4"))) == 2

    ckpts = root / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best-step*.ckpt"))
    assert sorted(p.name for p in ckpts.glob("step*.ckpt")) == ["step0000002.ckpt", "step0000004.ckpt"]
    assert not list(ckpts.glob(".*tmp*")), "temporary files left behind"
    ckpt = load_ckpt(ckpts / "last.ckpt")
    assert ckpt["global_step"] == STEPS
    keys = set(ckpt["state_dict"])
    assert keys and all(".lora_" in k or ".conditioning." in k for k in keys), sorted(keys)[:5]
    assert not any("blocks.0.attn1.to_q.base_layer" in k or "patch_embedding" in k for k in keys)
    assert ckpt["optimizer_states"][0]["state"], "optimizer state missing"
    assert ckpt["lr_schedulers"][0]["last_epoch"] == STEPS
    assert ckpt["datamodule_hyper_parameters"]["num_tracks"] == 10


def test_kill_and_resume_matches_uninterrupted(tmp_path, tiny_wan_dir, shards):
    config = make_config(tmp_path / "c.yaml")
    assert fit(config, tmp_path / "straight", tiny_wan_dir, shards) == 0

    crash = {"class_path": "test_training.CrashAtStep", "init_args": {"step": 2}}
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_config(tmp_path / "crash.yaml", extra_callbacks=[crash]), tmp_path / "resumed", tiny_wan_dir, shards)
    assert load_ckpt(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert fit(config, tmp_path / "resumed", tiny_wan_dir, shards, "--ckpt_path", "last") == 0

    a = load_ckpt(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = load_ckpt(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["lr_schedulers"][0]["_last_lr"] == b["lr_schedulers"][0]["_last_lr"]
    assert set(a["state_dict"]) == set(b["state_dict"])
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)
    # The run trained (LoRA B and the conditioning's zero-initialised output moved away from 0).
    assert any(v.abs().max() > 0 for k, v in a["state_dict"].items() if "out_proj" in k)
    # The resumed part logged steps 3 and 4 only: no repeated or skipped steps.
    steps = [int(r["step"]) for r in metrics(tmp_path / "resumed") if r.get("train/loss")]
    assert steps == list(range(STEPS)), steps


def test_export_loads_into_inference_with_identical_outputs(tmp_path, tiny_wan_dir, shards):
    from track2view.training.module import Track2ViewModule
    from track2view.model.transformer import Track2ViewTransformer
    from track2view.tracks import PairedTracks

    root = tmp_path / "run"
    assert fit(make_config(tmp_path / "c.yaml"), root, tiny_wan_dir, shards) == 0
    ckpt, out = root / "checkpoints" / "last.ckpt", tmp_path / "export"
    assert train.main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    assert train.main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0  # an earlier export: replaced
    before = sorted(p.name for p in tmp_path.iterdir())
    assert train.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path)]) == 2  # a user folder: refused
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    for name in ("pytorch_lora_weights.safetensors", "conditioning/config.json",
                 "conditioning/diffusion_pytorch_model.safetensors", "track2view.json"):
        assert (out / name).is_file(), name

    # Reference: the training module with the checkpoint's trainable tensors.
    saved = load_ckpt(ckpt)
    module = Track2ViewModule(**{k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")})
    module.configure_model()
    module.load_trainable_state_dict(saved["state_dict"])
    inference = Track2ViewTransformer.from_trained(tiny_wan_dir, out, torch_dtype=torch.float32)

    g = torch.Generator().manual_seed(0)
    b, f, n = 1, 3, 10
    hidden = torch.randn(b, 16, 2 * f, 4, 6, generator=g)
    text = torch.randn(b, 7, 32, generator=g)
    tracks = PairedTracks.from_projections(torch.rand(b, 2, f, n, 2, generator=g) * 0.9 + 0.05,
                                           torch.rand(b, 2, f, n, generator=g) + 1.0)
    t = torch.tensor([500.0])
    with torch.no_grad():
        expected = module.model.eval()(hidden, t, text, tracks=tracks)
        got = inference.eval()(hidden, t, text, tracks=tracks)
        base = Track2ViewTransformer.from_pretrained(tiny_wan_dir, torch_dtype=torch.float32).eval()(hidden, t, text,
                                                                                                      tracks=tracks)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - base).abs().max() > 1e-6, "the export changed nothing: LoRA/conditioning not applied"


def test_nonfinite_loss_skips_the_step_and_repeated_ones_stop(tmp_path, tiny_wan_dir, shards, capsys):
    poison = {"class_path": "test_training.PoisonBatches", "init_args": {"steps": [1, 2, 3]}}
    config = make_config(tmp_path / "c.yaml", extra_callbacks=[poison], max_consecutive=2)
    root = tmp_path / "run"
    assert fit(config, root, tiny_wan_dir, shards) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and "NaN/inf for 2 consecutive steps" in lines[0], err[-2000:]
    assert "Traceback" not in err

    # Step 1 was skipped: the checkpoint after step 2 (steps 1 and 2 poisoned) equals the one after step 1.
    ckpts = {p.name: load_ckpt(p) for p in (root / "checkpoints").glob("step*.ckpt")}
    assert set(ckpts) == {"step0000001.ckpt", "step0000002.ckpt"}, set(ckpts)
    # (top-k keeps 2: steps 1 and 2; step 2's weights must equal step 1's and be finite)
    one, two = ckpts["step0000001.ckpt"]["state_dict"], ckpts["step0000002.ckpt"]["state_dict"]
    for k in one:
        assert torch.isfinite(two[k]).all(), k
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=0, msg=k)
    assert ckpts["step0000002.ckpt"]["global_step"] == 2


def test_two_processes_match_one_with_accumulation():
    """bench/zero1_scaling.py's logic on CPU (DDP over gloo, tiny model): 2 processes x 1 micro-batch and
    1 process x 2 accumulated micro-batches see the same data and draw the same noise, so their per-step losses
    agree exactly; the 2-process run's checkpoint holds only trainable tensors and exports."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "bench/zero1_scaling.py", "--smoke", "--model", "tiny", "--height", "32",
                           "--width", "48", "--frames", "9", "--tracks", "16", "--steps", "3", "--warmup", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and len(lines) == 4, (proc.stdout[-2000:], proc.stderr[-2000:])
    summary, two = lines[-1], lines[2]
    assert summary["max_rel_loss_diff"] < 1e-5, summary
    assert len(summary["losses_1gpu"]) == 3
    check = two["checkpoint"]
    assert check["frozen_saved"] == 0 and check["trainable_saved"] == check["trainable"] > 0, check
    assert check["max_abs_diff"] == 0.0 and "export_ok" in check, check


def test_the_size_checks_use_the_model_directory_vae_strides_and_the_patch(tmp_path):
    """A VAE compressing space by 4 (experiments/synthetic/model.json) expects 32 x 32 latents of 128 px videos;
    a directory without a VAE config, or no directory, means Wan-2.1's 8 and 4. Video sizes must be multiples of
    VAE stride x patch: 32 for an 8x VAE under a 1 x 4 x 4 patch."""
    import json

    from track2view.testing.tiny import TINY_TRANSFORMER
    from track2view.training.module import ConfigError, Track2ViewModule, vae_strides

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"scale_factor_spatial": 4, "scale_factor_temporal": 4}))
    assert vae_strides(str(tmp_path)) == (4, 4)
    assert vae_strides(str(tmp_path / "elsewhere")) == (8, 4)
    assert vae_strides(None) == (8, 4)
    patch4 = {**TINY_TRANSFORMER, "patch_size": (1, 4, 4)}
    Track2ViewModule(wan_config=patch4, height=64, width=96, num_frames=9)
    with pytest.raises(ConfigError, match="model.height=48 is not a positive multiple of 32"):
        Track2ViewModule(wan_config=patch4, height=48, width=96, num_frames=9)
