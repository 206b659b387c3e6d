"""Issue 15 item 6: `train.py fit` killed with SIGKILL at random points and resumed with `--ckpt_path last`, again
and again, ends with the parameters of the uninterrupted run (to 1e-6). Real subprocesses, CPU, the tiny Wan, two
DataLoader workers that read ahead; the shards hold distinct samples, a broken one and one of another shape, so
the order of the samples, their replacements and the track subsets all have to continue exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_fixtures import stage2_sample, write_shard
from track2view.data import schema

ROOT = Path(__file__).resolve().parents[1]
STEPS, KILLS = 10, 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 shards x 3 distinct samples; one with NaN latents (skipped, replaced) and one of another latent frame count
    (shape_mismatch: skipped, replaced). Batch 2 x 10 steps crosses the 9-sample epoch boundary twice."""
    root = tmp_path_factory.mktemp("resume-shards")
    for i in range(3):
        samples = [stage2_sample(f"f24-scene{i}-cam01-cam{j + 2:02d}", seed=3 * i + j, num_tracks=14) for j in range(3)]
        if i == 1:
            bad = stage2_sample("f24-scene1-cam01-cam09", seed=40)
            latents = schema.decode_npy(bad[schema.SOURCE_LATENTS])
            latents[0, 0, 0, 0] = np.nan
            samples[1] = {**bad, schema.SOURCE_LATENTS: schema.encode_npy(latents)}
            samples[2] = stage2_sample("f24-scene1-cam01-cam08", seed=41, latent_frames=2)
        write_shard(root / f"shard-{i:06d}.tar", samples)
    return root


def _config(path: Path) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint") and cb.get("init_args", {}).get("monitor") == "step":
            cb["init_args"]["every_n_train_steps"] = 1
    config["trainer"]["callbacks"] = [cb for cb in config["trainer"]["callbacks"]
                                      if cb.get("init_args", {}).get("monitor") != "val/loss"
                                      and not cb["class_path"].endswith("ValidationVideo")]
    config["trainer"].update(limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                             logger=config["trainer"]["logger"][:1])
    path.write_text(yaml.safe_dump(config))
    return path


def _command(config: Path, root: Path, tiny_wan_dir, shards, *extra) -> list[str]:
    return [sys.executable, "train.py", "fit", "--config", str(config), "--model.model_path", str(tiny_wan_dir),
            "--data.train_shards", str(shards), "--data.val_shards", "null", "--data.num_tracks", "10",
            "--data.num_workers", "2", "--data.batch_size", "2", "--model.warmup_steps", "2",
            "--trainer.max_steps", str(STEPS), "--trainer.default_root_dir", str(root),
            "--trainer.log_every_n_steps", "1", *extra]


def _step(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def _run_until_killed(command: list[str], ckpt: Path, kill_after: int, delay: float) -> int:
    """Start `command`; once its checkpoint holds step >= kill_after, wait `delay` s and SIGKILL its process group
    (the DataLoader workers too). Return the step of the checkpoint it left."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _step(ckpt) < kill_after:
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before it was killed: {proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint within 120 s")
            time.sleep(0.05)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    return _step(ckpt)


def test_killed_and_resumed_runs_end_where_the_uninterrupted_run_ends(tmp_path, tiny_wan_dir, shards):
    import train

    config = _config(tmp_path / "c.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert train.main(_command(config, tmp_path / "straight", tiny_wan_dir, shards)[2:]) == 0  # in this process

    rng, root = random.Random(15), tmp_path / "killed"
    ckpt = root / "checkpoints" / "last.ckpt"
    command, reached = _command(config, root, tiny_wan_dir, shards), [0]
    while len(reached) <= KILLS and reached[-1] + 2 < STEPS:  # kill at a random step, a random time into it
        target = rng.randint(reached[-1] + 1, min(reached[-1] + 3, STEPS - 2))
        reached.append(_run_until_killed(command, ckpt, target, delay=rng.uniform(0.0, 0.4)))
        # == STEPS: on a loaded machine the run can finish its last steps within `delay`, before the kill lands
        assert reached[-2] < reached[-1] <= STEPS, reached
        command = _command(config, root, tiny_wan_dir, shards, "--ckpt_path", "last")
    assert len([step for step in reached[1:] if step < STEPS]) >= 2, reached  # killed mid-run twice at least
    final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]

    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    assert set(a["state_dict"]) == set(b["state_dict"])
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=0, atol=1e-6, msg=name)
    assert any(v.abs().max() > 0 for k, v in a["state_dict"].items() if "out_proj" in k)  # it trained
    assert a["Track2ViewDataModule"]["position"] == b["Track2ViewDataModule"]["position"] == 2 * STEPS
