"""Checkpoints that hold only what trains, written atomically; and the export to the inference format.

A training checkpoint is Lightning's checkpoint dict (optimizer and LR-scheduler state, loop progress
with the step, the data module's position, callback state, hyper-parameters) whose `state_dict` keeps
only the trainable tensors (LoRA + conditioner); the frozen Wan base is dropped by
`Track2ViewModule.on_save_checkpoint` and the module loads with `strict_loading = False`.

Two layouts, both named `*.ckpt` and both found by `--ckpt_path last`:
* a file (single device, DDP): written by `AtomicCheckpointIO`, read back with `weights_only=True`;
* a directory (DeepSpeed): written by `ZeRO1Strategy` (DeepSpeed's own sharded layout, frozen
  parameters excluded), first into `<name>.tmp` and renamed into place once every rank has written.

`export_checkpoint(ckpt, out)` turns either layout into the inference directory of
docs/architecture.md ("Trained checkpoint"), through `Track2ViewTransformer.save_trained`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.precision import DeepSpeedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy

from track2view.io import atomic_path

# The training settings copied into the export's track2view.json ("training config excerpt").
EXPORTED_HPARAMS = ("model_path", "lr", "warmup_steps", "lr_schedule", "flow_matching", "height", "width", "num_frames",
                    "seed")
# DeepSpeed's layout inside a checkpoint directory (Lightning saves with tag "checkpoint").
DEEPSPEED_MODEL_STATES = Path("checkpoint") / "mp_rank_00_model_states.pt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but written to a temporary sibling and renamed into place, and read
    back with `weights_only=True` (a checkpoint is never unpickled)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


class FullPrecisionInputs(DeepSpeedPrecision):
    """DeepSpeed's precision plugin, except that the batch's float tensors stay float32.

    Lightning's DeepSpeed plugin casts every float tensor of the batch to bf16; that would round the tracks'
    uv to 1/256 of the frame (a fifth of a token at 832 px). The module runs its forward under bf16 autocast
    instead, which casts what the matmuls and convolutions need.
    """

    def convert_input(self, data):
        return data


class ZeRO1Strategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO stage 1 that saves only trainable parameters, atomically.

    Same as Lightning's `deepspeed_stage_1` except: `exclude_frozen_parameters=True` (the frozen base is not
    written); the checkpoint directory is written as `<path>.tmp` by all ranks, then renamed onto `<path>` by
    rank 0, so an interrupted save leaves the previous checkpoint intact (requires a file system shared by all
    nodes, as DeepSpeed's checkpoints do); batches keep float32 tracks (`FullPrecisionInputs`).
    """

    def __init__(self, stage: int = 1, exclude_frozen_parameters: bool = True, **kwargs):
        super().__init__(stage=stage, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)

    def _auto_select_batch_size(self) -> int:
        # Lightning reads DataLoader.batch_sampler.batch_size, which is None for loaders that batch inside the
        # dataset (ours: DataLoader(batch_size=None)). DeepSpeed uses the number only for its throughput logs.
        datamodule = self.lightning_module.trainer.datamodule
        return int(getattr(getattr(datamodule, "hparams", None), "batch_size", None) or 1)

    @property
    def precision_plugin(self):
        return DeepSpeedStrategy.precision_plugin.fget(self)

    @precision_plugin.setter
    def precision_plugin(self, plugin) -> None:
        if type(plugin) is DeepSpeedPrecision:  # the one Lightning's connector builds from trainer.precision
            plugin = FullPrecisionInputs(plugin.precision)
        self._precision_plugin = plugin

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Any | None = None) -> None:
        final = Path(self.broadcast(str(filepath)))
        tmp = final.with_name(final.name + ".tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("t2v_ckpt_clean")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("t2v_ckpt_written")
        if self.is_global_zero:
            _replace_dir(tmp, final)
        self.barrier("t2v_ckpt_renamed")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory `src` onto `dst`; the old `dst` is kept as `dst.old` until the new one is in place."""
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


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


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError for files it refuses
        raise ValueError(f"cannot read checkpoint {path} safely (weights_only=True): {e}") from e


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, model_path: str | None = None) -> Path:
    """Write the inference directory (LoRA in diffusers format + conditioner safetensors + track2view.json)
    from a training checkpoint. `model_path` overrides the base Wan directory recorded in the checkpoint
    (e.g. when exporting on another machine). Returns `out`.
    """
    from track2view.training import Track2ViewModule

    loaded = load_training_checkpoint(ckpt)
    hparams = {k: v for k, v in loaded["hyper_parameters"].items() if not k.startswith("_")}  # no CLI bookkeeping
    if model_path is not None:
        hparams["model_path"] = model_path
    module = Track2ViewModule(**{**hparams, "gradient_checkpointing": "none", "compile_blocks": False})
    module.configure_model()
    module.load_trainable_state_dict(loaded["state_dict"])
    h = hparams
    data = loaded["datamodule_hyper_parameters"]
    extra = {"latent_stride": data.get("temporal_stride", 4), "num_tracks": data.get("num_tracks"),
             "training": {"checkpoint": str(ckpt), "global_step": loaded["global_step"],
                          **{k: h.get(k) for k in EXPORTED_HPARAMS}}}
    return module.model.save_trained(out, extra=extra)  # written to a temporary directory, then swapped in
