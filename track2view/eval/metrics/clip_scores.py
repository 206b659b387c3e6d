"""CLIP-T, CLIP-F, CLIP-V with CLIP ViT-B/32 (Track2View Table 1), as 100 x cosine similarity.

Conventions (L2-normalized CLIP embeddings, networks/clip.py preprocessing):
    CLIP-T  mean over frames of max(100 cos(frame_t, text), 0)          text: the manifest's clip_text
    CLIP-F  mean over t >= 1 of 100 cos(generated_{t-1}, generated_t)
    CLIP-V  mean over t of 100 cos(source_t, generated_t)                 (needs the source video)
"""

from __future__ import annotations

from track2view.eval.metric import Clip, FrameMetric, frame_values, pair_values
from track2view.eval.networks.clip import CLIPEncoder


class CLIPScores(FrameMetric):
    name, names = "clip", ("clip_t", "clip_f", "clip_v")

    def __init__(self, encoder: CLIPEncoder):
        self.encoder = encoder

    def per_frame(self, clip: Clip) -> dict:
        generated = self.encoder.image_features(clip.generated)
        out = {"clip_f": pair_values((100 * (generated[:-1] * generated[1:]).sum(-1)).cpu().numpy())}
        if clip.prompt:
            text = self.encoder.text_features(clip.prompt)
            out["clip_t"] = frame_values((100 * generated @ text).clamp_min(0).cpu().numpy())
        if clip.source is not None:
            source = self.encoder.image_features(clip.source)
            out["clip_v"] = frame_values((100 * (source * generated).sum(-1)).cpu().numpy())
        return out

    def info(self) -> dict:
        return {**super().info(), "network": str(self.encoder.path), "scale": "100 x cosine"}

