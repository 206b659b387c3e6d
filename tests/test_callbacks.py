"""TrainingMonitor's throughput windows count optimizer steps, also under gradient accumulation."""

from types import SimpleNamespace

import pytest
import torch

from track2view.training.callbacks import TrainingMonitor


class Recorder:
    def __init__(self, tokens_per_sample: int):
        self.logged, self._tokens = [], tokens_per_sample

    def tokens_per_sample(self, batch):
        return self._tokens

    def log_dict(self, metrics, **kwargs):
        self.logged.append(metrics)


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_one_log_per_optimizer_step_with_all_its_micro_batches(accumulate):
    batch = {"source_latents": torch.zeros(3, 1)}  # 3 samples per micro-batch
    trainer = SimpleNamespace(world_size=2, accumulate_grad_batches=accumulate, log_every_n_steps=1, global_step=0,
                              strategy=None, datamodule=None)
    module = Recorder(tokens_per_sample=10)
    monitor = TrainingMonitor(grad_norm=False)
    monitor.on_train_start(trainer, module)
    optimizer_steps = 3
    for batch_idx in range(optimizer_steps * accumulate):
        if (batch_idx + 1) % accumulate == 0:
            trainer.global_step += 1  # Lightning steps the optimizer before the micro-batch's batch_end hook
        monitor.on_train_batch_end(trainer, module, None, batch, batch_idx)
    assert len(module.logged) == optimizer_steps
    for m in module.logged:
        per_step = 3 * 2 * accumulate  # samples of all ranks and micro-batches of one optimizer step
        assert m["perf/samples_per_s"] * m["perf/step_s"] == pytest.approx(per_step)
        assert m["perf/tokens_per_s"] * m["perf/step_s"] == pytest.approx(per_step * 10)
