"""train.py's start-up checks: a bad configuration value fails before any work with one clear line on
stderr (`train.py: error: ...`), exit status 2 and no traceback (real subprocesses, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("T2V_TRACEBACK", None)
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in lines if line.startswith("train.py: error:")]
    assert len(errors) == 1, lines
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert len(lines) <= 2, lines  # the error, at most one library warning line


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_fixtures import write_stage2_shards

    root = tmp_path_factory.mktemp("shards")
    write_stage2_shards(root, num_shards=1, per_shard=2)
    return root


# Real subprocesses for the three start-up failures a user meets first (about 5 s each: Lightning's import).
@pytest.mark.parametrize("override, needles", [
    (["--model.model_path", "/no/such/wan"], ["model.model_path", "/no/such/wan", "transformer/config.json"]),
    (["--model.height", "470"], ["model.height=470", "multiple of 16"]),
    (["--model.num_frames", "80"], ["model.num_frames=80", "4k+1"]),
])
def test_bad_config_value_fails_with_one_clear_line(override, needles, tiny_wan_dir, shards):
    args = ["fit", "--config", "configs/demo.yaml", "--model.model_path", str(tiny_wan_dir),
            "--data.train_shards", str(shards), *override]
    assert_one_error_line(run_train(*args), *needles)


# The same path in-process (train.main), for the other checks.
@pytest.mark.parametrize("override, needles", [
    (["--model.width", "840"], ["model.width=840", "multiple of 16"]),
    (["--model.lr_schedule", "linear"], ["model.lr_schedule", "constant", "cosine"]),
    (["--model.model_path", "null"], ["model.model_path", "model.wan_config", "neither"]),
    (["--model.gradient_checkpointing", "some"], ["model.gradient_checkpointing", "selective"]),
    (["--model.flow_matching", "{sigma_sampling: uniform}"], ["model.flow_matching", "sigma_sampling"]),
])
def test_bad_config_value_in_process(override, needles, tiny_wan_dir, shards, capsys):
    import train

    code = train.main(["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--model.model_path", str(tiny_wan_dir),
                       "--data.train_shards", str(shards), *override])
    err = capsys.readouterr().err
    assert_one_error_line(subprocess.CompletedProcess([], code, "", err), *needles)


def test_export_of_missing_checkpoint(tmp_path, capsys):
    import train

    code = train.main(["export", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "out")])
    assert_one_error_line(subprocess.CompletedProcess([], code, "", capsys.readouterr().err), "checkpoint not found",
                          "nope.ckpt")


@pytest.mark.parametrize("config", ["demo.yaml", "synthetic_finetune.yaml", "wan2.1_t2v_1.3b.yaml", "wan2.1_t2v_14b.yaml"])
def test_configs_parse(config, capsys):
    """Every shipped config is valid for the CLI (types, class paths, callback and strategy arguments)."""
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "track2view.training.callbacks.NonFiniteLossGuard" in printed and "model_path" in printed


def test_ddp_two_processes_fit_with_validation_video(tmp_path, tiny_wan_dir):
    """`--trainer.devices 2 --trainer.strategy ddp` on CPU through the CLI: validation (loss synced over ranks)
    and the rank-0 video render must not deadlock the other rank; checkpoints and videos are written once."""
    from data_fixtures import write_stage2_shards

    shards = tmp_path / "shards"
    write_stage2_shards(shards, num_shards=2, per_shard=2)  # validation needs a shard per rank
    root = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "fit", "--config", "configs/demo.yaml", "--model.model_path", str(tiny_wan_dir),
         "--data.train_shards", str(shards), "--data.val_shards", str(shards), "--data.num_tracks", "10",
         "--data.num_workers", "0", "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
         "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert len(list(root.glob("logs/version_*/videos/*.mp4"))) == 2


def test_torchrun_two_node_ranks_on_one_host_train_one_run(tmp_path, tiny_wan_dir):
    """docs/training.md's multi-node command, simulated: two torchrun launches on this host, node ranks 0 and 1 of
    `--nnodes 2`, form one 2-process job (Lightning's torchrun environment) that trains and checkpoints once."""
    import socket

    from data_fixtures import write_stage2_shards

    shards = tmp_path / "shards"
    write_stage2_shards(shards, num_shards=2, per_shard=2)  # a shard per global rank
    root = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
         str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
         "train.py", "fit", "--config", "configs/demo.yaml", "--model.model_path", str(tiny_wan_dir),
         "--data.train_shards", str(shards), "--data.val_shards", str(shards), "--data.num_tracks", "10",
         "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
         "--trainer.num_nodes", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "2",
         "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(root),
         "--trainer.enable_progress_bar", "false"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    for node, out in zip(nodes, outputs):
        assert node.returncode == 0, out[-3000:]
    members = {m for out in outputs for m in ("MEMBER: 1/2", "MEMBER: 2/2") if m in out}
    assert members == {"MEMBER: 1/2", "MEMBER: 2/2"}, outputs[0][-3000:]  # c10d gives out the ranks
    from track2view.training.checkpoints import load_training_checkpoint

    assert load_training_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 2
