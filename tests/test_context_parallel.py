"""Context parallelism (track2view/inference/parallel.py): the split choice and its checks, and a torchrun run of 2
processes on the CPU (gloo, tests/context_parallel_worker.py) whose re-renders equal this process's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from context_parallel_worker import denoised, tiny_model
from track2view.inference.parallel import (ContextDegrees, ContextParallel, ContextSplit, attention_backend_for,
                                           check_speed_options, choose_split, from_rank0)

ROOT = Path(__file__).resolve().parents[1]
T, H, W = 9, 32, 48
INFER = ["--num-frames", str(T), "--height", str(H), "--width", str(W), "--steps", "2", "--num-queries", "64",
         "--device", "cpu", "--tracker", "oracle", "--trajectory", "arc_left", "--amount", "10",
         "--prompt", "a red ball"]


@pytest.mark.parametrize("world, heads, asked, split", [
    (2, 12, {}, (2, 1)), (3, 12, {}, (3, 1)), (4, 12, {}, (4, 1)), (6, 12, {}, (6, 1)), (8, 12, {}, (4, 2)),
    (8, 40, {}, (8, 1)), (5, 12, {}, (1, 5)), (8, 12, {"ring": 4}, (2, 4)), (8, 12, {"ulysses": 2}, (2, 4)),
    (8, 12, {"ulysses": 2, "ring": 4}, (2, 4))])
def test_ulysses_takes_the_largest_degree_dividing_the_heads_and_ring_the_rest(world, heads, asked, split):
    assert choose_split(world, heads, ContextDegrees(**asked)) == ContextSplit(*split)


@pytest.mark.parametrize("world, asked, message", [
    (1, {}, "several processes; launch with torchrun --nproc-per-node N"),
    (2, {"ulysses": 4}, "--ulysses-degree 4 does not divide the 2 processes.*choose one of 1, 2"),
    (8, {"ring": 3}, "--ring-degree 3 does not divide the 8 processes"),
    (8, {"ulysses": 8}, "Ulysses degree of 8 does not divide the model's 12 attention heads; use --ulysses-degree "
                        "1 or 2 or 4"),
    (8, {"ulysses": 2, "ring": 2}, "--ulysses-degree 2 x --ring-degree 2 must equal the 8 processes")])
def test_a_bad_degree_is_one_message_naming_the_sizes(world, asked, message):
    with pytest.raises(ValueError, match=message):
        choose_split(world, 12, ContextDegrees(**asked))


def test_ring_attention_runs_on_a_backend_with_the_log_sum_exp():
    assert attention_backend_for(ContextSplit(4, 1), None, on_cuda=True) is None  # Ulysses: PyTorch SDPA
    assert attention_backend_for(ContextSplit(4, 2), None, on_cuda=True) == "_native_cudnn"
    assert attention_backend_for(ContextSplit(4, 2), "flash", on_cuda=True) == "flash"
    for backend in (None, "native"):
        with pytest.raises(ValueError, match="ring attention.*log-sum-exp.*--attention-backend _native_cudnn"):
            attention_backend_for(ContextSplit(1, 2), backend, on_cuda=backend is not None)


def test_every_dit_call_must_split_into_equal_parts():
    full, one_way = (ContextParallel(ContextSplit(4, 2), "cpu", None, (1, 2, 2), kv) for kv in (False, True))
    for context in (full, one_way):
        context.check_size(480, 832, 81)  # 2 x 32,760 tokens; 32,760 per call with the source KV cache
    full.check_size(32, 32, 9)  # 2 x 3 x 2 x 2 = 24 tokens, 12 per half
    with pytest.raises(ValueError, match="32x32x9 with one-way attention: the DiT sees 12 tokens per call, which do "
                                         "not split into 8 equal parts.*run on 2, 3, 4, 6, 12 processes"):
        one_way.check_size(32, 32, 9)


def test_options_that_would_decide_per_process_are_refused():
    check_speed_options("none", "taylorseer", False)
    check_speed_options("none", "mag", False)
    for args, message in ((("model", "none", False), "--offload model"), (("none", "first_block", False),
                          "--cache first_block decides from each process's share"),
                          (("none", "mag", True), "--cache-calibrate.*calibrate in one process")):
        with pytest.raises(ValueError, match=message):
            check_speed_options(*args)


def test_without_a_process_group_rank0_computes_for_itself():
    assert from_rank0(lambda: 3, shared=lambda x: None) == 3


# ---- 2 processes --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(tiny_wan_dir, tmp_path_factory):
    """A full-attention and a one-way export whose LoRA and conditioning are nonzero (as if trained)."""
    tmp = tmp_path_factory.mktemp("exports")
    exports = {}
    for attention in ("full", "one_way"):
        model = tiny_model(attention, fuse=False)
        per_token = {"flow_matching": {"timestep_mode": "per_token"}} if attention == "one_way" else {}
        exports[attention] = str(model.save_trained(tmp / attention, training=per_token))
    return exports


@pytest.fixture(scope="module")
def split_run(two_camera_scene, tiny_wan_dir, exports, tmp_path_factory):
    """The worker's torchrun run: its output folder and the completed process."""
    out = tmp_path_factory.mktemp("context_parallel")
    infer_args = ["--video", str(two_camera_scene / "videos" / "cam01.mp4"), "--model", str(tiny_wan_dir), *INFER]
    config = out / "config.json"
    config.write_text(json.dumps({"out": str(out), "infer_args": infer_args, "exports": exports}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(ROOT / "tests" / "context_parallel_worker.py"), str(config)],
                         capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]
    return out, run, infer_args


@pytest.mark.parametrize("attention", ["full", "full_compiled", "one_way"])
def test_the_split_denoising_loop_equals_one_process(split_run, attention):
    out, _, _ = split_run
    one_process = denoised(attention.removesuffix("_compiled"))
    torch.testing.assert_close(torch.load(out / f"latents_{attention}.pt"), one_process, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ["full", "one_way"])
def test_the_split_rerender_equals_one_process_and_only_rank0_writes(split_run, exports, name, tmp_path, monkeypatch):
    import infer
    import track2view.inference.rerender as rerender
    from context_parallel_worker import capture_pipeline_frames

    out, _, infer_args = split_run
    monkeypatch.setattr(rerender, "write_outputs", rerender.write_outputs)  # restored after the test
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(variable, "error")  # infer.main sets them
    assert sorted(p.name for p in (out / name).iterdir()) == ["render.mp4"]
    capture_pipeline_frames(tmp_path / "frames")
    assert infer.main([*infer_args, "--checkpoint", exports[name], "--out", str(tmp_path / name / "render.mp4")]) == 0
    np.testing.assert_allclose(np.load(out / "frames" / f"{name}.npy"), np.load(tmp_path / "frames" / f"{name}.npy"),
                               rtol=0, atol=2e-5)


def test_a_bad_degree_under_torchrun_is_one_error_line(split_run):
    out, run, _ = split_run
    errors = [line for line in run.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and "--ulysses-degree 4 does not divide the 2 processes" in errors[0], errors
    assert not (out / "bad.mp4").exists()
