"""Loader throughput on synthetic stage-2 shards at training shapes, as a multiple of what training consumes.

    python bench/loader_throughput.py                  # 480x832x81: latents [16,21,60,104] fp16 per view,
                                                       # prompt [100,4096] fp16, 1152 tracks x 81 frames
    python bench/loader_throughput.py --small          # CPU smoke test at tiny shapes

Writes `--samples` samples into `--shards` shards in a temporary directory, then, for each worker count,
reads them with the training loader (resampled, shuffled, batch `--batch-size`, moved to `--device` like
Lightning does) and reports samples/s after a warm-up. One training step consumes batch-size samples in
`--step-seconds` (the measured baseline step, reference/wan.md), so the multiple is
samples/s / (batch / step_seconds); the goal is >= 10x per GPU with 4 workers. The shards sit in the page
cache after writing, so this measures decoding and collation, not disk reads.
Prints one JSON line per worker count, then a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from track2view.data import schema  # noqa: E402
from track2view.data.loader import make_loader  # noqa: E402
from track2view.io import atomic_path  # noqa: E402

FULL = dict(latent=(16, 21, 60, 104), text=(100, 4096), tracks=1152, frames=81)
SMALL = dict(latent=(16, 3, 8, 12), text=(10, 64), tracks=64, frames=9)


def synthetic_samples(shape: dict, n: int, distinct: int = 4, seed: int = 0):
    """n stage-2 samples (member bytes) cycling over `distinct` random contents (decode cost is the same)."""
    rng = np.random.default_rng(seed)

    def randn_fp16(size) -> bytes:
        return schema.encode_npy(rng.standard_normal(size, np.float32).astype(np.float16))

    t, k = shape["frames"], shape["tracks"]
    pool = []
    for _ in range(distinct):
        tracks = {"uv": rng.uniform(0, 1, (2, t, k, 2)).astype(np.float32),
                  "depth": rng.uniform(1, 5, (2, t, k)).astype(np.float32), "valid": rng.random((2, t, k)) > 0.3}
        pool.append({schema.SOURCE_LATENTS: randn_fp16(shape["latent"]),
                     schema.TARGET_LATENTS: randn_fp16(shape["latent"]), schema.PROMPT_EMBEDS: randn_fp16(shape["text"]), schema.TRACKS: schema.encode_npz(tracks),
                     schema.CAPTION: b"a synthetic caption", schema.META: schema.encode_json({"synthetic": True})})
    for i in range(n):
        yield {"__key__": f"bench-scene{i // 8}-cam01-cam{i % 8 + 2:02d}", **pool[i % distinct]}


def write_shards(root: Path, shape: dict, num_samples: int, num_shards: int) -> int:
    import webdataset as wds

    samples = list(synthetic_samples(shape, num_samples))
    per = -(-num_samples // num_shards)
    for s in range(num_shards):
        with atomic_path(root / f"shard-{s:06d}.tar") as tmp, wds.TarWriter(str(tmp), encoder=False) as w:
            for sample in samples[s * per:(s + 1) * per]:
                w.write(sample)
    return sum(len(v) for k, v in samples[0].items() if not k.startswith("__"))


def measure(root: Path, workers: int, args, shape: dict) -> dict:
    loader = make_loader(root, batch_size=args.batch_size, num_tracks=shape["tracks"], num_workers=workers,
                         max_text_len=args.max_text_len, shuffle_buffer=args.shuffle_buffer, seed=0,
                         persistent_workers=False, pin_memory=args.device.startswith("cuda"))
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    it = iter(loader)
    n_batches = n_samples = 0
    t0 = None
    while True:
        batch = next(it)
        for k in ("source_latents", "target_latents", "prompt_embeds"):
            batch[k] = batch[k].to(device, non_blocking=True)
        batch["tracks"] = batch["tracks"].to(device, non_blocking=True)
        sync()
        n_batches += 1
        if n_batches == 1:
            shapes = {k: list(batch[k].shape) for k in ("source_latents", "prompt_embeds")}
            shapes["tracks.uv"] = list(batch["tracks"].uv.shape)
        now = time.perf_counter()
        if n_batches == args.warmup:
            t0, startup = now, now - start
        elif t0 is not None:
            n_samples += len(batch["key"])
            if now - t0 >= args.seconds or n_batches - args.warmup >= args.max_batches:
                break
    elapsed = time.perf_counter() - t0
    stats = loader.dataset.stats.as_dict()
    del it, loader
    rate = n_samples / elapsed
    needed = args.batch_size / args.step_seconds
    return {"bench": "loader_throughput", "workers": workers, "batch_size": args.batch_size,
            "samples_per_s": round(rate, 2), "batches_timed": n_batches - args.warmup,
            "seconds_timed": round(elapsed, 2), "startup_s": round(startup, 2),
            "needed_samples_per_s": round(needed, 4), "step_seconds": args.step_seconds,
            "multiple_of_step": round(rate / needed, 1), "goal_multiple": args.goal,
            "meets_goal": bool(rate / needed >= args.goal), "skipped": stats["skipped"], "device": args.device,
            "batch_shapes": shapes, "shuffle_buffer": args.shuffle_buffer}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny shapes, few samples, workers 1 and 2 (CPU smoke test)")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default 1 4 8)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--step-seconds", type=float, default=9.0, help="seconds per training step (baseline 9.0)")
    p.add_argument("--goal", type=float, default=10.0, help="wanted multiple of the training consumption")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--text-len", type=int, default=100)
    p.add_argument("--max-text-len", type=int, default=512)
    p.add_argument("--shuffle-buffer", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3, help="batches before timing starts (worker start, buffers)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per worker count")
    p.add_argument("--max-batches", type=int, default=400)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tmp", default=None, help="directory for the temporary shards (default: system temp)")
    args = p.parse_args(argv)
    shape = dict(SMALL if args.small else FULL)
    if args.small:
        args.samples, args.shards, args.seconds, args.max_text_len = min(args.samples, 16), 2, min(args.seconds, 3), 16
        args.shuffle_buffer = min(args.shuffle_buffer, 4)
    else:
        shape["text"] = (args.text_len, shape["text"][1])
    workers = args.workers or ([1, 2] if args.small else [1, 4, 8])

    root = Path(tempfile.mkdtemp(prefix="t2v-loader-bench-", dir=args.tmp))
    try:
        t = time.perf_counter()
        sample_bytes = write_shards(root, shape, args.samples, args.shards)
        print(json.dumps({"bench": "loader_throughput", "setup": "shards written", "samples": args.samples,
                          "shards": args.shards, "sample_mb": round(sample_bytes / 2**20, 2),
                          "seconds": round(time.perf_counter() - t, 1)}), flush=True)
        rows = []
        for w in workers:
            rows.append(measure(root, w, args, shape))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{'workers':>7} {'samples/s':>10} {'MB/s':>8} {'startup s':>9} {'x step':>8}  goal {args.goal:g}x "
          f"(batch {args.batch_size} per {args.step_seconds:g} s step)")
    for r in rows:
        print(f"{r['workers']:>7} {r['samples_per_s']:>10.2f} {r['samples_per_s'] * sample_bytes / 2**20:>8.0f} "
              f"{r['startup_s']:>9.2f} {r['multiple_of_step']:>8.1f}  {'ok' if r['meets_goal'] else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()
