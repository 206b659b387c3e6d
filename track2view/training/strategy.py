"""`ZeRO1Strategy`: DeepSpeed ZeRO stage 1 that saves only the trainable parameters, atomically.

A checkpoint is a directory (DeepSpeed's sharded layout, frozen parameters excluded), first written into
`<name>.tmp` by every rank and renamed into place by rank 0 (track2view.io.replace_directory), so an
interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.precision import DeepSpeedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy

from track2view.io import replace_directory

CHECKPOINT_KIND = "track2view-deepspeed-checkpoint"  # the output marker of a ZeRO-1 checkpoint directory


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
            replace_directory(tmp, final, CHECKPOINT_KIND)
        self.barrier("t2v_ckpt_renamed")
