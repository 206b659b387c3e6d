"""Evaluation: benchmarks as data -> generated clips -> metrics -> tables (docs/evaluation.md).

    metric.py         the `Metric` / `SetMetric` / `FrameMetric` interface and the `Clip` it scores
    safe_npz.py       .npz with pickled object arrays, read by a restricted unpickler (RealCam-Vid's metadata)
    benchmarks/       RealCam-Vid reader + the paper's seeded selection, synthetic scenes, ReCamMaster's presets
    manifest.py       the written list of clips (prompt, target trajectory) every method is scored on
    clips.py          generated clip folders, loaded as `Clip`s
    generation.py     `evaluate.py generate` (Rerenderer over a manifest, resumable, sharded)
    networks/         local-weight loading, FID Inception-v3, CLIP encoder
    metrics/          one module per metric
    registry.py       metrics by name from local weight paths
    reference.py      FID reference statistics from real frames
    scoring.py        `evaluate.py score` (per-clip JSON, resumable) -> tables.py, contact_sheet.py
"""

from track2view.eval.errors import EvalInputError
from track2view.eval.metric import Clip, FrameMetric, Metric, SetMetric

__all__ = ["Clip", "EvalInputError", "FrameMetric", "Metric", "SetMetric"]
