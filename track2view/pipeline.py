"""Track2ViewPipeline: re-render a video along a new camera trajectory (diffusers-style inference).

    source frames [T, H0, W0, 3] --resize_and_crop + VAE--> source latents [1, 16, F, h, w] (clean, encoded once)
    prompt --UMT5--> prompt embeds [1, 512, D] (and the negative prompt's, for classifier-free guidance)
    target latents ~ N(0, I) [1, 16, F, h, w]
    every step: [source | target] along frames -> Track2ViewTransformer(tracks) -> keep the target half's
                prediction -> CFG -> scheduler step on the target latents only (the source stays clean)
    target latents --VAE--> target frames [T, H, W, 3]

As in training (paper Sec. 3.4), the source half is never noised. Timesteps follow the export's training
`timestep_mode` (track2view.json, training -> flow_matching): one per sample (the default, also for exports
that do not record it) or per token with t = 0 on the source half, built by flow_matching's own function.
The two CFG branches (negative, positive prompt) run as one batch of 2. The scheduler is the model
directory's (Wan-2.1: UniPC with flow sigmas, shift 3.0 at 480p); `flow_shift` overrides the shift.

Several trajectories of one source video share its encoding: `prepare_source(...)` returns a `SourceCache`
that `__call__(source=cache, tracks=...)` reuses, so only the denoising and decoding run per trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from track2view.data.latents import encode_prompt, encode_video, latent_stats, resize_and_crop
from track2view.flow_matching import TIMESTEP_MODES, token_timesteps
from track2view.tracks import PairedTracks
from track2view.video_size import video_size_problem

DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_NUM_FRAMES = 480, 832, 81  # Wan-2.1 480p, the training resolution
MAX_SEQUENCE_LENGTH = 512  # UMT5 tokens, zero-padded as WanPipeline does


def check_checkpoint_matches(model_dir, checkpoint_dir) -> None:
    """Raise ValueError naming the differing settings when a Track2View export was trained for another base
    model than the one in `model_dir` (checked on the configs, before any weight is loaded)."""
    from diffusers import WanTransformer3DModel

    from track2view.transformer import Track2ViewTransformer, base_fingerprint, fingerprint_differences

    trained = Track2ViewTransformer.read_trained_config(checkpoint_dir).get("base_model", {})
    base = base_fingerprint(WanTransformer3DModel.load_config(model_dir, subfolder="transformer"))
    diff = [f"{k} {a} vs {b}" for k, (a, b) in fingerprint_differences(trained, base).items()]
    if diff:
        raise ValueError(f"checkpoint {checkpoint_dir} was trained for another base model than {model_dir} "
                         f"(checkpoint vs model: {'; '.join(diff)}); pass the base model it was trained on")


def trained_timestep_mode(checkpoint_dir) -> str:
    """The `timestep_mode` a Track2View export was trained with ("per_sample" when it does not record one)."""
    from track2view.transformer import Track2ViewTransformer

    training = Track2ViewTransformer.read_trained_config(checkpoint_dir).get("training") or {}
    return (training.get("flow_matching") or {}).get("timestep_mode") or "per_sample"


class ConstantTrackTokens(torch.nn.Module):
    """Stands in for the conditioner during one denoising run and computes its track tokens once.

    The conditioner reads only the source half of the tokens (clean at every step, the same in both CFG
    branches) and the tracks, so its output is the same for all steps and branches: computing it for one
    sample at the first step and reusing it removes 2 x steps - 1 of its 2 x steps calls, exactly.
    """

    def __init__(self, conditioner: torch.nn.Module):
        super().__init__()
        self.conditioner = conditioner
        self.tokens: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor, tracks: PairedTracks, source_frame_mask=None, patch_bias=None):
        if self.tokens is None:
            first = PairedTracks(tracks.uv[:1], tracks.depth[:1], tracks.valid[:1])
            mask = None if source_frame_mask is None else source_frame_mask[:1]
            self.tokens = self.conditioner(tokens[:1], first, mask, patch_bias=patch_bias)
        return self.tokens.expand(tokens.shape[0], *self.tokens.shape[1:])


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

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler, timestep_mode: str = "per_sample"):
        super().__init__()
        if timestep_mode not in TIMESTEP_MODES:
            raise ValueError(f"timestep_mode must be one of {TIMESTEP_MODES} (as the model was trained), "
                             f"got {timestep_mode!r}")
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        self.register_to_config(timestep_mode=timestep_mode)
        vae_config = getattr(vae, "config", None)
        self.vae_scale_factor_temporal = getattr(vae_config, "scale_factor_temporal", 4)
        self.vae_scale_factor_spatial = getattr(vae_config, "scale_factor_spatial", 8)

    # ---- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, model_dir, checkpoint_dir=None, torch_dtype: torch.dtype = torch.bfloat16,
                        vae_dtype: torch.dtype = torch.float32, flow_shift: float | None = None
                        ) -> "Track2ViewPipeline":
        """Load Wan-2.1 (diffusers directory: transformer, vae, text_encoder, tokenizer, scheduler) and apply a
        trained Track2View export (LoRA + conditioner, docs/architecture.md "Trained checkpoint").

        Without `checkpoint_dir` the conditioner is freshly initialised (zero output: the base model).
        The timestep mode (per sample or per token) is the one the export was trained with.
        The VAE runs in `vae_dtype` (float32, as Wan recommends), the rest in `torch_dtype`.
        """
        import diffusers
        from diffusers import AutoencoderKLWan
        from transformers import AutoTokenizer, UMT5EncoderModel

        from track2view.transformer import Track2ViewTransformer

        if checkpoint_dir is not None:
            check_checkpoint_matches(model_dir, checkpoint_dir)
        if checkpoint_dir is None:
            transformer = Track2ViewTransformer.from_pretrained(model_dir, subfolder="transformer",
                                                                torch_dtype=torch_dtype)
        else:  # conditioner and LoRA settings come from the export's track2view.json
            transformer = Track2ViewTransformer.from_trained(model_dir, checkpoint_dir, torch_dtype=torch_dtype)
        transformer.eval()
        # Each component is loaded by its own class: model_index.json names WanPipeline, not this pipeline.
        scheduler_config = diffusers.UniPCMultistepScheduler.load_config(model_dir, subfolder="scheduler")
        scheduler_cls = getattr(diffusers, scheduler_config.get("_class_name", ""), diffusers.UniPCMultistepScheduler)
        pipe = cls(tokenizer=AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer"),
                   text_encoder=UMT5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder",
                                                                 torch_dtype=torch_dtype).eval(),
                   vae=AutoencoderKLWan.from_pretrained(model_dir, subfolder="vae", torch_dtype=vae_dtype).eval(),
                   transformer=transformer, scheduler=scheduler_cls.from_config(scheduler_config),
                   timestep_mode="per_sample" if checkpoint_dir is None else trained_timestep_mode(checkpoint_dir))
        if flow_shift is not None:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=flow_shift)
        return pipe

    def fuse_lora(self) -> "Track2ViewPipeline":
        """Merge the LoRA into the base weights (diffusers' `fuse_lora`): inference then costs what the base
        model costs, at bf16 rounding of the merged weights. Not reversible once the pipeline is saved."""
        self.transformer.transformer.fuse_lora()
        return self

    # ---- encoding --------------------------------------------------------------------------------------------
    def encode_prompts(self, prompt: str, negative_prompt: str | None, do_cfg: bool):
        """(prompt_embeds [1, 512, D], negative [1, 512, D] or None), zero-padded as WanPipeline does."""
        prompts = [prompt or ""] + ([negative_prompt or ""] if do_cfg else [])
        embeds = encode_prompt(self.tokenizer, self.text_encoder, prompts, max_length=MAX_SEQUENCE_LENGTH)
        padded = [torch.cat([e, e.new_zeros(MAX_SEQUENCE_LENGTH - len(e), e.shape[-1])])[None] for e in embeds]
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
        latents = encode_video(self.vae, pixels[None], self.vae_scale_factor_temporal)
        prompt_embeds, negative = self.encode_prompts(prompt, negative_prompt, guidance_scale > 1.0)
        frames = ((pixels.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        return SourceCache(latents, prompt_embeds, negative, frames, fps)

    # ---- denoising ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, source_latents: torch.Tensor, prompt_embeds: torch.Tensor, tracks: PairedTracks,
                negative_prompt_embeds: torch.Tensor | None = None, num_inference_steps: int = 50,
                guidance_scale: float = 5.0, generator: torch.Generator | None = None,
                latents: torch.Tensor | None = None, cache_track_tokens: bool = True) -> torch.Tensor:
        """Target latents [1, 16, F, h, w] from clean source latents [1, 16, F, h, w] and tracks [2, F, N] or
        [1, 2, F, N] at the latent stride. With CFG (negative embeds given, guidance > 1) the negative and the
        positive branch run as one batch of 2; both see the same tracks and source. `cache_track_tokens`:
        run the conditioner once per video instead of once per step (`ConstantTrackTokens`; same result)."""
        device, dtype = next(self.transformer.parameters()).device, self.transformer.dtype
        do_cfg = negative_prompt_embeds is not None and guidance_scale > 1.0
        source = source_latents.to(device, dtype)
        if latents is None:
            latents = randn_tensor(tuple(source.shape), generator=generator, device=device, dtype=torch.float32)
        latents = latents.to(device, torch.float32)
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds
        embeds = embeds.to(device, dtype)
        batch = len(embeds)
        tracks = (tracks if tracks.batched else PairedTracks.stack([tracks])).to(device)
        if len(tracks.depth) != batch:  # one sample's tracks, shared by the CFG branches
            tracks = PairedTracks(*(x.expand(batch, *x.shape[1:]) for x in (tracks.uv, tracks.depth, tracks.valid)))
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self.scheduler.set_begin_index(0)
        timesteps = self.scheduler.timesteps
        conditioner = self.transformer.conditioner
        if cache_track_tokens:
            self.transformer.conditioner = ConstantTrackTokens(conditioner)
        try:
            latents = self._denoise_loop(source, latents, embeds, tracks, timesteps, guidance_scale if do_cfg else None)
        finally:
            self.transformer.conditioner = conditioner
        return latents

    def _denoise_loop(self, source, latents, embeds, tracks, timesteps, guidance_scale):
        """source [1, 16, F, h, w] (transformer dtype), latents [1, 16, F, h, w] float32, embeds [B, L, D] with
        B = 2 (negative, positive) when guidance_scale is not None, else 1; tracks [B, 2, F, N]."""
        dtype, batch, num_target = self.transformer.dtype, len(embeds), latents.shape[2]
        with self.progress_bar(total=len(timesteps)) as bar:  # silence: set_progress_bar_config(disable=True)
            for t in timesteps:
                hidden = torch.cat([source, latents.to(dtype)], dim=2)  # [1, 16, 2F, h, w]: source | target
                hidden = hidden.expand(batch, *hidden.shape[1:])
                timestep = token_timesteps(t.expand(batch), self.config.timestep_mode, hidden.shape, self.patch_size)
                out = self.transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=embeds,
                                       tracks=tracks)
                out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
                pred = out[:, :, -num_target:].float()  # the target half's velocity
                if guidance_scale is not None:
                    uncond, cond = pred.chunk(2)
                    pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
                bar.update()
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [1, 16, F, h, w] -> frames [T, 3, H, W] float32 in [0, 1]."""
        param = next(self.vae.parameters())
        mean, std = latent_stats(self.vae)
        z = latents.to(param.device, torch.float32) * std.to(param.device) + mean.to(param.device)
        video = self.vae.decode(z.to(param.dtype), return_dict=False)[0]  # [1, 3, T, H, W] in [-1, 1]
        return ((video[0].float().permute(1, 0, 2, 3) + 1) / 2).clamp(0, 1).cpu()

    # ---- the call -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, video: np.ndarray | None = None, tracks: PairedTracks | None = None, prompt: str = "",
                 negative_prompt: str | None = None, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 generator: torch.Generator | None = None, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH,
                 num_frames: int | None = None, fps: float | None = None, source: SourceCache | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np", return_dict: bool = True):
        """Re-render `video` (frames [T, H0, W0, 3] uint8) along the camera of `tracks`.

        tracks: PairedTracks [2, T, N] at the video's frame rate (subsampled here to the latent stride) or
        already at the latent stride [2, F, N]. `source`: a `prepare_source` result to reuse (then `video`,
        `prompt`, `negative_prompt`, `height`, `width`, `num_frames` are taken from it). output_type: "np",
        "pt" or "latent" (see Track2ViewPipelineOutput).
        """
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        if tracks is None:
            raise ValueError("tracks are required: PairedTracks [2, T, N] (see track2view.reprojection)")
        if source is None:
            if video is None:
                raise ValueError("give either `video` (frames) or `source` (a prepare_source result)")
            source = self.prepare_source(video, prompt, negative_prompt, height, width, num_frames, guidance_scale, fps)
        num_frames, num_latent = source.num_frames, source.latents.shape[2]
        if tracks.num_frames == num_frames:
            tracks = tracks.at_latent_stride(self.vae_scale_factor_temporal)
        elif tracks.num_frames != num_latent:
            raise ValueError(f"tracks have {tracks.num_frames} frames; expected {num_frames} (video frames) or "
                             f"{num_latent} (latent frames)")
        tracks.validate()
        negative = source.negative_prompt_embeds if guidance_scale > 1.0 else None
        if guidance_scale > 1.0 and negative is None:
            raise ValueError("the source was prepared without CFG (guidance_scale <= 1); prepare it again")
        target = self.denoise(source.latents, source.prompt_embeds, tracks, negative, num_inference_steps,
                              guidance_scale, generator, latents)
        if output_type == "latent":
            frames = target
        else:
            frames = self.decode(target)
            frames = frames if output_type == "pt" else frames.permute(0, 2, 3, 1).numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return Track2ViewPipelineOutput(frames=frames, fps=source.fps)
