"""Checkpoints that hold only what trains, written atomically; and the export to the inference format.

A training checkpoint is Lightning's checkpoint dict (optimizer and LR-scheduler state, loop progress
with the step, the data module's position, callback state, hyper-parameters) whose `state_dict` keeps
only the trainable tensors (LoRA + conditioner); the frozen Wan base is dropped by
`Track2ViewModule.on_save_checkpoint` and the module loads with `strict_loading = False`.

Two layouts, both named `*.ckpt` and both found by `--ckpt_path last`:
* a file (single device, DDP): written by `AtomicCheckpointIO`, read back with `weights_only=True`;
* a directory (DeepSpeed): written by `ZeRO1Strategy` (strategy.py; DeepSpeed's own sharded layout, frozen
  parameters excluded), first into `<name>.tmp` and renamed into place once every rank has written.

`export_checkpoint(ckpt, out)` turns either layout into the inference directory of
docs/architecture.md ("Trained checkpoint") from the trainable tensors alone (the base is never loaded).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from track2view.io import atomic_path

# The training settings copied into the export's track2view.json ("training config excerpt").
EXPORTED_HPARAMS = ("model_path", "lr", "warmup_steps", "lr_schedule", "flow_matching", "height", "width", "num_frames",
                    "seed", "train_base", "init_from")
# DeepSpeed's layout inside a checkpoint directory (Lightning saves with tag "checkpoint").
DEEPSPEED_MODEL_STATES = Path("checkpoint") / "mp_rank_00_model_states.pt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but written to a temporary sibling and renamed into place, and read
    back with `weights_only=True` (a checkpoint is never unpickled)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return _torch_load(Path(path), map_location or "cpu")


# ---- reading checkpoints outside the Trainer ----------------------------------------------------------------
def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint (file or DeepSpeed directory) without unpickling.

    Returns {"state_dict": {name: tensor}, "hyper_parameters": dict, "datamodule_hyper_parameters": dict,
    "global_step": int}. Raises
    FileNotFoundError / ValueError with the path and what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        states = path / DEEPSPEED_MODEL_STATES
        if not states.is_file():
            raise FileNotFoundError(f"{path} is a directory but not a DeepSpeed checkpoint "
                                    f"(no {DEEPSPEED_MODEL_STATES})")
        raw = _torch_load(states)
        state_dict = raw.get("module") or {}
    elif path.is_file():
        raw = _torch_load(path)
        state_dict = raw.get("state_dict") or {}
    else:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if "hyper_parameters" not in raw:
        raise ValueError(f"{path} has no hyper_parameters; it was not written by train.py fit")
    # DeepSpeed may prefix the module's keys with the wrapper's attribute name.
    state_dict = {k.removeprefix("module.").removeprefix("_forward_module."): v for k, v in state_dict.items()}
    return {"state_dict": state_dict, "hyper_parameters": dict(raw["hyper_parameters"]),
            "datamodule_hyper_parameters": dict(raw.get("datamodule_hyper_parameters") or {}),
            "global_step": int(raw.get("global_step", 0))}


def _torch_load(path: Path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError for files it refuses
        raise ValueError(f"cannot read checkpoint {path} safely (weights_only=True): {load_error_reason(e)}") from e


def load_error_reason(error: Exception) -> str:
    """What a refused `torch.load` says about the file (the global it refused, or the damage), in one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, model_path: str | None = None) -> Path:
    """Write the inference directory (LoRA in diffusers format + conditioning + track2view.json) from a training
    checkpoint, from its trainable tensors alone. `model_path` overrides the base Wan directory recorded in the
    checkpoint (e.g. when exporting on another machine); only its transformer config is read. Returns `out`.
    """
    from track2view.conditioning import build_conditioning
    from track2view.model.export import (TRAINED_BASE_SUBFOLDER, ExportInfo, TrainedBase, base_fingerprint,
                                         plain_config, write_export)
    from track2view.model.transformer import LoraSettings
    from track2view.training.module import lora_settings

    loaded = load_training_checkpoint(ckpt)
    h = {k: v for k, v in loaded["hyper_parameters"].items() if not k.startswith("_")}  # no CLI bookkeeping
    if model_path is not None:
        h["model_path"] = model_path
    base = base_config(h)
    state = loaded["state_dict"]
    conditioning = build_conditioning(h.get("conditioning", "tracks"),
                                      base["num_attention_heads"] * base["attention_head_dim"],
                                      h.get("conditioning_config"))
    _load_exact(conditioning, _with_prefix(state, "model.conditioning."), ckpt, "conditioning")
    transformer_state = _with_prefix(state, "model.transformer.")
    if h.get("train_base"):  # the whole base trained, no LoRA
        if not transformer_state:
            raise ValueError(f"{ckpt} was trained with model.train_base but holds no base tensors")
        trained_base = TrainedBase({k: v.float() for k, v in transformer_state.items()}, base)
        lora, lora_state = None, {}
    else:
        trained_base, lora = None, LoraSettings.coerce(lora_settings(h))
        lora_state = {k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): v.float()
                      for k, v in transformer_state.items() if "lora_" in k}
        if not lora_state:
            raise ValueError(f"{ckpt} holds no LoRA tensors; it was not written by train.py fit")
    data = loaded["datamodule_hyper_parameters"]
    info = ExportInfo(conditioning=conditioning.kind,
                      conditioning_config=plain_config(conditioning.config),
                      base_model=base_fingerprint(base), lora=asdict(lora) if lora else None,
                      transformer=TRAINED_BASE_SUBFOLDER if trained_base else None,
                      attention=h.get("attention", "full"),
                      latent_stride=data.get("temporal_stride", 4), num_tracks=data.get("num_tracks"),
                      training={"checkpoint": str(ckpt), "global_step": loaded["global_step"],
                                **{k: h.get(k) for k in EXPORTED_HPARAMS}})
    return write_export(out, lora_state, _lora_metadata(lora) if lora else {}, conditioning, info, trained_base)


def base_config(hparams: dict) -> dict:
    """The base Wan transformer config of a run: its model_path's transformer/config.json, or wan_config."""
    if hparams.get("model_path"):
        config = Path(hparams["model_path"]) / "transformer" / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{config} not found: the base model moved since training; pass its "
                                    f"directory with --model_path")
        return json.loads(config.read_text())
    if hparams.get("wan_config"):
        return dict(hparams["wan_config"])
    raise ValueError("the checkpoint records neither model_path nor wan_config; it was not written by train.py fit")


def _with_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load_exact(module: torch.nn.Module, state: dict, ckpt, what: str) -> None:
    missing = sorted(set(module.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(module.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{ckpt} does not match its recorded {what} settings: missing {missing[:3]} "
                         f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    module.load_state_dict({k: v.float() for k, v in state.items()})


def _lora_metadata(lora) -> dict:
    """The adapter metadata diffusers stores beside the LoRA: peft's LoraConfig as `add_adapter` records it."""
    config = lora.peft_config()
    config.target_modules = set(config.target_modules)
    return config.to_dict()
