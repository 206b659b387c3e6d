"""Attention kernels at the dual-view shape, side by side in one process: what a faster backend could gain.

Times one attention call (forward, and forward + backward) on random bf16 q/k/v of shape [B, S, H, D] (default:
the dual-view 480x832x81 Wan-1.3B sequence, S = 65,520 tokens, 12 heads of 128) for each kernel:

* `sdpa`: PyTorch's default dispatch (diffusers' `native` backend; on an H200 it picks cuDNN)
* `sdpa_cudnn`, `sdpa_flash`: SDPA restricted to one backend (diffusers' `_native_cudnn`, `_native_flash`)
* `fa4`: flash-attn-4 (PyPI pre-release `flash-attn-4`, CuTe DSL) through `track2view.model.flash_attn_4`'s op, as
  `--attention-backend flash_4_hub` runs it

and prints one JSON line per kernel: median milliseconds over `--repeats` calls after `--warmup` calls, TFLOP/s
(4 B H S^2 D for the forward; the backward's matmuls are 2.5x that, so 3.5x for forward + backward), and the
largest difference of its output from `sdpa_cudnn`'s. A kernel that cannot run here prints why instead (e.g.
flash-attn-4 not installed).

    python3 bench/attention_kernels.py                        # H200: every kernel, batch 2 (CFG) forward
    python3 bench/attention_kernels.py --batch 1 --backward   # the training shape, forward + backward
    python3 bench/attention_kernels.py --device cpu --tokens 256 --kernels sdpa   # smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = "sdpa,sdpa_cudnn,sdpa_flash,fa4"


def sdpa(backend: SDPBackend | None):
    """q, k, v [B, S, H, D] -> [B, S, H, D] through PyTorch SDPA (which wants [B, H, S, D])."""
    def attend(q, k, v):
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        with sdpa_kernel(backend) if backend is not None else nullcontext():
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return attend


def fa4():
    from track2view.model import flash_attn_4  # the op diffusers' flash_4_hub backend runs here

    flash_attn_4._kernels()  # ImportError: flash-attn-4 not installed
    return lambda q, k, v: flash_attn_4.attend(q, k, v)[0]  # (out, lse)


def kernel(name: str):
    makers = {"sdpa": lambda: sdpa(None), "sdpa_cudnn": lambda: sdpa(SDPBackend.CUDNN_ATTENTION),
              "sdpa_flash": lambda: sdpa(SDPBackend.FLASH_ATTENTION), "fa4": fa4}
    if name not in makers:
        raise SystemExit(f"error: unknown kernel {name!r}; choose among {KERNELS}")
    return makers[name]()


def timed_ms(fn, warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall milliseconds of fn() (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def measure(name: str, qkv, reference, args, device) -> dict:
    row = {"kernel": name, "shape_BSHD": list(qkv[0].shape), "backward": args.backward}
    try:
        attend = kernel(name)
        out = attend(*qkv)
    except Exception as e:  # a kernel that cannot run here (not installed, unsupported GPU or shape)
        return {**row, "error": f"{type(e).__name__}: {e}"[:400]}
    row["max_abs_diff_vs_sdpa_cudnn"] = None if reference is None else float((out - reference).abs().max())
    grad = torch.randn_like(out) if args.backward else None
    leaves = [x.detach().requires_grad_(args.backward) for x in qkv]

    def step():
        result = attend(*leaves)
        if args.backward:
            torch.autograd.backward(result, grad)

    with torch.set_grad_enabled(args.backward):
        ms = timed_ms(step, args.warmup, args.repeats, device)
    b, s, h, d = qkv[0].shape
    flops = 4 * b * h * s * s * d * (3.5 if args.backward else 1.0)  # backward: 2.5x the forward's matmuls
    return {**row, "ms": round(ms, 2), "tflops": round(flops / ms / 1e9, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default=KERNELS, help=f"comma-separated, of {KERNELS}")
    p.add_argument("--batch", type=int, default=2, help="2: a CFG step's batch; 1: a training step's")
    p.add_argument("--tokens", type=int, default=65520, help="dual-view 480x832x81: 2 x 21 x 30 x 52")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--backward", action="store_true", help="time forward + backward (the training step's cost)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device).manual_seed(0)
    qkv = [torch.randn(args.batch, args.tokens, args.heads, args.head_dim, device=device, dtype=dtype, generator=g)
           for _ in range(3)]
    reference = None
    if device.type == "cuda":
        with torch.no_grad():
            reference = sdpa(SDPBackend.CUDNN_ATTENTION)(*qkv)
    print(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "torch": torch.__version__}), flush=True)
    for name in args.kernels.split(","):
        print(json.dumps(measure(name, qkv, reference, args, device)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
