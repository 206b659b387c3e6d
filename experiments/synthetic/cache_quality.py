r"""The step caches on a trained model (issue 11): how much each preset skips, and what it costs in quality.

    python experiments/synthetic/cache_quality.py --test outputs/synthetic/data/test --clips 16 \
        --out outputs/cache_quality
    python experiments/synthetic/cache_quality.py --test outputs/synthetic/data/test --clips 32 --steps 50 \
        --model outputs/synthetic/wan --checkpoint outputs/synthetic/exports/tracks --device cuda --out OUT

Re-renders the first `--clips` clips of the test split (source cam01 -> targets cam02..) with a trained `tracks`
model (default: the shipped one) as the experiment's generate stage does (30 steps, no guidance), once exactly and
once per preset with infer.py's defaults; `mag` uses ratios calibrated on the first clip's exact re-render
(`--cache-calibrate`). Prints one JSON line per preset: the share of transformer calls that ran every block (what
sets a preset's speed on any model: docs/benchmarks.md measures the seconds per full pass at 480p), and the mean
PSNR against the exact re-render and against the true target. Random weights cannot give the first (first_block
and mag decide from the activations), which is why it is measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PRESETS = ("none", "first_block", "taylorseer", "mag")
OPTIONS = dict(tracker="oracle", query_frames="first_last", num_queries=128, guidance=1.0, seed=0)  # run.sh generate


def rerenderer(args, preset: str, options: list[str] = (), calibrate_to: Path | None = None):
    from track2view.inference.rerender import Rerenderer
    from track2view.inference.speed import SpeedOptions
    from track2view.inference.step_cache import FullPassCounter, parse_step_cache

    cache = parse_step_cache(preset, list(options), str(calibrate_to) if calibrate_to else None)
    r = Rerenderer(args.model, args.checkpoint, device=args.device, dtype="float32", speed=SpeedOptions(cache=cache))
    return r, FullPassCounter(r.pipeline().transformer.transformer)


def psnr(generated: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of a video [T, H, W, 3] uint8 against another."""
    from track2view.eval.metric import Clip
    from track2view.eval.metrics.reference_pixels import ReferencePixels

    return float(ReferencePixels()(Clip(key="clip", generated=generated, target=reference))["psnr"])


def main(argv=None) -> int:
    from track2view.eval.benchmarks.synthetic import synthetic_manifest
    from track2view.eval.generation import render_clip
    from track2view.io import read_video

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test", required=True,
                   help="the experiment's test split (run.sh data: outputs/synthetic/data/test)")
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--targets-per-scene", type=int, default=3)
    p.add_argument("--size", type=int, default=128, help="the re-renders' height and width (run.sh SIZE)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps (run.sh EVAL_STEPS)")
    p.add_argument("--model", default=str(HERE / "shipped" / "wan"), help="the Wan folder (run.sh model: OUT/wan)")
    p.add_argument("--checkpoint", default=str(HERE / "shipped" / "tracks"),
                   help="a tracks arm's export (run.sh export: OUT/exports/tracks)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="a new folder for the re-renders")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"error: --out {out} exists; give a new folder", file=sys.stderr)
        return 2
    manifest = synthetic_manifest(args.test, targets_per_scene=args.targets_per_scene)
    if not 1 <= args.clips <= len(manifest.clips):
        print(f"error: --clips {args.clips}: the test split has {len(manifest.clips)} clips", file=sys.stderr)
        return 2
    clips, options = manifest.clips[:args.clips], dict(OPTIONS, height=args.size, width=args.size, steps=args.steps)
    ratios = out / "mag_ratios.json"
    calibration, _ = rerenderer(args, "mag", calibrate_to=ratios)
    render_clip(calibration, options, manifest, clips[0], out / "calibration")
    targets = {e.key: read_video(manifest.video_path(e.target_video))[0] for e in clips}  # read once
    exact = {}
    for preset in PRESETS:
        r, counter = rerenderer(args, preset, [f"mag_ratios_file={ratios}"] if preset == "mag" else [])
        vs_exact, vs_target = [], []
        for entry in clips:
            video = read_video(render_clip(r, options, manifest, entry, out / preset) / "video.mp4")[0]
            if preset == "none":
                exact[entry.key] = video
            else:
                vs_exact.append(psnr(video, exact[entry.key]))
            vs_target.append(psnr(video, targets[entry.key]))
        print(json.dumps({"preset": preset, "clips": len(clips), "transformer_calls": counter.calls,
                          "full_passes": counter.full, "full_share": round(counter.full / counter.calls, 3),
                          "psnr_vs_exact_db": round(float(np.mean(vs_exact)), 2) if vs_exact else None,
                          "psnr_vs_target_db": round(float(np.mean(vs_target)), 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
