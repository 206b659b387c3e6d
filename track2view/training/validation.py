"""Validation re-renders during training: the first validation samples denoised by the model being trained,
logged as `source | generated | target` videos (and their latent-space error).

    batch -> ValidationRenderer.sample (Track2ViewPipeline.denoise around the training model, the batch's
             conditioning inputs) -> generated target latents -> VAE decode (model_path's VAE, if any) -> mp4 / W&B
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from track2view.conditioning import batch_slice


class ValidationRenderer:
    """A Track2ViewPipeline around the model being trained (+ the VAE and scheduler of `model_path`, if any).

    The VAE, scheduler and pipeline are not submodules of the LightningModule, so they are never saved."""

    def __init__(self, model, model_path: str | None, timestep_mode: str, device: torch.device):
        from track2view.inference.pipeline import Track2ViewPipeline, default_scheduler

        vae, scheduler = None, default_scheduler()
        if model_path is not None:
            from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

            scheduler = UniPCMultistepScheduler.from_pretrained(model_path, subfolder="scheduler")
            if (Path(model_path) / "vae").is_dir():
                vae = AutoencoderKLWan.from_pretrained(model_path, subfolder="vae", torch_dtype=torch.float32)
                vae = vae.to(device).requires_grad_(False).eval()
        self.pipe = Track2ViewPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=model,
                                       scheduler=scheduler, timestep_mode=timestep_mode)
        self.pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def sample(self, batch: dict, inputs: dict, num_inference_steps: int, guidance_scale: float,
               generator: torch.Generator | None) -> torch.Tensor:
        """Generated target latents [B, 16, F, h, w] for the batch's source latents, prompts and conditioning
        `inputs`. guidance_scale > 1: CFG against zero prompt embeddings (the batch has no negative prompt)."""
        out = []
        for i in range(batch["source_latents"].shape[0]):
            embeds = batch["prompt_embeds"][i:i + 1]
            out.append(self.pipe.denoise(batch["source_latents"][i:i + 1], embeds, batch_slice(inputs, slice(i, i + 1)),
                                         negative_prompt_embeds=torch.zeros_like(embeds) if guidance_scale > 1 else None,
                                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                         generator=generator))
        return torch.cat(out).to(batch["source_latents"].dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalized latents [B, 16, F, h, w] -> uint8 frames [B, T, H, W, 3]."""
        frames = [self.pipe.decode(z[None]) for z in latents]  # each [T, 3, H, W] in [0, 1]
        return np.stack([(f.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8) for f in frames])


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
        self._renderers: dict[int, ValidationRenderer] = {}

    def _renderer(self, pl_module: LightningModule) -> "ValidationRenderer":
        if id(pl_module) not in self._renderers:
            self._renderers[id(pl_module)] = ValidationRenderer(pl_module.model, pl_module.hparams.model_path,
                                                                pl_module.fm.timestep_mode, pl_module.device)
        return self._renderers[id(pl_module)]

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
        sub = {k: v[:n] for k, v in batch.items() if isinstance(v, list)}
        sub.update(batch_slice({k: v for k, v in batch.items() if not isinstance(v, list)}, slice(0, n)))
        renderer = self._renderer(pl_module)
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        with pl_module._autocast():
            generated = renderer.sample(sub, pl_module.conditioning_inputs(sub), self.num_inference_steps,
                                        self.guidance_scale, generator)
        mse = (generated.float() - sub["target_latents"].float()).pow(2).mean()
        for logger in trainer.loggers:
            logger.log_metrics({"val/render_latent_mse": float(mse)}, step=trainer.global_step)
        if renderer.pipe.vae is None:
            return
        videos = renderer.decode(torch.cat([sub["source_latents"], generated, sub["target_latents"]]))
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


