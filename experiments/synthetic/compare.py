r"""Paired comparisons of the experiment's rows from their per-clip scores: the figures docs/results.md quotes
beside the table.

    python experiments/synthetic/compare.py --out-dir RUN --arm tracks --against "camera none tracks_dropped" \
        --rows "tracks camera none source_copy autoencoder target_copy" --frames 0,12,24

Prints: the static-camera baseline of RotErr (identity poses scored against every clip's true target cameras);
per row the medians of RotErr / TransErr and the mean PSNR at `--frames`; per other arm the paired difference
`--arm` minus it (mean, standard error, clips, clips where `--arm` is better) of PSNR, SSIM, RotErr, TransErr,
over the clips where both scores are finite (pose failures are left out pairwise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from summarize import frame_psnrs, true_targets  # this folder's (the script's own directory is on sys.path)

SCORES = (("psnr", "PSNR (dB)", 1), ("ssim", "SSIM", 1), ("rot_err_deg", "RotErr (deg)", -1),
          ("trans_err", "TransErr", -1))  # (name, label, +1: higher is better)


def clip_scores(out_dir: Path, row: str) -> dict[str, dict]:
    """{clip key: its scores at the longest frame count} of RUN/eval/scores/<row>/clips/*.json."""
    out = {}
    for path in sorted((out_dir / "eval" / "scores" / row / "clips").glob("*.json")):
        record = json.loads(path.read_text())
        out[record["key"]] = record["scores"][max(record["scores"], key=int)]
    return out


def values(scores: dict, keys: list[str], name: str) -> np.ndarray:
    return np.array([np.nan if scores[k].get(name) is None else scores[k][name] for k in keys], dtype=np.float64)


def static_camera_rot_err(manifest) -> np.ndarray:
    from track2view.eval.metrics.pose_errors import paper_errors

    return np.array([paper_errors(c.target_c2w, np.stack([np.eye(4)] * len(c.target_c2w)))["rot_err_deg"]
                     for c in manifest.clips])


def main(argv=None) -> int:
    from track2view.io import read_video

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--against", required=True, help="space-separated rows compared with --arm clip by clip")
    p.add_argument("--rows", required=True, help="space-separated rows whose medians and PSNR by frame print")
    p.add_argument("--frames", default="0,12,24", help="frame indices of the PSNR-by-frame columns")
    a = p.parse_args(argv)
    out_dir, frames = Path(a.out_dir), [int(f) for f in a.frames.split(",")]
    for row in {a.arm, *a.against.split(), *a.rows.split()}:
        if not any((out_dir / "eval" / "scores" / row / "clips").glob("*.json")):
            p.error(f"no per-clip scores in {out_dir / 'eval' / 'scores' / row / 'clips'}; score row {row} first "
                    f"(run.sh score)")
    manifest, targets = true_targets(out_dir)
    if not all(0 <= f < manifest.num_frames for f in frames):
        p.error(f"--frames {a.frames}: the clips have frames 0-{manifest.num_frames - 1}")
    static = static_camera_rot_err(manifest)
    print(f"static camera: RotErr mean {static.mean():.2f} deg, median {np.median(static):.2f}")
    for row in a.rows.split():
        scores, keys = clip_scores(out_dir, row), [c.key for c in manifest.clips]
        by_frame = np.mean([frame_psnrs(read_video(out_dir / "eval" / "generated" / row / k / "video.mp4")[0],
                                        targets[k]) for k in keys], axis=0)
        print(f"{row}: median RotErr {np.nanmedian(values(scores, keys, 'rot_err_deg')):.2f} deg, median TransErr "
              f"{np.nanmedian(values(scores, keys, 'trans_err')):.3f}; PSNR at frames {a.frames}: "
              + " / ".join(f"{by_frame[f]:.1f}" for f in frames))
    arm = clip_scores(out_dir, a.arm)
    for other_row in a.against.split():
        other = clip_scores(out_dir, other_row)
        keys = sorted(set(arm) & set(other))
        for name, label, sign in SCORES:
            d = values(arm, keys, name) - values(other, keys, name)
            d = d[np.isfinite(d)]
            print(f"{a.arm} - {other_row}, {label}: {d.mean():+.3f} (SE {d.std(ddof=1) / np.sqrt(len(d)):.3f}, "
                  f"{len(d)} clips, {a.arm} better in {(sign * d > 0).sum()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
