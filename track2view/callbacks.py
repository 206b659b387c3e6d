"""Training callbacks: metrics (grad norm, throughput, GPU memory, loader counters), the non-finite-loss
guard, and the validation re-render video.

LR is logged by Lightning's own `LearningRateMonitor` and the loss by the module; these callbacks add only
what Lightning does not provide. None of them forces a host-device sync per step: values are logged as
tensors (Lightning turns them into numbers only on logging steps) or read from host-side counters.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_only

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


class ValidationVideo(Callback):
    """After every validation run, re-render the first `num_samples` validation samples and log
    `source | generated | target` side by side as a video: an mp4 under `<log dir>/videos/` and, with a
    WandbLogger, `val/render` in W&B. Rank 0 only; needs a VAE (a `model_path` with a `vae/` folder), else it logs
    only the latent-space error `val/render_latent_mse`.

    num_inference_steps: sampler steps (Wan uses 50; a handful is enough to watch training progress, 2-4 on
    the CPU demo). guidance_scale > 1 uses classifier-free guidance against an empty prompt (zero embeddings).
    """

    def __init__(self, num_inference_steps: int = 20, guidance_scale: float = 1.0, num_samples: int = 1,
                 fps: int = 16, seed: int = 0):
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.num_samples = num_samples
        self.fps = fps
        self.seed = seed
        self._batch = None

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self._batch = batch

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # trainer.log_dir is a collective (a broadcast): every rank calls it, also a rank that got no batch.
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "videos"
        batch, self._batch = self._batch, None
        if batch is not None and not trainer.sanity_checking:
            self._render(trainer, pl_module, batch, out_dir)

    @rank_zero_only
    @torch.no_grad()
    def _render(self, trainer: Trainer, pl_module: LightningModule, batch: dict, out_dir: Path) -> None:
        # Rank 0 only, while the other ranks go on to the next step and wait for it: no collectives in here.
        n = min(self.num_samples, batch["source_latents"].shape[0])
        sub = pl_module.slice_batch(batch, n)
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        generated = pl_module.sample(sub, num_inference_steps=self.num_inference_steps,
                                     guidance_scale=self.guidance_scale, generator=generator)
        mse = (generated.float() - sub["target_latents"].float()).pow(2).mean()
        for logger in trainer.loggers:
            logger.log_metrics({"val/render_latent_mse": float(mse)}, step=trainer.global_step)
        videos = pl_module.decode_latents(torch.cat([sub["source_latents"], generated, sub["target_latents"]]))
        if videos is None:
            return
        frames = np.concatenate(np.split(videos, 3), axis=3)  # [n, T, H, 3W, 3]: source | generated | target
        from track2view.io import write_video

        paths = [write_video(out_dir / f"step{trainer.global_step:07d}-{i}.mp4", f, fps=self.fps)
                 for i, f in enumerate(frames)]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({"val/render": [wandb.Video(str(p), format="mp4",
                                                                  caption=" | ".join(("source", "generated", "target")))
                                                      for p in paths], "trainer/global_step": trainer.global_step})


