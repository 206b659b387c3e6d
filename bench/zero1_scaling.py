"""ZeRO-1 data-parallel scaling of Track2View training through Lightning (track2view.training.strategy.ZeRO1Strategy).

Two runs over the same global sample sequence, same per-GPU batch:
  * 1 GPU, accumulate_grad_batches=2   (global batch 2B)
  * 2 GPUs, accumulate_grad_batches=1  (global batch 2B; rank r takes the micro-batch rank 1 GPU took r-th)
Synthetic latents/prompts/tracks live in memory (Wan-2.1-1.3B shape, random init, LoRA r64 + the paper's
8-layer conditioner). The module seeds its random draws by the micro-batch's position in the global batch, so
both runs see the same data AND the same noise: their per-step losses must agree up to bf16 / reduction-order
noise. Prints JSON lines:
  {"run": "1gpu"|"2gpu", "samples_per_s", "tokens_per_s", "step_s", "peak_gib", "losses": [...]}
  {"scaling_efficiency": samples/s(2) / (2 x samples/s(1)), "max_rel_loss_diff": ...}     (goal >= 0.90)
  {"checkpoint": ...}  the 2-GPU run's ZeRO-1 checkpoint: trainable-only, atomic directory, exportable
Usage (about 4-5 min on 2 H200):
  python bench/zero1_scaling.py [--height 240 --width 416 --frames 49 --batch 2 --steps 16 --warmup 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from track2view.video_size import latent_frames  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=416)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--batch", type=int, default=2, help="per-GPU batch")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=4, help="steps excluded from the timing")
    p.add_argument("--tracks", type=int, default=1152)
    p.add_argument("--model", choices=("1.3b", "14b", "tiny"), default="1.3b")
    p.add_argument("--smoke", action="store_true", help="CPU + DDP (gloo) + tiny model: checks the logic, no speed")
    p.add_argument("--checkpointing", default="full", help="none | full | selective")
    p.add_argument("--attention_backend", default=None)
    p.add_argument("--no_checkpoint_check", action="store_true")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # number of GPUs of this run
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- the worker (one Lightning run; Lightning re-launches this script once per extra GPU) ----------------
def synthetic_pool(args, size: int = 8):
    """`size` distinct samples [16, F, h, w] etc., generated once from fixed seeds."""
    from track2view.tracks import PairedTracks

    f, h, w = latent_frames(args.frames), args.height // 8, args.width // 8
    text_dim = 32 if args.model == "tiny" else 4096
    pool = []
    for i in range(size):
        g = torch.Generator().manual_seed(i)
        uv = torch.rand(2, f, args.tracks, 2, generator=g) * 0.9 + 0.05
        depth = torch.rand(2, f, args.tracks, generator=g) * 3 + 1
        pool.append(dict(source_latents=torch.randn(16, f, h, w, generator=g),
                         target_latents=torch.randn(16, f, h, w, generator=g),
                         prompt_embeds=torch.randn(512, text_dim, generator=g) * 0.1,
                         tracks=PairedTracks.from_projections(uv, depth), key=f"synthetic-{i}", caption=""))
    return pool


class GlobalOrderBatches(torch.utils.data.IterableDataset):
    """Micro-batch k of rank r (of W ranks, accumulating A): step s = k // A, slot = r*A + k % A, samples
    (s*W*A + slot)*B + j for j < B: the same global sequence whatever W and A."""

    def __init__(self, pool, batch: int, rank: int, world: int, accumulate: int, steps: int):
        self.pool, self.batch, self.rank, self.world = pool, batch, rank, world
        self.accumulate, self.steps = accumulate, steps

    def __iter__(self):
        from track2view.data.loader import collate

        for k in range(self.steps * self.accumulate):
            step, slot = divmod(k, self.accumulate)
            first = (step * self.world * self.accumulate + self.rank * self.accumulate + slot) * self.batch
            yield collate([self.pool[(first + j) % len(self.pool)] for j in range(self.batch)])


def worker(args) -> None:
    import lightning as L

    from track2view.training.strategy import ZeRO1Strategy
    from track2view.testing.tiny import TINY_TRANSFORMER, WAN_1_3B, WAN_14B
    from track2view.training.module import Track2ViewModule

    devices, accumulate = args.worker, 2 // args.worker

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            t = self.trainer
            return torch.utils.data.DataLoader(GlobalOrderBatches(synthetic_pool(args), args.batch, t.global_rank,
                                                                  t.world_size, accumulate, args.steps),
                                               batch_size=None, pin_memory=not args.smoke)

    sync = torch.cuda.synchronize if not args.smoke else (lambda: None)

    class Probe(L.Callback):
        """Per-micro-batch loss and the wall time of each optimizer step; at the end (strategy still set up):
        the losses of all ranks gathered, and the checkpoint check."""

        def __init__(self):
            self.losses, self.times, self.t0, self.result = [], [], None, {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx % accumulate == 0:
                sync()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]) * accumulate)  # Lightning hands out loss / accumulate
            if (batch_idx + 1) % accumulate == 0:
                sync()
                self.times.append(time.perf_counter() - self.t0)

        def on_train_end(self, trainer, pl_module):
            losses = trainer.strategy.all_gather(torch.tensor(self.losses, device=pl_module.device))
            losses = losses.reshape(devices, args.steps, accumulate).permute(1, 0, 2).reshape(args.steps, -1)
            self.result["losses"] = [round(float(x), 6) for x in losses.mean(1)]
            if devices == 2 and not args.no_checkpoint_check:
                self.result["checkpoint"] = check_checkpoint(trainer, pl_module, root)

    L.seed_everything(0, verbose=False)  # the same random-init model in both runs
    wan = {"1.3b": WAN_1_3B, "14b": WAN_14B, "tiny": TINY_TRANSFORMER}[args.model]
    width = 64 if args.model == "tiny" else 512
    module = Track2ViewModule(wan_config=dict(wan), torch_dtype="float32" if args.smoke else "bfloat16",
                              conditioning_config=dict(width=width, num_layers=8, num_heads=8), lora_rank=64, lora_alpha=64,
                              lr=1e-4, warmup_steps=0, gradient_checkpointing=args.checkpointing,
                              attention_backend=args.attention_backend, seed=0)
    probe = Probe()
    root = Path(args.out).with_suffix("")
    hardware = (dict(accelerator="cpu", strategy="ddp" if devices > 1 else "auto", precision="32-true") if args.smoke
                else dict(accelerator="gpu", strategy=ZeRO1Strategy(), precision="bf16-mixed"))
    trainer = L.Trainer(devices=devices, **hardware,
                        max_steps=args.steps, accumulate_grad_batches=accumulate, gradient_clip_val=1.0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[probe], default_root_dir=str(root))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=Data())

    step_s = sorted(probe.times[args.warmup:])[len(probe.times[args.warmup:]) // 2]
    samples_per_step = args.batch * devices * accumulate
    tokens = 2 * latent_frames(args.frames) * (args.height // 16) * (args.width // 16)
    result = dict(run=f"{devices}gpu", model=args.model, hwf=f"{args.height}x{args.width}x{args.frames}",
                  per_gpu_batch=args.batch, accumulate=accumulate, step_s=round(step_s, 4),
                  samples_per_s=round(samples_per_step / step_s, 3),
                  tokens_per_s=round(samples_per_step * tokens / step_s),
                  peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
                  **probe.result)
    if trainer.is_global_zero:
        Path(args.out).write_text(json.dumps(result))


def check_checkpoint(trainer, module, root: Path) -> dict:
    """Save a ZeRO-1 checkpoint, then read it back safely and compare the trainable tensors; export it."""
    from track2view.training.checkpoints import export_checkpoint, load_training_checkpoint

    path = root / "ckpt" / "last.ckpt"
    t0 = time.perf_counter()
    trainer.save_checkpoint(path)
    out = {"save_s": round(time.perf_counter() - t0, 2)}
    if trainer.is_global_zero:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        loaded = load_training_checkpoint(path)
        trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
        frozen_saved = [k for k in loaded["state_dict"] if k not in trainable]
        max_diff = max(float((loaded["state_dict"][n].float().cpu() - p.detach().float().cpu()).abs().max())
                       for n, p in trainable.items() if n in loaded["state_dict"])
        out.update(dir_mb=round(size / 2**20, 1), tmp_left=any(p.name.startswith(f".{path.name}.tmp") for p in path.parent.iterdir()),
                   trainable_saved=sum(n in loaded["state_dict"] for n in trainable), trainable=len(trainable),
                   frozen_saved=len(frozen_saved), max_abs_diff=max_diff, global_step=loaded["global_step"])
        try:
            t0 = time.perf_counter()
            export = export_checkpoint(path, root / "export")
            out.update(export_ok=sorted(p.name for p in export.iterdir()), export_s=round(time.perf_counter() - t0, 1))
        except Exception as e:  # report, do not hide the scaling numbers
            out.update(export_error=repr(e)[:400])
    return out


# ---- the driver ------------------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    print(json.dumps(dict(torch=torch.__version__, gpus=torch.cuda.device_count(),
                          gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for devices in (1, 2):
            out = Path(tmp) / f"run{devices}.json"
            cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", str(devices), "--out", str(out)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not out.exists():
                print(json.dumps(dict(run=f"{devices}gpu", error=proc.stderr[-3000:])), flush=True)
                continue
            results[devices] = json.loads(out.read_text())
            results[devices]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(results[devices]), flush=True)
    if 1 in results and 2 in results:
        one, two = results[1], results[2]
        rel = [abs(a - b) / max(abs(a), 1e-8) for a, b in zip(one["losses"], two["losses"])]
        print(json.dumps(dict(scaling_efficiency=round(two["samples_per_s"] / (2 * one["samples_per_s"]), 4),
                              goal=0.9, max_rel_loss_diff=round(max(rel), 5),
                              losses_1gpu=one["losses"], losses_2gpu=two["losses"])), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
