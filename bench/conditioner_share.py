"""The track conditioner's forward+backward time as a share of a full Track2View training step
(goal: <= 3%), at 480x832x81 dual-view, Wan-1.3B shape, 1152 tracks, bf16 autocast, on one GPU.

    python bench/conditioner_share.py                       # full checkpointing, as the baseline
    python bench/conditioner_share.py --speed ckpt:selective,compile:1
    python bench/conditioner_share.py --device cpu --tiny   # smoke test

The full step (conditioner + frozen Wan with LoRA + target-half flow-matching loss + fused AdamW) and the
conditioner alone (its forward on the patch-embedded tokens, backward from a random cotangent, with the
recompute of its activation checkpointing when the step uses it) are timed in the same process, median of
--steps after --warmup, torch.cuda.synchronize around each. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_step import Setup, parse_variant, random_tracks, run_ours  # noqa: E402

from track2view.model.transformer import Track2ViewTransformer  # noqa: E402


def time_conditioner(st: Setup, speed) -> dict:
    model = Track2ViewTransformer(st.base_model(), conditioning_config=st.conditioner,
                                  lora=dict(rank=st.rank, alpha=st.rank))
    model.configure_speed(speed)
    model.train()
    gen = torch.Generator(device=st.device).manual_seed(0)
    x = torch.randn(st.B, 16, 2 * st.lf, st.lh, st.lw, generator=gen, device=st.device, dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast(st.device.type, dtype=torch.bfloat16):
        tokens = model.transformer.patch_embedding(x)  # what the hook hands the conditioner
    tracks = random_tracks(st, gen)
    grad = torch.randn(tokens.shape, generator=gen, device=st.device, dtype=tokens.dtype)
    cond = model.conditioning
    st.reset_peak()
    before = torch.cuda.memory_allocated() if st.device.type == "cuda" else 0
    times = []
    for i in range(st.args.warmup + st.args.steps):
        st.sync()
        t0 = time.perf_counter()
        with torch.autocast(st.device.type, dtype=torch.bfloat16):
            out = cond(tokens, tracks, patch_bias=model.transformer.patch_embedding.bias)
        out.backward(grad)
        st.sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**30 if st.device.type == "cuda" else 0.0
    params = sum(p.numel() for p in cond.parameters())
    del model, cond
    return dict(conditioner_s=round(statistics.median(times[st.args.warmup:]), 4),
                conditioner_peak_extra_GiB=round(peak, 2), conditioner_params_M=round(params / 1e6, 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", default="ckpt:full,fused:1", help="train_step.py variant keys, e.g. ckpt:selective")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps (compilation, allocator)")
    ap.add_argument("--tracks", type=int, default=1152)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    args.sync_debug = False
    st = Setup(args)
    name, variant = parse_variant(f"step={args.speed}")
    cond = time_conditioner(st, variant["speed"])
    if st.device.type == "cuda":
        torch.cuda.empty_cache()
    step = run_ours(st, name, variant)
    share = cond["conditioner_s"] / step["s_per_step"]
    print(json.dumps(dict(speed=args.speed, HxWxF=step["HxWxF"], tracks=st.num_tracks, step_s=step["s_per_step"],
                          **cond, share=round(share, 4), goal_share=0.03, within_goal=share <= 0.03,
                          step_peak_GiB=step["peak_GiB"])), flush=True)


if __name__ == "__main__":
    main()
