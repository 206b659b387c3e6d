"""The conditioning interface: what one kind of camera conditioning adds to Wan's patch-embedded tokens.

    tokens [B, D, 2F, h, w] (patch embedding of [source | target] latents), inputs {name: value}
      -> conditioning.condition_tokens(tokens, inputs, patch_bias) -> broadcastable to tokens, or None
      -> added to the tokens by `ConditioningHook` (hook.py), before Wan's blocks

A kind is a diffusers `ModelMixin` + `ConfigMixin` (saved into the export's `conditioning/` folder) that
declares:
* `kind`: its name in configs (`model.conditioning`) and in the export's track2view.json;
* `inputs`: the keys it reads from the batch and from the pipeline call; the loader reads exactly the shard
  members those need (track2view/data/loader.py) and the wrapper refuses a call that lacks one or brings
  another kind's input (`check_inputs`);
* `condition_tokens(...)`: zero at initialisation, so that the untrained model is the base model exactly;
* `augment(inputs, config, generator)`: its training-time augmentation of the inputs (default none);
* `steps_invariant`: its output reads only the clean source half and its inputs, so it is the same at every
  denoising step and in both CFG branches: inference computes it once per video.

Inputs every kind may receive: `source_frame_mask` [B, F] bool (False where source-frame dropout zeroed a
latent frame). Adding a kind: a file here with the class, and one line in `KINDS` (__init__.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from track2view.tracks import PairedTracks

COMMON_INPUTS = ("source_frame_mask",)
# What each input is, for error messages (every kind's inputs must be described here).
INPUT_HELP = {
    "tracks": "PairedTracks [B, 2, F, N] at the latent stride (track2view.inference.reprojection)",
    "cameras": "target cameras relative to the source camera at frame 0, [B, F, 12] (flattened 3x4 per latent "
               "frame, track2view.conditioning.camera.relative_camera_features)",
    "source_frame_mask": "[B, F] bool, False where a source latent frame was dropped",
}


class Conditioning:
    """Mixin of every conditioning kind (with diffusers' ModelMixin and ConfigMixin); see the module docstring."""

    kind: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    steps_invariant: ClassVar[bool] = True

    def condition_tokens(self, tokens: torch.Tensor, inputs: Mapping[str, Any],
                         patch_bias: torch.Tensor | None = None) -> torch.Tensor | None:
        """tokens [B, D, 2F, h, w] -> what to add to them (broadcastable, tokens' dtype), or None for nothing."""
        raise NotImplementedError

    def augment(self, inputs: dict, config, generator: torch.Generator | None = None) -> dict:
        """Training-time augmentation of this kind's inputs (`config`: the FlowMatchingConfig); default none."""
        return inputs

    def check_inputs(self, inputs: Mapping[str, Any], batch_size: int, latent_frames: int) -> None:
        """Raise ValueError naming the kind, what is missing or foreign, and what each input is.

        latent_frames: F, the source (= target) latent frames of the call's [B, C, 2F, h, w] input.
        """
        missing = [k for k in self.inputs if inputs.get(k) is None]
        foreign = [k for k in inputs if k not in self.inputs and k not in COMMON_INPUTS and inputs[k] is not None]
        if missing or foreign:
            needs = "; ".join(f"{k}: {INPUT_HELP.get(k, '?')}" for k in self.inputs) or "no camera input"
            problem = ([f"lacks {missing}"] if missing else []) + ([f"was given {foreign}"] if foreign else [])
            raise ValueError(f"this model's conditioning is {self.kind!r}, which takes {needs}; the call "
                             f"{' and '.join(problem)}. Use an export of the kind that matches the inputs "
                             f"(track2view.json 'conditioning') or give the inputs it needs")
        mask = inputs.get("source_frame_mask")
        if mask is not None and tuple(mask.shape) != (batch_size, latent_frames):
            raise ValueError(f"source_frame_mask must be [B, F] = {(batch_size, latent_frames)}, "
                             f"got {tuple(mask.shape)}")


def batch_slice(inputs: Mapping[str, Any], index) -> dict:
    """The inputs of the samples `index` (a slice or index tensor along the batch axis)."""
    return {k: (v.apply(lambda t: t[index]) if isinstance(v, PairedTracks) else v[index])
            for k, v in inputs.items() if v is not None}


def batch_expand(inputs: Mapping[str, Any], batch_size: int) -> dict:
    """Inputs of batch 1 broadcast to `batch_size` (e.g. the CFG branches share one video's inputs)."""
    def expand(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[0] == batch_size else t.expand(batch_size, *t.shape[1:])

    return {k: (v.apply(expand) if isinstance(v, PairedTracks) else expand(v)) for k, v in inputs.items()
            if v is not None}


def inputs_to(inputs: Mapping[str, Any], device: torch.device) -> dict:
    """Inputs moved to `device` (tracks stay float32 and bool)."""
    return {k: v.to(device) for k, v in inputs.items() if v is not None}
