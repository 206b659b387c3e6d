"""VBench aesthetic quality: the LAION aesthetic predictor (a linear head) on CLIP ViT-L/14 image embeddings.

Convention (VBench's `aesthetic_quality`): per frame, the L2-normalized CLIP ViT-L/14 image embedding (768-d)
goes through the LAION linear head (`sa_0_4_vit_l_14_linear.pth`: weight [1, 768], bias [1]); the score is the
mean over frames of head output / 10 (so roughly in [0, 1]).
Networks: --aesthetic-clip (a transformers CLIP ViT-L/14 directory), --aesthetic-head (the head's state dict).
"""

from __future__ import annotations

import torch

from track2view.eval.errors import EvalInputError
from track2view.eval.metric import Clip, FrameMetric, frame_values
from track2view.eval.networks.clip import CLIPEncoder
from track2view.eval.networks.weights import load_into, load_state_dict


def load_head(path, embedding_dim: int) -> torch.nn.Linear:
    head = torch.nn.Linear(embedding_dim, 1)
    state = load_state_dict(path, "the LAION aesthetic head", "--aesthetic-head")
    if set(state) != {"weight", "bias"}:  # upstream files may prefix the layer name
        state = {k.rsplit(".", 1)[-1]: v for k, v in state.items() if k.rsplit(".", 1)[-1] in ("weight", "bias")}
    if "weight" in state and tuple(state["weight"].shape) != (1, embedding_dim):
        raise EvalInputError(f"--aesthetic-head {path}: a head for {tuple(state['weight'].shape)} inputs, the CLIP "
                             f"embedding is {embedding_dim}-d (the LAION head expects CLIP ViT-L/14)")
    return load_into(head, state, "the LAION aesthetic head", path, "--aesthetic-head").eval().requires_grad_(False)


class AestheticQuality(FrameMetric):
    name, names = "aesthetic_quality", ("aesthetic_quality",)

    def __init__(self, encoder: CLIPEncoder, head_path):
        self.encoder = encoder
        self.head = load_head(head_path, encoder.model.config.projection_dim).to(encoder.device)

    @torch.no_grad()
    def per_frame(self, clip: Clip) -> dict:
        features = self.encoder.image_features(clip.generated)
        scores = self.head(features.to(self.head.weight.dtype))[:, 0] / 10.0
        return {"aesthetic_quality": frame_values(scores.cpu().numpy())}
