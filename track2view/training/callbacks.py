"""Training callbacks: metrics (grad norm, throughput, GPU memory, loader counters) and the non-finite-loss
guard (the validation re-render video: validation.py).

LR is logged by Lightning's own `LearningRateMonitor` and the loss by the module; these callbacks add only
what Lightning does not provide. None of them forces a host-device sync per step: values are logged as
tensors (Lightning turns them into numbers only on logging steps) or read from host-side counters.
"""

from __future__ import annotations

import logging
import time

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss; the message says what to do."""


class TrainingMonitor(Callback):
    """Logs `train/grad_norm`, `perf/samples_per_s`, `perf/tokens_per_s`, `perf/step_s`, `perf/gpu_mem_gib`
    (peak since the last log) and the loader's sample/skip counters, every `log_every_n_steps` of the Trainer.

    Throughput is wall time over the whole logging window (so it includes data loading and all syncs) and
    counts the samples of all ranks.
    """

    def __init__(self, grad_norm: bool = True):
        self.grad_norm = grad_norm
        self._window_start: float | None = None
        self._samples = self._tokens = self._steps = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._window_start = time.perf_counter()
        self._samples = self._tokens = self._steps = 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        # DeepSpeed keeps the gradients in its own partitions; its norm is read after the step instead.
        if not self.grad_norm or isinstance(trainer.strategy, DeepSpeedStrategy):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        batch_size = batch["source_latents"].shape[0]
        self._samples += batch_size * trainer.world_size
        self._tokens += pl_module.tokens_per_sample(batch) * batch_size * trainer.world_size
        if (batch_idx + 1) % max(1, trainer.accumulate_grad_batches):
            return  # mid-accumulation: no optimizer step yet, nothing to log
        self._steps += 1  # optimizer steps in this window (perf/step_s is per optimizer step)
        if self.grad_norm and isinstance(trainer.strategy, DeepSpeedStrategy):
            norm = trainer.strategy.deepspeed_engine.get_global_grad_norm()
            if norm is not None:
                pl_module.log("train/grad_norm", float(norm), on_step=True, on_epoch=False, rank_zero_only=True)
        if (trainer.global_step % max(1, trainer.log_every_n_steps)) != 0:
            return
        now = time.perf_counter()
        elapsed = max(now - (self._window_start or now), 1e-9)
        metrics = {"perf/samples_per_s": self._samples / elapsed, "perf/tokens_per_s": self._tokens / elapsed,
                   "perf/step_s": elapsed / max(self._steps, 1)}
        if torch.cuda.is_available():
            metrics["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "loader_stats"):
            metrics.update({f"data/{k}": float(v) for k, v in datamodule.loader_stats().items()})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._window_start, self._samples, self._tokens, self._steps = now, 0, 0, 0


class NonFiniteLossGuard(Callback):
    """Stops the run after `max_consecutive` steps in a row with a NaN/inf loss.

    The module skips such steps itself (no weight update; the step counter and LR schedule still advance,
    so a resumed run stays aligned) and reports them in `pl_module.last_step_nonfinite`; this callback
    counts them (`train/nonfinite_steps`, total) and raises `NonFiniteLossError` when the streak reaches the
    limit. Checkpoints are not touched: the last one written holds only good updates.
    """

    def __init__(self, max_consecutive: int = 5):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.streak = 0
        self.total = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if getattr(pl_module, "last_step_nonfinite", False):
            self.streak += 1
            self.total += 1
            log.warning("non-finite loss at step %d: step skipped (%d in a row, %d in total)",
                        trainer.global_step, self.streak, self.total)
        else:
            self.streak = 0
        pl_module.log("train/nonfinite_steps", float(self.total), on_step=True, on_epoch=False, rank_zero_only=True)
        if self.streak >= self.max_consecutive:
            ckpt_dirs = sorted({str(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)})
            raise NonFiniteLossError(
                f"the loss was NaN/inf for {self.streak} consecutive steps (up to step {trainer.global_step}); "
                f"training stopped. Skipped steps never update the weights, so the last checkpoint in "
                f"{', '.join(ckpt_dirs) or 'the checkpoint directory'} is intact. Lower model.lr or check the data, "
                f"then resume with --ckpt_path last (limit: NonFiniteLossGuard max_consecutive={self.max_consecutive})")

    def state_dict(self) -> dict:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = int(state_dict.get("total", 0))
