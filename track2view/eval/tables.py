"""Aggregate per-clip scores into the paper's table layout: Markdown and CSV, split static / dynamic / all and by
frame count (the first 25 / 49 / 81 frames, as Track2View compares with shorter methods).

A row's score is the mean over its clips of the finite per-clip values; `pose_failed` is a count, shown next to
the clip count, so failed reconstructions are visible rather than silently averaged away. Markdown shows the
VBench dimensions x 100 (as the paper's Table 2); the CSV holds every score in its own unit, one row per group.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from track2view.eval.metrics.pose_errors import CAMI2V, NAMES as POSE_SCORES

SPLITS = ("static", "dynamic", "all")
# (score, header, scale, decimals) per Markdown table
TABLE1 = (("fid", "FID", 1, 2), ("clip_t", "CLIP-T", 1, 2), ("clip_f", "CLIP-F", 1, 2), ("clip_v", "CLIP-V", 1, 2),
          ("mat_pix_k", "Mat.Pix.(K)", 1, 3), ("rot_err_deg", "RotErr(deg)", 1, 2), ("trans_err", "TransErr", 1, 3),
          ("cam_mc", "CamMC", 1, 3))
TABLE2 = (("aesthetic_quality", "Aesthetic", 100, 2), ("imaging_quality", "Imaging", 100, 2),
          ("temporal_flickering", "Temporal Flickering", 100, 2), ("motion_smoothness", "Motion Smoothness", 100, 2),
          ("subject_consistency", "Subject Consistency", 100, 2),
          ("background_consistency", "Background Consistency", 100, 2))
CAMI2V_TABLE = tuple((name, name, 1, 3) for name in CAMI2V)
REFERENCE = (("psnr", "PSNR", 1, 2), ("ssim", "SSIM", 1, 4), ("pixel_error", "Pixel error (0-255)", 1, 2))
TABLES = (("Table 1 layout (visual quality, view synchronization, camera accuracy; paper convention)", TABLE1),
          ("Table 2 layout (VBench dimensions, x 100)", TABLE2),
          ("Camera accuracy, CamI2V convention (summed radians; max-distance normalized translations)", CAMI2V_TABLE),
          ("Against the true target video (synthetic benchmark)", REFERENCE))


def _mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def aggregate(records: list[dict], lengths, set_scores=None, names=None) -> list[dict]:
    """Rows {split, frames, clips, pose_failed, <score>: mean} of the scores in `names` (default: all);
    set_scores(split, n, keys) -> {name: value} adds set-level scores."""
    rows = []
    for split in SPLITS:
        chosen = [r for r in records if split == "all" or r["split"] == split]
        if not chosen:
            continue
        for n in lengths:
            scores = [r["scores"].get(str(n), {}) for r in chosen]
            found = sorted({k for s in scores for k in s if k != "pose_failed" and (names is None or k in names)})
            row = {"split": split, "frames": n, "clips": len(chosen),
                   "pose_failed": int(sum(s.get("pose_failed") or 0 for s in scores))
                   if names is None or "pose_failed" in names else 0}
            row.update({k: _mean(s.get(k) for s in scores) for k in found})
            if set_scores is not None:
                row.update(set_scores(split, n, [r["key"] for r in chosen]))
            rows.append(row)
    return rows


def _cell(value, scale: float, decimals: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * scale:.{decimals}f}"


def markdown(rows: list[dict], title: str, infos: dict | None = None, against: str | None = None) -> str:
    """`against`: the clips the reference metrics compared with instead of the true targets (its heading says so)."""
    out = [f"# {title}", ""]
    for heading, columns in TABLES:
        if columns is REFERENCE and against is not None:
            heading = f"Against the clips of {against} (not the true target video)"
        columns = [c for c in columns if any(c[0] in r for r in rows)]
        if not columns:
            continue
        out += [f"## {heading}", "", "| Split | Frames | Clips | " + " | ".join(c[1] for c in columns) + " |",
                "|---|---|---|" + "---|" * len(columns)]
        camera = any(c[0] in POSE_SCORES for c in columns)
        for r in rows:
            clips = f"{r['clips']}" + (f" ({r['pose_failed']} pose failed)" if r["pose_failed"] and camera else "")
            out.append(f"| {r['split']} | {r['frames']} | {clips} | "
                       + " | ".join(_cell(r.get(c[0]), c[2], c[3]) for c in columns) + " |")
        out.append("")
    if infos:
        out += ["## Conventions", ""] + [f"- **{name}**: {_describe(info)}" for name, info in infos.items()] + [""]
    return "\n".join(out)


def _describe(info: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in info.items() if k != "names")


def csv_text(rows: list[dict]) -> str:
    names = sorted({k for r in rows for k in r} - {"split", "frames", "clips", "pose_failed"})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "frames", "clips", "pose_failed", *names])
    for r in rows:
        writer.writerow([r["split"], r["frames"], r["clips"], r["pose_failed"],
                         *[("" if not math.isfinite(r.get(k, float("nan"))) else f"{r[k]:.6g}") for k in names]])
    return buffer.getvalue()
