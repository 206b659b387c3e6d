"""VBench background consistency: CLIP ViT-B/32 image features, VBench's consistency formula (consistency.py)."""

from __future__ import annotations

from track2view.eval.metric import Clip, FrameMetric, pair_values
from track2view.eval.metrics.consistency import consistency_values
from track2view.eval.networks.clip import CLIPEncoder


class BackgroundConsistency(FrameMetric):
    name, names = "background_consistency", ("background_consistency",)

    def __init__(self, encoder: CLIPEncoder):
        self.encoder = encoder

    def per_frame(self, clip: Clip) -> dict:
        return {"background_consistency": pair_values(consistency_values(self.encoder.image_features(clip.generated)))}
