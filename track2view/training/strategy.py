"""`ZeRO1Strategy`: DeepSpeed ZeRO stage 1 that saves only the trainable parameters, atomically.

A checkpoint is a directory (DeepSpeed's sharded layout, frozen parameters excluded), first written into
`.<name>.tmpPID-RANDOM` by every rank and renamed into place by rank 0 (track2view.io.replace_directory), so an
interrupted save leaves the previous checkpoint intact. It is read back without general unpickling: DeepSpeed's
checkpoint engine calls `torch.load(weights_only=False)`; this strategy gives the engine a loader with
`weights_only=True` that admits, besides tensors and plain containers, only the DeepSpeed classes its ZeRO-1
optimizer state holds (`SAFE_DEEPSPEED_GLOBALS`). Anything else in a file is refused, naming the global.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.precision import DeepSpeedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy

from track2view.io import remove_stale_temps, replace_directory

CHECKPOINT_KIND = "track2view-deepspeed-checkpoint"  # the output marker of a ZeRO-1 checkpoint directory
# (module, name) of the classes DeepSpeed's ZeRO stage 1/2 optimizer state pickles besides tensors and containers
SAFE_DEEPSPEED_GLOBALS = (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                          ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                          ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                          ("deepspeed.utils.tensor_fragment", "fragment_address"))


def safe_deepspeed_load(path, map_location=None):
    """DeepSpeed's checkpoint-engine `load`, with `weights_only=True` and only SAFE_DEEPSPEED_GLOBALS admitted."""
    import importlib

    import torch

    from track2view.training.checkpoints import load_error_reason

    allowed = [getattr(importlib.import_module(module), name) for module, name in SAFE_DEEPSPEED_GLOBALS]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for a global outside the allow-list, RuntimeError for a broken file
        raise ValueError(f"cannot read DeepSpeed checkpoint file {path} safely (weights_only=True with DeepSpeed's "
                         f"ZeRO state classes allowed): {load_error_reason(e)}") from e


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
    written); the checkpoint directory is written as a hidden `.<name>.tmpPID-RANDOM` sibling by all ranks, then renamed onto `<path>` by
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

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        from track2view.training.checkpoints import load_training_checkpoint
        from track2view.training.resume import check_resumable

        # the settings first: DeepSpeed would load the tensors (and fail on a changed shape) before any hook runs
        saved = load_training_checkpoint(checkpoint_path)["hyper_parameters"]
        check_resumable(saved, dict(self.lightning_module.hparams))
        self.deepspeed_engine.checkpoint_engine.load = safe_deepspeed_load  # instead of weights_only=False
        return super().load_checkpoint(checkpoint_path, weights_only)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Any | None = None) -> None:
        final = Path(self.broadcast(str(filepath)))
        # a name unique beyond the PID (rank 0's, shared by every rank); killed saves' leftovers are removed first
        tmp = Path(self.broadcast(str(final.with_name(f".{final.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"))))
        if self.is_global_zero:
            remove_stale_temps(final.parent, [final.name])
        self.barrier("t2v_ckpt_clean")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("t2v_ckpt_written")
        if self.is_global_zero:
            replace_directory(tmp, final, CHECKPOINT_KIND)
        self.barrier("t2v_ckpt_renamed")
