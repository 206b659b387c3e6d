"""`evaluate.py score`: every metric on every generated clip of a manifest, resumable, then the tables.

    <out>/scoring.json                 manifest fingerprint, generated folder, --against folder (a folder of
                                       another manifest, method or reference is refused)
    <out>/clips/<key>.json             per-clip scores {"<frames>": {score: value}}, written last for the clip
    <out>/clips/<key>.<metric>.npy     per-frame features of set-level metrics (FID), so FID resumes too
    <out>/clips/<key>.row.png          the clip's contact-sheet row
    <out>/results.md|csv|json          the aggregate (tables.py); <out>/contact_sheets/page_NNN.png

A clip whose JSON already holds every asked metric at every asked length is skipped; one that lacks some gets
only those. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from track2view.eval import clips as clip_files
from track2view.eval.contact_sheet import clip_row, write_sheet
from track2view.eval.errors import EvalInputError
from track2view.eval.manifest import Manifest
from track2view.eval.metric import SetMetric
from track2view.eval.tables import aggregate, csv_text, markdown
from track2view.io import atomic_path, write_json

PAPER_LENGTHS = (25, 49, 81)
ROWS_PER_PAGE = 25


def frame_lengths(manifest: Manifest, asked=None) -> list[int]:
    """The frame counts to score: those asked (default: the paper's 25 / 49 / 81 and the clip length) that fit."""
    asked = sorted(set(asked or PAPER_LENGTHS + (manifest.num_frames,)))
    lengths = [n for n in asked if 2 <= n <= manifest.num_frames]
    if not lengths:
        raise EvalInputError(f"no frame count of {asked} fits the manifest's {manifest.num_frames}-frame clips")
    return lengths


def finite_or_null(value):
    """The same structure with NaN / infinite floats as None (JSON has no NaN; the tables skip None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_null(v) for v in value]
    return value


def _prepare_out(out: Path, manifest: Manifest, generated: Path, against: Path | None = None) -> None:
    marker, against = out / "scoring.json", str(against.resolve()) if against is not None else None
    if out.exists() and not marker.is_file() and any(out.iterdir()):
        raise EvalInputError(f"--out {out} exists and is not a scores folder; choose a new one")
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous.get("manifest_fingerprint") != manifest.fingerprint():
            raise EvalInputError(f"--out {out} holds scores of another manifest; choose a new one")
        if Path(previous.get("generated", "")).resolve() != generated.resolve():
            raise EvalInputError(f"--out {out} holds scores of {previous.get('generated')}, not {generated}; "
                                 f"choose a new one per method")
        if previous.get("against") != against:
            raise EvalInputError(f"--out {out} holds scores against {previous.get('against') or 'the true targets'}; "
                                 f"choose a new one per reference")
    (out / "clips").mkdir(parents=True, exist_ok=True)
    write_json(marker, {"manifest_fingerprint": manifest.fingerprint(), "generated": str(generated), "against": against})


def _check_sources(manifest: Manifest, root) -> None:
    for entry in manifest.clips:
        for relative in filter(None, (entry.source_video, entry.target_video)):
            if not manifest.video_path(relative, root).is_file():
                raise EvalInputError(f"video of clip {entry.key} not found: {manifest.video_path(relative, root)} "
                                     f"(pass the benchmark's root with --root)")


def _todo(record: dict | None, metrics, lengths) -> list:
    if record is None or not set(map(str, lengths)) <= set(record["scores"]):
        return list(metrics)
    return [m for m in metrics if m.name not in record["metrics"]]


def score_clip(manifest, entry, generated, out: Path, metrics, lengths, root=None, frames_per_row: int = 4,
               against=None) -> dict:
    """Score one clip (only the metrics its record lacks) and write its record; returns the record."""
    path = out / "clips" / f"{entry.key}.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    todo = _todo(record, metrics, lengths)
    if not todo and (out / "clips" / f"{entry.key}.row.png").is_file():
        return record
    if record is None or todo == list(metrics):
        record = {"key": entry.key, "split": entry.split, "metrics": [], "scores": {}, "notes": []}
    clip = clip_files.load_clip(manifest, entry, generated, max(lengths), root, against)
    for metric in todo:
        if not metric.applies_to(clip):
            record["notes"].append(f"{metric.name}: not applicable (needs {', '.join(metric.requires)})")
        elif isinstance(metric, SetMetric):
            with atomic_path(out / "clips" / f"{entry.key}.{metric.name}.npy") as tmp:
                np.save(tmp, metric.features(clip), allow_pickle=False)
        else:
            for n, scores in metric.score_lengths(clip, lengths).items():
                record["scores"].setdefault(str(n), {}).update(scores)
        record["metrics"].append(metric.name)
    for n in lengths:
        record["scores"].setdefault(str(n), {})
    record["notes"] += clip.meta.get("pose_failures", [])
    with atomic_path(out / "clips" / f"{entry.key}.row.png") as tmp:
        from PIL import Image

        Image.fromarray(clip_row(entry.key, clip.source, clip.generated, frames_per_row)).save(tmp, format="PNG")
    write_json(path, finite_or_null(record))
    return record


def _set_scores(out: Path, set_metrics):
    def scores(split, n, keys):
        result = {}
        for metric in set_metrics:
            files = [out / "clips" / f"{k}.{metric.name}.npy" for k in keys]
            features = [np.load(f, allow_pickle=False)[:n] for f in files if f.is_file()]
            if features:
                result.update(metric.compute(features))
        return result

    return scores


def write_results(out: Path, manifest: Manifest, records, metrics, lengths, title: str, against=None) -> list[Path]:
    set_metrics = [m for m in metrics if isinstance(m, SetMetric)]
    names = {name for m in metrics for name in m.names}
    rows = aggregate(records, lengths, _set_scores(out, set_metrics), names)
    infos = {m.name: m.info() for m in metrics}
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown(rows, title, infos, str(against) if against is not None else None))
    with atomic_path(out / "results.csv") as tmp:
        tmp.write_text(csv_text(rows))
    write_json(out / "results.json", finite_or_null({"benchmark": manifest.benchmark, "lengths": lengths,
                                                     "manifest_fingerprint": manifest.fingerprint(), "rows": rows,
                                                     "metrics": infos}))
    return [out / "results.md", out / "results.csv", out / "results.json", *write_contact_sheets(out, records)]


def write_contact_sheets(out: Path, records) -> list[Path]:
    from PIL import Image

    row_files = [out / "clips" / f"{r['key']}.row.png" for r in records]
    pages = []
    for page, start in enumerate(range(0, len(row_files), ROWS_PER_PAGE)):
        rows = [np.asarray(Image.open(f).convert("RGB")) for f in row_files[start:start + ROWS_PER_PAGE]]
        pages.append(write_sheet(out / "contact_sheets" / f"page_{page:03d}.png", rows))
    return pages


def score(manifest: Manifest, generated, out, metrics, lengths, root=None, progress: bool = True,
          title: str | None = None, against=None) -> list[Path]:
    """Score every clip of `manifest` in folder `generated` into `out` (see the module docstring); `against`:
    a folder of generated clips that the reference metrics compare with instead of the true targets."""
    from tqdm import tqdm

    generated, out = clip_files.check_generated(manifest, generated), Path(out)
    against = clip_files.check_generated(manifest, against) if against is not None else None
    _check_sources(manifest, root)
    _prepare_out(out, manifest, generated, against)
    records = [score_clip(manifest, entry, generated, out, metrics, lengths, root, against=against)
               for entry in tqdm(manifest.clips, desc="score", unit="clip", disable=None if progress else True)]
    return write_results(out, manifest, records, metrics, lengths,
                         title or f"{manifest.benchmark}: {generated.name}", against)
