"""Metrics by name, built from the user's local weight paths (`MetricOptions`), networks shared between them.

Groups: `table1` (FID, CLIP-T/F/V, Mat.Pix., camera accuracy), `table2` (the six VBench dimensions),
`reference` (PSNR/SSIM/pixel error against a true target video), `all` (every metric).
"""

from __future__ import annotations

from dataclasses import dataclass

from track2view.eval.errors import EvalInputError
from track2view.eval.networks.device import resolve_device

TABLE1 = ("fid", "clip", "matched_pixels", "camera_accuracy")
TABLE2 = ("aesthetic_quality", "imaging_quality", "temporal_flickering", "motion_smoothness",
          "subject_consistency", "background_consistency")
REFERENCE = ("reference_pixels",)
GROUPS = {"table1": TABLE1, "table2": TABLE2, "reference": REFERENCE, "all": TABLE1 + TABLE2 + REFERENCE}
METRICS = GROUPS["all"]


@dataclass
class MetricOptions:
    """Local weight paths and settings (evaluate.py's options of the same names)."""

    inception: str | None = None
    fid_reference: str | None = None
    clip: str | None = None
    dino: str | None = None
    aesthetic_clip: str | None = None
    aesthetic_head: str | None = None
    musiq: str | None = None
    amt_config: str | None = None
    amt: str | None = None
    matcher: str = "sift"
    disk: str | None = None
    lightglue: str | None = None
    match_stride: int = 1
    pose_threads: int = -1
    device: str | None = None


def resolve(names) -> list[str]:
    """Metric names from names and group names, in the registry's order, each once."""
    wanted = set()
    for name in names:
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in METRICS:
            wanted.add(name)
        else:
            raise EvalInputError(f"unknown metric {name!r}; choose from {', '.join(METRICS)} or the groups "
                                 f"{', '.join(GROUPS)}")
    return [m for m in METRICS if m in wanted]


class SharedNetworks:
    """Networks loaded once and shared (CLIP ViT-B/32 serves CLIP-T/F/V and background consistency)."""

    def __init__(self, options: MetricOptions):
        self.options, self._clip = options, None

    def clip(self):
        if self._clip is None:
            from track2view.eval.networks.clip import CLIPEncoder

            self._clip = CLIPEncoder(self.options.clip, self.options.device, "--clip", "CLIP ViT-B/32")
        return self._clip


def build_metric(name: str, o: MetricOptions, nets: SharedNetworks):
    """One metric (a name of METRICS) with its network loaded from the options' local paths."""
    if name == "fid":
        from track2view.eval.metrics.fid import FID

        return FID(o.inception, o.fid_reference, o.device)
    if name == "clip":
        from track2view.eval.metrics.clip_scores import CLIPScores

        return CLIPScores(nets.clip())
    if name == "background_consistency":
        from track2view.eval.metrics.background_consistency import BackgroundConsistency

        return BackgroundConsistency(nets.clip())
    if name == "matched_pixels":
        from track2view.eval.metrics.matched_pixels import MatchedPixels
        from track2view.eval.metrics.matchers import build_matcher

        return MatchedPixels(build_matcher(o.matcher, o.disk, o.lightglue, o.device), o.match_stride)
    if name == "camera_accuracy":
        from track2view.eval.metrics.camera_accuracy import CameraAccuracy

        return CameraAccuracy(o.pose_threads)
    if name == "aesthetic_quality":
        from track2view.eval.metrics.aesthetic import AestheticQuality
        from track2view.eval.networks.clip import CLIPEncoder

        return AestheticQuality(CLIPEncoder(o.aesthetic_clip, o.device, "--aesthetic-clip", "CLIP ViT-L/14"),
                                o.aesthetic_head)
    if name == "imaging_quality":
        from track2view.eval.metrics.imaging_quality import ImagingQuality, load_musiq

        return ImagingQuality(load_musiq(o.musiq, resolve_device(o.device)), o.device)
    if name == "motion_smoothness":
        from track2view.eval.metrics.motion_smoothness import AMTInterpolator, MotionSmoothness, load_amt

        return MotionSmoothness(AMTInterpolator(load_amt(o.amt_config, o.amt), o.device))
    if name == "subject_consistency":
        from track2view.eval.metrics.subject_consistency import DINOEncoder, SubjectConsistency

        return SubjectConsistency(DINOEncoder(o.dino, o.device))
    if name == "temporal_flickering":
        from track2view.eval.metrics.temporal_flickering import TemporalFlickering

        return TemporalFlickering()
    from track2view.eval.metrics.reference_pixels import ReferencePixels

    return ReferencePixels()


def build_metrics(names, options: MetricOptions) -> list:
    """The metrics named (see `resolve`), their networks loaded from the options' paths."""
    nets = SharedNetworks(options)
    return [build_metric(name, options, nets) for name in resolve(names)]
