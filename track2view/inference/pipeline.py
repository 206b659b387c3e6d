"""Track2ViewPipeline: re-render a video along a new camera trajectory (diffusers-style inference).

    source frames [T, H0, W0, 3] --resize_and_crop + VAE--> source latents [1, 16, F, h, w] (clean, encoded once)
    prompt --UMT5--> prompt embeds [1, 512, D] (and the negative prompt's, for classifier-free guidance)
    target latents ~ N(0, I) [1, 16, F, h, w]
    every step: [source | target] along frames -> Track2ViewTransformer(conditioning inputs) -> keep the target
                half's prediction -> CFG -> scheduler step on the target latents only (the source stays clean)
    target latents --VAE--> target frames [T, H, W, 3]

Conditioning inputs are what the model's conditioning kind reads (track2view/conditioning/): `tracks`
(PairedTracks [2, T or F, N]) for "tracks", `cameras` ([F, 12], the relative target camera) for "camera",
nothing for "none"; a call with another kind's inputs is refused with one message. The conditioning tokens are
computed once per video (`Track2ViewTransformer.constant_conditioning`).

As in training (paper Sec. 3.4), the source half is never noised. Timesteps follow the export's training
`timestep_mode` (`ExportInfo.timestep_mode`): one per sample (the default) or per token with t = 0 on the
source half, built by flow_matching's own function.
The two CFG branches (negative, positive prompt) run as one batch of 2 (on every step, or only on the steps of
a `guidance_interval`: the others run the positive branch alone). The scheduler is the model
directory's (Wan-2.1: UniPC with flow sigmas, shift 3.0 at 480p); `flow_shift` overrides the shift.

Several trajectories of one source video share its encoding: `prepare_source(...)` returns a `SourceCache`
that `__call__(source=cache, inputs=...)` reuses, so only the denoising and decoding run per trajectory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from track2view.data.latents import encode_prompt, encode_video, latent_stats, resize_and_crop
from track2view.inference.guidance import BOTH_BRANCHES, FULL_INTERVAL, POSITIVE_BRANCH, guided_steps
from track2view.model.export import ExportInfo
from track2view.model.flow_matching import TIMESTEP_MODES, token_timesteps
from track2view.tracks import PairedTracks
from track2view.video_size import video_size_problem

DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_NUM_FRAMES = 480, 832, 81  # Wan-2.1 480p, the training resolution
MAX_SEQUENCE_LENGTH = 512  # UMT5 tokens, zero-padded as WanPipeline does


def default_scheduler(flow_shift: float = 3.0):
    """Wan-2.1's sampler: UniPC with flow sigmas (shift 3.0 at 480p), for a model directory without scheduler/."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=flow_shift)


def check_export_matches(model_dir, info: ExportInfo) -> None:
    """Raise ValueError naming the differing settings when an export was trained for another base model than the
    one in `model_dir` (checked on the configs, before any weight is loaded). An export that carries its trained
    base (`info.transformer`) fits any model directory: only its VAE, text encoder and scheduler are used."""
    from diffusers import WanTransformer3DModel

    if info.transformer:
        return
    info.check_base(dict(WanTransformer3DModel.load_config(model_dir, subfolder="transformer")), str(model_dir))


@dataclass
class SourceCache:
    """The source video's encoding, reusable across trajectories."""

    latents: torch.Tensor  # [1, 16, F, h, w] float32, normalized
    prompt_embeds: torch.Tensor  # [1, L, D]
    negative_prompt_embeds: torch.Tensor | None  # [1, L, D] or None (no CFG)
    frames: np.ndarray  # [T, H, W, 3] uint8, the resized + cropped source frames
    fps: float | None

    @property
    def num_frames(self) -> int:
        return len(self.frames)


@dataclass
class Track2ViewPipelineOutput(BaseOutput):
    """frames: np [T, H, W, 3] float32 in [0, 1] ("np"), torch [T, 3, H, W] in [0, 1] ("pt") or target
    latents [1, 16, F, h, w] ("latent"); fps: the source video's frame rate (None if unknown)."""

    frames: np.ndarray | torch.Tensor
    fps: float | None = None


class Track2ViewPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler, timestep_mode: str = "per_sample",
                 export_info: ExportInfo | None = None):
        super().__init__()
        if timestep_mode not in TIMESTEP_MODES:
            raise ValueError(f"timestep_mode must be one of {TIMESTEP_MODES} (as the model was trained), "
                             f"got {timestep_mode!r}")
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        self.register_to_config(timestep_mode=timestep_mode)
        self.export_info = export_info  # the export's track2view.json (None: an untrained conditioning)
        vae_config = getattr(vae, "config", None)
        self.vae_scale_factor_temporal = getattr(vae_config, "scale_factor_temporal", 4)
        self.vae_scale_factor_spatial = getattr(vae_config, "scale_factor_spatial", 8)

    # ---- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, model_dir, checkpoint_dir=None, torch_dtype: torch.dtype = torch.bfloat16,
                        vae_dtype: torch.dtype = torch.float32, flow_shift: float | None = None,
                        info: ExportInfo | None = None, conditioning: str = "tracks") -> "Track2ViewPipeline":
        """Load Wan-2.1 (diffusers directory: transformer, vae, text_encoder, tokenizer, scheduler) and apply a
        trained Track2View export (LoRA + conditioning, docs/architecture.md "Trained checkpoint"; its `info`,
        read here if not given).

        Without `checkpoint_dir` a freshly initialised `conditioning` kind is used (zero output: the base model).
        The timestep mode (per sample or per token) is the one the export was trained with.
        The VAE runs in `vae_dtype` (float32, as Wan recommends), the rest in `torch_dtype`.
        """
        import diffusers
        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        from track2view.model.transformer import Track2ViewTransformer

        if checkpoint_dir is None:
            transformer = Track2ViewTransformer.from_pretrained(model_dir, subfolder="transformer",
                                                                torch_dtype=torch_dtype, conditioning=conditioning)
        else:  # conditioning and LoRA settings come from the export's track2view.json
            info = info or ExportInfo.read(checkpoint_dir)
            check_export_matches(model_dir, info)
            transformer = Track2ViewTransformer.from_trained(model_dir, checkpoint_dir, info, torch_dtype=torch_dtype)
        transformer.eval()
        # Each component is loaded by its own class: model_index.json names WanPipeline, not this pipeline.
        scheduler_config = diffusers.UniPCMultistepScheduler.load_config(model_dir, subfolder="scheduler")
        scheduler_cls = getattr(diffusers, scheduler_config.get("_class_name", ""), diffusers.UniPCMultistepScheduler)
        pipe = cls(tokenizer=AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer"),
                   text_encoder=UMT5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder",
                                                                 torch_dtype=torch_dtype).eval(),
                   vae=AutoencoderKLWan.from_pretrained(model_dir, subfolder="vae", torch_dtype=vae_dtype).eval(),
                   transformer=transformer, scheduler=scheduler_cls.from_config(scheduler_config),
                   timestep_mode=info.timestep_mode if info is not None else "per_sample", export_info=info)
        if flow_shift is not None:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=flow_shift)
        return pipe

    def fuse_lora(self) -> "Track2ViewPipeline":
        """Merge the LoRA into the base weights (diffusers' `fuse_lora`): inference then costs what the base
        model costs, at bf16 rounding of the merged weights. Not reversible once the pipeline is saved."""
        if self.transformer.lora is not None:
            self.transformer.transformer.fuse_lora()
        return self

    # ---- encoding --------------------------------------------------------------------------------------------
    def encode_prompts(self, prompt: str, negative_prompt: str | None, do_cfg: bool):
        """(prompt_embeds [1, 512, D], negative [1, 512, D] or None), zero-padded as WanPipeline does."""
        prompts = [prompt or ""] + ([negative_prompt or ""] if do_cfg else [])
        # on the text encoder's device: after a first render it may be back on the CPU (rerender.free_text_encoder)
        embeds = encode_prompt(self.tokenizer, self.text_encoder, prompts, max_length=MAX_SEQUENCE_LENGTH)
        padded = [torch.cat([e, e.new_zeros(MAX_SEQUENCE_LENGTH - len(e), e.shape[-1])])[None].to(
            self._execution_device) for e in embeds]
        return padded[0], (padded[1] if do_cfg else None)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        patch = self.transformer.config.patch_size if hasattr(self.transformer, "config") else (1, 2, 2)
        return tuple(int(p) for p in patch)

    def check_size(self, height: int, width: int, num_frames: int) -> None:
        multiple = self.vae_scale_factor_spatial * self.patch_size[-1]
        problem = video_size_problem(height, width, num_frames, multiple, self.vae_scale_factor_temporal)
        if problem:
            raise ValueError(problem)

    @torch.no_grad()
    def prepare_source(self, video: np.ndarray, prompt: str = "", negative_prompt: str | None = None,
                       height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH, num_frames: int | None = None,
                       guidance_scale: float = 5.0, fps: float | None = None) -> SourceCache:
        """Encode the source once: frames [T, H0, W0, 3] uint8 (first `num_frames` used, default all) ->
        SourceCache (latents, prompt embeds, the resized frames)."""
        video = np.asarray(video)
        num_frames = len(video) if num_frames is None else num_frames
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"video must be RGB frames [T, H, W, 3], got {list(video.shape)}")
        if len(video) < num_frames:
            raise ValueError(f"the video has {len(video)} frames, {num_frames} are needed")
        self.check_size(height, width, num_frames)
        pixels = resize_and_crop(video[:num_frames], height, width)  # [3, T, H, W] in [-1, 1]
        latents = encode_video(self.vae, pixels[None], self.vae_scale_factor_temporal, self._execution_device)
        prompt_embeds, negative = self.encode_prompts(prompt, negative_prompt, guidance_scale > 1.0)
        frames = ((pixels.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        return SourceCache(latents, prompt_embeds, negative, frames, fps)

    # ---- denoising ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, source_latents: torch.Tensor, prompt_embeds: torch.Tensor, inputs: dict,
                negative_prompt_embeds: torch.Tensor | None = None, num_inference_steps: int = 50,
                guidance_scale: float = 5.0, generator: torch.Generator | None = None,
                latents: torch.Tensor | None = None, reuse_conditioning: bool = True,
                guidance_interval: tuple[float, float] = FULL_INTERVAL) -> torch.Tensor:
        """Target latents [1, 16, F, h, w] from clean source latents [1, 16, F, h, w] and the conditioning
        `inputs` of one video at the latent stride (batch 1: tracks [1, 2, F, N], cameras [1, F, 12]). With CFG
        (negative embeds given, guidance > 1) the negative and the positive branch run as one batch of 2; both see
        the same inputs and source. `reuse_conditioning`: compute the conditioning tokens once per video instead
        of once per step (`Track2ViewTransformer.constant_conditioning`; the same result). A model with one-way
        attention computes the source once per CFG branch and steps on the target tokens only
        (`Track2ViewTransformer.source_kv_cache`; the same result). `guidance_interval`: the fraction of the steps
        that run CFG, the others the positive branch alone (track2view/inference/guidance.py; default all)."""
        device, dtype = self._execution_device, self.transformer.dtype  # under CPU offload, not the weights' device
        do_cfg = negative_prompt_embeds is not None and guidance_scale > 1.0
        inputs = with_batch_axis(inputs)
        source = source_latents.to(device, dtype)
        if latents is None:
            latents = randn_tensor(tuple(source.shape), generator=generator, device=device, dtype=torch.float32)
        latents = latents.to(device, torch.float32)
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds
        embeds = embeds.to(device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self.scheduler.set_begin_index(0)
        timesteps = self.scheduler.timesteps
        guided = guided_steps(len(timesteps), guidance_interval) if do_cfg else [False] * len(timesteps)
        if self.transformer.transformer.is_cache_enabled:  # a new video: step caches forget the last one
            self.transformer.transformer._reset_stateful_cache()
        reuse = self.transformer.constant_conditioning() if reuse_conditioning else contextlib.nullcontext()
        with reuse, self.transformer.source_kv_cache():  # one-way attention: steps run on the target tokens only
            return self._denoise_loop(source, latents, embeds, inputs, timesteps, guidance_scale, guided)

    def _denoise_loop(self, source, latents, embeds, inputs, timesteps, guidance_scale, guided):
        """source [1, 16, F, h, w] (transformer dtype), latents [1, 16, F, h, w] float32, embeds [B, L, D]: 2
        (negative, positive) with CFG, else 1; inputs of batch 1; guided: per step, whether it runs CFG."""
        with self.progress_bar(total=len(timesteps)) as bar:  # silence: set_progress_bar_config(disable=True)
            for t, cfg in zip(timesteps, guided):
                if cfg:
                    uncond, cond = self._velocity(source, latents, embeds, inputs, t).chunk(2)
                    pred = uncond + guidance_scale * (cond - uncond)
                else:
                    pred = self._velocity(source, latents, embeds[-1:], inputs, t)
                latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
                bar.update()
        return latents

    def _velocity(self, source, latents, embeds, inputs, t) -> torch.Tensor:
        """The target half's velocity [B, 16, F, h, w] float32 for B = len(embeds) prompts, in cache context
        "cond_uncond" (B = 2) or "cond" (B = 1): diffusers' step caches and the source KV cache key their state by it
        (the batch differs)."""
        batch = len(embeds)
        hidden = torch.cat([source, latents.to(source.dtype)], dim=2)  # [1, 16, 2F, h, w]: source | target
        hidden = hidden.expand(batch, *hidden.shape[1:])
        timestep = token_timesteps(t.expand(batch), self.config.timestep_mode, hidden.shape, self.patch_size)
        with self.transformer.cache_context(BOTH_BRANCHES if batch == 2 else POSITIVE_BRANCH):
            out = self.transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=embeds, **inputs)
        return out[:, :, -latents.shape[2]:].float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [1, 16, F, h, w] -> frames [T, 3, H, W] float32 in [0, 1]."""
        device, dtype = self._execution_device, next(self.vae.parameters()).dtype
        mean, std = latent_stats(self.vae)
        z = latents.to(device, torch.float32) * std.to(device) + mean.to(device)
        video = self.vae.decode(z.to(dtype), return_dict=False)[0]  # [1, 3, T, H, W] in [-1, 1]
        return ((video[0].float().permute(1, 0, 2, 3) + 1) / 2).clamp(0, 1).cpu()

    # ---- the call -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, video: np.ndarray | None = None, inputs: dict | None = None, prompt: str = "",
                 negative_prompt: str | None = None, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 generator: torch.Generator | None = None, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH,
                 num_frames: int | None = None, fps: float | None = None, source: SourceCache | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np", return_dict: bool = True,
                 guidance_interval: tuple[float, float] = FULL_INTERVAL):
        """Re-render `video` (frames [T, H0, W0, 3] uint8) along the camera the conditioning `inputs` describe.

        inputs: what the model's conditioning kind reads, for this one video: {"tracks": PairedTracks [2, T, N] at
        the video's frame rate (subsampled here to the latent stride) or [2, F, N]} | {"cameras": [F, 12]} | {}
        (`track2view.inference.rerender.conditioning_inputs` builds them from a trajectory). `source`: a
        `prepare_source` result to reuse (then `video`, `prompt`, `negative_prompt`, `height`, `width`,
        `num_frames` are taken from it). output_type: "np", "pt" or "latent" (see Track2ViewPipelineOutput).
        guidance_interval: (start, end) fractions of the steps that run CFG (guidance.py; default all).
        """
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        if source is None:
            if video is None:
                raise ValueError("give either `video` (frames) or `source` (a prepare_source result)")
            source = self.prepare_source(video, prompt, negative_prompt, height, width, num_frames, guidance_scale, fps)
        inputs = self.batched_inputs(inputs or {}, source)
        negative = source.negative_prompt_embeds if guidance_scale > 1.0 else None
        if guidance_scale > 1.0 and negative is None:
            raise ValueError("the source was prepared without CFG (guidance_scale <= 1); prepare it again")
        target = self.denoise(source.latents, source.prompt_embeds, inputs, negative, num_inference_steps,
                              guidance_scale, generator, latents, guidance_interval=guidance_interval)
        if output_type == "latent":
            frames = target
        else:
            frames = self.decode(target)
            frames = frames if output_type == "pt" else frames.permute(0, 2, 3, 1).numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return Track2ViewPipelineOutput(frames=frames, fps=source.fps)

    def batched_inputs(self, inputs: dict, source: SourceCache) -> dict:
        """One video's conditioning inputs at the latent stride with a batch axis of 1 (tracks at the video's frame
        rate are subsampled); the model's conditioning checks the rest."""
        out = dict(inputs)
        num_frames, num_latent = source.num_frames, source.latents.shape[2]
        tracks = out.get("tracks")
        if tracks is not None:
            if tracks.num_frames == num_frames and not tracks.batched:
                tracks = tracks.at_latent_stride(self.vae_scale_factor_temporal)
            elif tracks.num_frames != num_latent:
                raise ValueError(f"tracks have {tracks.num_frames} frames; expected {num_frames} (video frames) or "
                                 f"{num_latent} (latent frames)")
            out["tracks"] = tracks.validate()
        return with_batch_axis(out)


def with_batch_axis(inputs: dict) -> dict:
    """One video's conditioning inputs with a leading batch axis of 1 where they lack one (tracks [2, F, N] ->
    [1, 2, F, N], cameras [F, 12] -> [1, F, 12])."""
    out = dict(inputs)
    if out.get("tracks") is not None and not out["tracks"].batched:
        out["tracks"] = PairedTracks.stack([out["tracks"]])
    if out.get("cameras") is not None:
        cameras = torch.as_tensor(out["cameras"], dtype=torch.float32)
        out["cameras"] = cameras[None] if cameras.dim() == 2 else cameras
    return out
