"""Conditioning kinds behind one interface (base.py), chosen by `model.conditioning`:

    tracks   DualViewTrackConditioner: paired 3D point tracks (the paper's method)       tracks.py
    camera   CameraConditioning: the relative target camera through a projection         camera.py
    none     NoConditioning: frame concatenation only, no camera information             none.py

`ConditioningHook` (hook.py) adds a kind's tokens to Wan's patch embedding.
"""

from __future__ import annotations

from track2view.conditioning.base import Conditioning, batch_expand, batch_slice, inputs_to
from track2view.conditioning.camera import CameraConditioning, relative_camera_features
from track2view.conditioning.none import NoConditioning
from track2view.conditioning.tracks import DualViewTrackConditioner

KINDS = {cls.kind: cls for cls in (DualViewTrackConditioner, CameraConditioning, NoConditioning)}


def conditioning_class(kind: str) -> type:
    if kind not in KINDS:
        raise ValueError(f"unknown conditioning {kind!r}; choose one of {sorted(KINDS)}")
    return KINDS[kind]


def build_conditioning(kind: str, token_dim: int, config: dict | None = None):
    """A freshly initialised (zero-output) conditioning module of `kind` for a base of width `token_dim`."""
    config = dict(config or {})
    if config.setdefault("token_dim", token_dim) != token_dim:
        raise ValueError(f"conditioning token_dim {config['token_dim']} must equal the base model's width {token_dim}")
    try:
        return conditioning_class(kind)(**config)
    except TypeError as e:
        raise ValueError(f"model.conditioning_config for {kind!r}: {e}") from e


def load_conditioning(kind: str, folder):
    """A conditioning module saved with `save_pretrained` (a kind without parameters saves only its config)."""
    cls = conditioning_class(kind)
    module = cls.from_config(cls.load_config(folder))
    return cls.from_pretrained(folder) if any(True for _ in module.parameters()) else module


def input_names(kind: str) -> tuple[str, ...]:
    """The batch keys a kind reads (the loader reads the shard members for exactly these)."""
    return conditioning_class(kind).inputs


__all__ = ["KINDS", "CameraConditioning", "Conditioning", "DualViewTrackConditioner", "NoConditioning",
           "batch_expand", "batch_slice", "build_conditioning", "conditioning_class", "input_names", "inputs_to", "load_conditioning",
           "relative_camera_features"]
