"""ZeRO-1 checkpoint resume on one GPU: a killed-and-resumed run continues the uninterrupted one, DeepSpeed's
checkpoint files are read without general unpickling, and a changed setting is refused before any tensor loads.

    python bench/zero1_resume.py            # one GPU, tiny Wan, bf16-mixed, ZeRO1Strategy, about a minute

Runs (Lightning Trainer + track2view.training.strategy.ZeRO1Strategy, the same per-step data and noise):
  A: 6 optimizer steps straight;  B: 4 steps, checkpoint;  C: resume B's checkpoint to step 6.
Prints one JSON line per check: the trainable tensors of C against A (max |diff|), save and resume seconds;
a resume with another lr (refused, one message); a resume from a copy whose optimizer-state file holds a pickle
payload (refused without running it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOTAL, SAVE_AT = 6, 4


class Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['T2V_MARKER'], 'w').write('ran')",))


def module(lr: float = 1e-3):
    from track2view.testing.tiny import TINY_TRANSFORMER
    from track2view.training.module import Track2ViewModule

    return Track2ViewModule(wan_config=dict(TINY_TRANSFORMER), torch_dtype="bfloat16", lora_rank=8, lora_alpha=8,
                            conditioning_config=dict(width=64, num_layers=2, num_heads=4), lr=lr, warmup_steps=0,
                            gradient_checkpointing="full", seed=0)


def fit(root: Path, max_steps: int, ckpt_path=None, lr: float = 1e-3):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from track2view.data.loader import collate
    from track2view.training.strategy import ZeRO1Strategy
    from zero1_scaling import synthetic_pool

    pool = synthetic_pool(type("Args", (), dict(frames=9, height=32, width=48, tracks=16, model="tiny"))())

    class StepBatches(torch.utils.data.IterableDataset):
        """The batch of step s is pool[2s], pool[2s + 1], from the (restored) global step on."""

        def __init__(self, trainer):
            self.trainer = trainer

        def __iter__(self):
            for step in range(self.trainer.global_step, max_steps):
                yield collate([pool[(2 * step + j) % len(pool)] for j in range(2)])

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(StepBatches(self.trainer), batch_size=None)

    m = module(lr)
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, every_n_train_steps=SAVE_AT,
                                 save_top_k=0)
    trainer = L.Trainer(devices=1, accelerator="gpu", strategy=ZeRO1Strategy(), precision="bf16-mixed",
                        max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[checkpoint], default_root_dir=str(root))
    t0 = time.perf_counter()
    # the same random-init base in every run (a real run loads it from model_path; checkpoints hold only what
    # trains): configure_model draws it inside fit
    L.seed_everything(0, verbose=False)
    trainer.fit(m, datamodule=Data(), ckpt_path=ckpt_path)
    return m, time.perf_counter() - t0


def trainable(m) -> dict:
    return {n: p.detach().float().cpu().clone() for n, p in m.named_parameters() if p.requires_grad}


def refused(root: Path, ckpt: Path, **kwargs) -> str:
    try:
        fit(root, TOTAL, ckpt_path=str(ckpt), **kwargs)
    except ValueError as e:
        return " ".join(str(e).split())[:300]
    return "NOT REFUSED"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, a_s = fit(tmp / "a", TOTAL)
        _, b_s = fit(tmp / "b", SAVE_AT)
        last = tmp / "b" / "checkpoints" / "last.ckpt"
        t0 = time.perf_counter()
        c, c_s = fit(tmp / "b", TOTAL, ckpt_path=str(last))
        diff = max(float((trainable(c)[n] - v).abs().max()) for n, v in trainable(a).items())
        print(json.dumps(dict(check="resume_equals_uninterrupted", max_abs_diff=diff, steps=TOTAL, resumed_at=SAVE_AT,
                              run_s=dict(uninterrupted=round(a_s, 1), first_part=round(b_s, 1),
                                         resumed_part=round(c_s, 1)),
                              files=sorted(str(p.relative_to(last)) for p in last.rglob("*") if p.is_file()))),
              flush=True)
        print(json.dumps(dict(check="changed_lr_refused", message=refused(tmp / "lr", last, lr=1e-4))), flush=True)
        poisoned = tmp / "poisoned" / "last.ckpt"
        shutil.copytree(last, poisoned)
        optim = next(poisoned.rglob("*optim_states.pt"))
        torch.save({"optimizer_state_dict": Payload()}, optim)
        os.environ["T2V_MARKER"] = str(tmp / "marker")
        print(json.dumps(dict(check="pickle_payload_refused", message=refused(tmp / "p", poisoned),
                              payload_ran=(tmp / "marker").exists())), flush=True)


if __name__ == "__main__":
    main()
