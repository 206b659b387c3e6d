r"""Train a small `AutoencoderKLWan` (the real Wan-2.1 VAE class, a small config) on synthetic scene videos.

    python experiments/synthetic/autoencoder.py --train DATA/train --test DATA/test --config model.json \
        --out RUN/vae --seconds 180 --device cuda

No pretrained Wan VAE can reach these machines, and a random-init one decodes noise; this one is trained until
held-out reconstruction is good, so that every decoded video of the experiment means something. Objective:
MSE + L1 on pixels in [-1, 1] and a small KL term (weight `--kl`, as latent-diffusion VAEs), on random
(4k+1)-frame clips of the training videos, by default as long as the videos: the causal VAE carries a feature
cache from chunk to chunk, and one trained on 9-frame clips of 25-frame videos reconstructed frames 1-9 at 26 dB
but fell to 14 dB by frame 25 (docs/results.md). `--init` fine-tunes a trained autoencoder instead (`--seconds 0`:
takes it as it is, only measured and its latent statistics set). After
training, the per-channel mean/std of the posterior mode over the training clips become the config's
`latents_mean` / `latents_std` (Wan's normalisation), so normalised latents have unit variance, as flow matching
assumes.

Written to `--out` atomically (diffusers `save_pretrained` + `autoencoder.json`: held-out PSNR, steps, time);
an existing complete output is kept (the stage is skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPORT = "autoencoder.json"


def scene_videos(root: Path, limit: int | None = None) -> list[Path]:
    """Every camera video of a synthetic split (MultiCamVideo layout), sorted; the first `limit`."""
    videos = sorted(Path(root).glob("*/scene*/videos/cam*.mp4"))
    if not videos:
        raise FileNotFoundError(f"{root} holds no synthetic videos (*/scene*/videos/cam*.mp4)")
    return videos[:limit]


def load_videos(paths: list[Path]) -> torch.Tensor:
    """Videos [N, T, H, W, 3] uint8 (all of one size)."""
    from track2view.io import read_video

    return torch.from_numpy(np.stack([read_video(p)[0] for p in paths]))


def to_pixels(videos: torch.Tensor, device) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1] on `device`."""
    return videos.to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def random_clips(videos: torch.Tensor, batch: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of random `frames`-frame clips [B, T', H, W, 3] uint8, each also flipped left-right at random."""
    n, t = videos.shape[:2]
    idx = torch.randint(0, n, (batch,), generator=generator)
    start = torch.randint(0, t - frames + 1, (batch,), generator=generator)
    clips = torch.stack([videos[i, s:s + frames] for i, s in zip(idx.tolist(), start.tolist())])
    flip = torch.rand(batch, generator=generator) < 0.5
    clips[flip] = clips[flip].flip(3)
    return clips


def train(vae, videos: torch.Tensor, seconds: float, max_steps: int, batch: int, frames: int, lr: float, kl: float,
          device, log_every: int = 200) -> dict:
    """AdamW with a cosine decay over the time budget; bf16 autocast on CUDA. Returns {steps, seconds, loss}."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, step, loss = time.perf_counter(), 0, float("nan")
    vae.train()
    while step < max_steps and (elapsed := time.perf_counter() - start) < seconds:
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(elapsed / seconds, step / max_steps))))
        x = to_pixels(random_clips(videos, batch, frames, g), device)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        recon = recon.float()
        objective = F.mse_loss(recon, x) + F.l1_loss(recon, x) + kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step, loss = step + 1, float(objective.detach())
        if step % log_every == 0:
            print(f"step {step}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    vae.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1), "final_loss": loss}


@torch.no_grad()
def psnr(vae, videos: torch.Tensor, device, batch: int = 4) -> tuple[float, list[float]]:
    """PSNR (dB) of whole videos [N, T, H, W, 3] reconstructed from the posterior mode, in the [-1, 1] range
    (torchmetrics): (mean over videos of each one's, [T] mean over videos of each frame's)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    whole, by_frame = [], []
    for i in range(0, len(videos), batch):
        x = to_pixels(videos[i:i + batch], device)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1)
        whole += peak_signal_noise_ratio(recon, x, data_range=2.0, reduction="none", dim=(1, 2, 3, 4)).tolist()
        by_frame.append(peak_signal_noise_ratio(recon.transpose(1, 2).flatten(0, 1), x.transpose(1, 2).flatten(0, 1),
                                                data_range=2.0, reduction="none", dim=(1, 2, 3)).view(len(x), -1))
    return float(np.mean(whole)), torch.cat(by_frame).mean(0).tolist()


@torch.no_grad()
def set_latent_stats(vae, videos: torch.Tensor, device, batch: int = 4) -> None:
    """latents_mean / latents_std of the config := per-channel statistics of the posterior mode over `videos`."""
    z = torch.cat([vae.encode(to_pixels(videos[i:i + batch], device)).latent_dist.mode().float()
                   for i in range(0, len(videos), batch)])
    z = z.transpose(0, 1).flatten(1)  # [C, everything]
    vae.register_to_config(latents_mean=z.mean(1).tolist(), latents_std=z.std(1).clamp_min(1e-3).tolist())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="synthetic train split (python -m track2view.synthetic)")
    p.add_argument("--test", required=True, help="held-out split: the PSNR is measured on its videos")
    p.add_argument("--config", required=True, help="model.json: its 'vae' entry is the AutoencoderKLWan config")
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=180.0,
                   help="training time budget; 0 with --init: that autoencoder as it is (measured, statistics set)")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--clip-frames", type=int, default=None,
                   help="frames per training clip (4k+1; default: the videos' length, see the docstring)")
    p.add_argument("--init", help="a trained autoencoder directory (this script's --out) to fine-tune")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--max-videos", type=int, default=2000, help="training videos held in memory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    from diffusers import AutoencoderKLWan

    from track2view.io import atomic_directory

    out = Path(a.out)
    if (out / REPORT).is_file():
        print(f"{out} exists: {json.loads((out / REPORT).read_text())}")
        return 0
    if a.seconds <= 0 and not a.init:
        print("error: --seconds 0 trains nothing, and without --init there is no autoencoder to measure; give --init "
              "DIR (a trained one) or a time budget", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    config = json.loads(Path(a.config).read_text())["vae"]
    vae = AutoencoderKLWan.from_pretrained(a.init) if a.init else AutoencoderKLWan(**config)
    if differ := {k: (v, vae.config[k]) for k, v in config.items() if vae.config[k] != v}:
        print(f"error: --init {a.init} is not the --config autoencoder ({{setting: (config, init)}}: {differ}); "
              f"train one from scratch (no --init) or use that config", file=sys.stderr)
        return 2
    videos = load_videos(scene_videos(Path(a.train), a.max_videos))
    clip_frames = a.clip_frames or videos.shape[1]
    if (clip_frames - 1) % 4 or clip_frames > videos.shape[1]:
        print(f"error: --clip-frames {clip_frames} must be 4k+1 (the causal VAE's stride) and at most the videos' "
              f"{videos.shape[1]} frames", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    vae.to(device)
    held_out = load_videos(scene_videos(Path(a.test)))
    report = train(vae, videos, a.seconds, a.max_steps, a.batch_size, clip_frames, a.lr, a.kl, device)
    whole, by_frame = psnr(vae, held_out, device)
    report.update(test_psnr_db=round(whole, 2), test_psnr_db_by_frame=[round(v, 2) for v in by_frame],
                  clip_frames=clip_frames, init=a.init, test_videos=len(held_out),
                  train_videos=len(videos), parameters=sum(p.numel() for p in vae.parameters()),
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    set_latent_stats(vae, videos[:256], device)
    with atomic_directory(out, "synthetic-autoencoder") as tmp:
        vae.save_pretrained(tmp)
        (tmp / REPORT).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
