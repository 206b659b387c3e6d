"""Seconds per re-rendered video: Track2View's denoising loop vs the plain diffusers Wan loop, side by side.

Wan2.1-1.3B shape, random init (no weights needed), 480x832x81 by default: source + target latents
[1, 16, 2x21, 60, 104] = 65,520 tokens, 50 UniPC steps with CFG (batch 2), 1152 random tracks.

* ours: `Track2ViewPipeline.denoise` (the loop the pipeline runs: clean source | noisy target, conditioner
  hook, LoRA r=64 on attention + FFN, CFG batch 2, scheduler step on the target only). Variants: track tokens
  computed once per video (default) or at every step (_nocache), the LoRA fused into the base weights
  (_fused), compiled blocks (_compiled); --attention-backend for all. ours_oneway_cached[_fused][_compiled]: one-way
  attention (per-token timesteps), the source's keys/values computed once per CFG branch (the source KV cache,
  track2view/model/source_kv.py) and every step run on the target tokens only; its priming call is timed apart
  (`source_prime_s`, once per video). ours_pertoken[...]: full attention with per-token timesteps, its reference.
* plain: the plain diffusers denoising loop (bare WanTransformer3DModel, same tokens, batch 2) plus
  the same CFG combine + scheduler step, i.e. what re-rendering costs without tracks or LoRA.
* speed options on an ours variant, as infer.py applies them (docs/inference.md): `+first_block`, `+taylorseer`,
  `+mag` (a diffusers step cache with its infer.py defaults), `+cfg:START:END` (CFG on that fraction of the steps),
  and on any variant `@BACKEND` (an attention backend for that variant alone, e.g. ours_fused@_native_cudnn next
  to ours_fused). A step cache decides per step whether to skip, and an unguided step costs half a guided one,
  so these variants time the whole 50-step loop (never extrapolated) and count `full_block_passes`, the
  transformer calls that ran the whole block stack. Which steps a cache skips depends on the weights: with
  random weights the skip pattern (and so the time) of first_block and mag is not the trained model's; the
  time per full pass and the pass count are what carries over. mag calibrates its ratios on this model first
  (an untimed run of --calibration-steps steps) unless --mag-ratios FILE (infer.py --cache-calibrate) is given.

To fit a 10-minute budget each variant runs `--warmup` denoising steps and then times `--steps` steps
(a UniPC run of that many steps: per-step cost does not depend on the step count); seconds per video are
extrapolated to 50 steps and flagged "extrapolated". Conditioner time is measured with CUDA events around
the conditioner call inside the same steps. One JSON line per variant.

    python bench/infer_video.py                      # H200: all variants
    python bench/infer_video.py --variants ours_fused,ours_fused+first_block,ours_fused+taylorseer,ours_fused+mag
    python bench/infer_video.py --variants plain,ours_fused,plain@_native_cudnn,ours_fused@_native_cudnn
    python bench/infer_video.py --tiny --device cpu  # smoke test on CPU (tiny shapes)
    python bench/infer_video.py --variants ours_fused,ours_pertoken_fused,ours_oneway_cached_fused  # one-way + KV cache

Under torchrun (WORLD_SIZE > 1) every variant's tokens are split over the processes by diffusers' context
parallelism as infer.py splits them (track2view/inference/parallel.py; --ulysses-degree / --ring-degree, ring
attention on _native_cudnn unless --attention-backend says otherwise) and rank 0 prints the rows; +first_block is
refused there and +mag needs --mag-ratios (both would decide per process):

    torchrun --nproc-per-node 8 bench/infer_video.py --variants plain,ours_fused,ours_oneway_cached_fused
    torchrun --nproc-per-node 2 bench/infer_video.py --tiny --device cpu   # smoke test (gloo)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from track2view.inference.guidance import FULL_INTERVAL  # noqa: E402
from track2view.testing.tiny import TINY_TRANSFORMER, WAN_1_3B  # noqa: E402
from track2view.tracks import PairedTracks  # noqa: E402
from track2view.video_size import latent_frames  # noqa: E402

VIDEO_STEPS = 50


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ConditionerTimer:
    """Accumulates the time spent in a module's forward (CUDA events on GPU, wall clock on CPU)."""

    def __init__(self, module, device):
        self.device, self.spans, self.seconds = device, [], 0.0
        self.handles = [module.register_forward_pre_hook(self._start), module.register_forward_hook(self._stop)]

    def _start(self, *_):
        if self.device.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.spans.append([e, None])
        else:
            self.spans.append([time.perf_counter(), None])

    def _stop(self, *_):
        if self.device.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.spans[-1][1] = e
        else:
            self.spans[-1][1] = time.perf_counter()

    def reset(self):
        self.spans = []

    def total(self) -> float:
        return sum(self.durations())

    def durations(self) -> list[float]:
        """Seconds of each call."""
        sync(self.device)
        if self.device.type == "cuda":
            return [a.elapsed_time(b) / 1000.0 for a, b in self.spans]
        return [b - a for a, b in self.spans]

    def remove(self):
        for h in self.handles:
            h.remove()


def make_inputs(args, device, dtype, text_dim):
    lf, lh, lw = latent_frames(args.frames), args.height // 8, args.width // 8
    g = torch.Generator().manual_seed(0)
    source = torch.randn(1, 16, lf, lh, lw, generator=g).to(device)
    embeds = torch.randn(1, args.text_len, text_dim, generator=g).to(device, dtype)
    negative = torch.randn(1, args.text_len, text_dim, generator=g).to(device, dtype)
    tracks = PairedTracks.from_projections(torch.rand(2, lf, args.tracks, 2, generator=g),
                                           1 + 4 * torch.rand(2, lf, args.tracks, generator=g))
    return source, embeds, negative, tracks


def scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=3.0)


def plain_loop(model, source, embeds, negative, steps, guidance=5.0):
    """The plain diffusers loop: bare Wan forward on [source | target], CFG batch 2, scheduler step."""
    sched = scheduler()
    sched.set_timesteps(steps, device=source.device)
    latents = torch.randn_like(source)
    emb = torch.cat([negative, embeds])
    f = source.shape[2]
    for t in sched.timesteps:
        x = torch.cat([source, latents], 2).to(emb.dtype).expand(2, -1, -1, -1, -1)
        out = model(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=emb, return_dict=False)[0]
        uncond, cond = out[:, :, f:].float().chunk(2)
        latents = sched.step(uncond + guidance * (cond - uncond), t, latents, return_dict=False)[0]
    return latents


def timed(fn, device, warmup_steps, steps, timer=None, calls=None):
    fn(warmup_steps)
    sync(device)
    for t in (timer, calls):
        if t is not None:
            t.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    fn(steps)
    sync(device)
    seconds = time.perf_counter() - t0
    cond = timer.total() if timer is not None else 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, cond, peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny model and shapes (CPU smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--tracks", type=int, default=1152)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (extrapolated to 50)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, cudnn autotune)")
    p.add_argument("--variants", default="plain,ours_nocache,ours,ours_fused,plain_compiled,ours_fused_compiled",
                   help="comma list of plain[_compiled] and ours[_oneway_cached|_pertoken][_nocache][_fused]"
                        "[_compiled]: _nocache runs the conditioner at every step, _fused merges the LoRA, _compiled uses "
                        "compile_repeated_blocks, _oneway_cached one-way attention with the source KV cache, "
                        "_pertoken per-token timesteps with full attention")
    p.add_argument("--attention-backend", default=None, help="diffusers attention backend for every variant, "
                   "e.g. _native_cudnn, flash (default: PyTorch SDPA); VARIANT@BACKEND sets one variant's")
    p.add_argument("--mag-ratios", default=None, help="+mag: a ratios file of infer.py --cache-calibrate "
                   "(default: calibrate on this model first)")
    p.add_argument("--calibration-steps", type=int, default=10, help="+mag: steps of the calibration run")
    p.add_argument("--ulysses-degree", type=int, default=None, help="under torchrun: as infer.py's")
    p.add_argument("--ring-degree", type=int, default=None, help="under torchrun: as infer.py's")
    args = p.parse_args(argv)
    if args.tiny:
        args.height, args.width, args.frames, args.tracks, args.text_len = 32, 48, 9, 64, 16
        args.steps, args.warmup = min(args.steps, 2), 1
    wan_config = {**(TINY_TRANSFORMER if args.tiny else WAN_1_3B)}
    split = context_split(args, wan_config) if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    conditioner = {"width": 32, "num_heads": 2, "num_layers": 2} if args.tiny else {}
    lora = {"rank": 4, "alpha": 4.0} if args.tiny else {"rank": 64, "alpha": 64.0}

    source, embeds, negative, tracks = make_inputs(args, device, dtype, wan_config["text_dim"])
    lf, lh, lw = source.shape[2:]
    patch = wan_config["patch_size"]
    tokens = 2 * lf * (lh // patch[1]) * (lw // patch[2])
    common = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", dtype=str(dtype),
                  shape=[args.frames, args.height, args.width], tokens=tokens, cfg_batch=2, tracks=args.tracks,
                  attention_backend=args.attention_backend or "default", timed_steps=args.steps,
                  extrapolated_to=VIDEO_STEPS, torch=torch.__version__,
                  context_parallel={"ulysses": split.ulysses, "ring": split.ring} if split else None)
    report({"event": "config", **common})

    from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend

    default_backend = _AttentionBackendRegistry.get_active_backend()[0]
    rows = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        try:  # set_attention_backend also sets diffusers' process-wide default: an @BACKEND variant's backend must
            with attention_backend(default_backend):  # not carry over into the variants after it
                row = run_variant(variant, args, device, dtype, wan_config, conditioner, lora, source, embeds,
                                  negative, tracks, split)
                row["attention_backend"] = _AttentionBackendRegistry.get_active_backend()[0].value  # it ran with
        except Exception as e:  # one failing variant (e.g. a compile error) must not hide the others
            row = {"variant": variant, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        report(row)
        rows[variant] = row
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # seconds per video of each of our variants relative to the plain loop (compiled vs compiled)
    ratios = {}
    for name, row in rows.items():
        plain = rows.get(plain_counterpart(name), {})
        if name.startswith("ours") and "video_50steps_cfg_s" in row and plain.get("video_50steps_cfg_s"):
            ratios[name] = round(row["video_50steps_cfg_s"] / plain["video_50steps_cfg_s"], 3)
    report({"event": "summary", "video_s_relative_to_plain": ratios, "extrapolated": True})
    if split:
        from track2view.inference.parallel import finish

        finish()


def context_split(args, wan_config):
    """Under torchrun: join the process group (args.device becomes this rank's) and choose the split as infer.py
    does (args.attention_backend becomes the one it runs with)."""
    from track2view.inference.parallel import ContextDegrees, attention_backend_for, choose_split, init_process_group

    args.device = init_process_group("cpu" if args.device == "cpu" else None)
    split = choose_split(int(os.environ["WORLD_SIZE"]), wan_config["num_attention_heads"],
                         ContextDegrees(args.ulysses_degree, args.ring_degree))
    args.attention_backend = attention_backend_for(split, args.attention_backend, args.device.startswith("cuda"))
    return split


def report(row: dict) -> None:
    """One JSON line, printed by rank 0 (or the only process)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(row), flush=True)


def source_prime_seconds(calls: ConditionerTimer, conditioner: ConditionerTimer) -> float:
    """The source KV cache's priming (once per video, CFG batch 2): how much longer the first Wan call of the timed
    run took than the median step, less the conditioner's first call (made inside it)."""
    durations = calls.durations()
    if len(durations) < 2:
        raise ValueError("the one-way variants time their priming call apart: give --steps >= 2")
    return max(0.0, durations[0] - statistics.median(durations[1:]) - conditioner.durations()[0])


def run_variant(variant, args, device, dtype, wan_config, conditioner, lora, source, embeds, negative, tracks,
                split=None):
    from diffusers import WanTransformer3DModel

    from track2view.inference.pipeline import Track2ViewPipeline
    from track2view.inference.speed import compile_blocks
    from track2view.model.flash_attn_4 import set_attention_backend
    from track2view.model.transformer import Track2ViewTransformer

    kind, step_cache, interval, backend = parse_variant(variant)  # e.g. ours_fused+first_block@_native_cudnn
    compiled, fused, cache = kind.endswith("_compiled"), "_fused" in kind, "_nocache" not in kind
    one_way = "_oneway" in kind
    per_token = one_way or "_pertoken" in kind
    torch.manual_seed(0)
    timer = None
    with torch.device(device):  # initialise the random weights on the device directly
        if variant.startswith("plain"):
            model = WanTransformer3DModel.from_config(wan_config).to(device, dtype).eval()
            base = model
            fn = lambda n: plain_loop(model, source, embeds, negative, n)  # noqa: E731
        elif variant.startswith("ours"):
            model = Track2ViewTransformer.from_config(wan_config, torch_dtype=dtype, conditioning_config=conditioner,
                                                      lora=lora, attention="one_way" if one_way else "full"
                                                      ).to(device).eval()
            pipe = Track2ViewPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model,
                                      scheduler=scheduler(), timestep_mode="per_token" if per_token else "per_sample")
            pipe.set_progress_bar_config(disable=True)
            if fused:
                pipe.fuse_lora()
            base, timer = model.transformer, ConditionerTimer(model.conditioning, device)
            fn = lambda n: pipe.denoise(source, embeds, {"tracks": tracks}, negative, num_inference_steps=n,  # noqa: E731
                                        guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                                        reuse_conditioning=cache, guidance_interval=interval)
        else:
            raise ValueError(f"unknown variant {variant!r}")
    if backend or args.attention_backend:
        set_attention_backend(base, backend or args.attention_backend)
    if split:
        from track2view.inference.parallel import enable_context_parallel

        if step_cache == "first_block":
            raise ValueError("+first_block decides from each process's share of the tokens: drop it under torchrun")
        if step_cache == "mag" and not args.mag_ratios:
            raise ValueError("+mag would calibrate on each process's share of the tokens: give --mag-ratios FILE")
        enable_context_parallel(base, split)
    if compiled:  # step caches enabled later (time_whole_loop) wrap the compiled blocks
        compile_blocks(base)
    if step_cache != "none" or interval != FULL_INTERVAL:
        return time_whole_loop(variant, args, device, base, fn, timer, step_cache, interval)
    calls = ConditionerTimer(base, device) if one_way else None  # each Wan call; the first one also primes
    try:
        with torch.no_grad():
            t_start = time.perf_counter()
            seconds, cond_s, peak = timed(fn, device, args.warmup, args.steps, timer, calls)
            setup_s = time.perf_counter() - t_start - seconds
        prime_s = source_prime_seconds(calls, timer) if one_way else 0.0
    finally:
        for t in (timer, calls):
            if t is not None:
                t.remove()
    # the timed run is one denoise call: with cached track tokens it holds one conditioner call for the whole
    # video, without it one per step; with the source KV cache one priming call; the DiT part scales with the steps
    dit_per_step = (seconds - cond_s - prime_s) / args.steps
    cond_video = cond_s if (variant.startswith("ours") and cache) else cond_s / args.steps * VIDEO_STEPS
    video = dit_per_step * VIDEO_STEPS + cond_video + prime_s
    return {"variant": variant, "step_s": round(seconds / args.steps, 4), "video_50steps_cfg_s": round(video, 2),
            "extrapolated": True, "dit_s_per_step": round(dit_per_step, 4),
            "conditioner_s_per_video": round(cond_video, 3),
            "conditioner_share": round(cond_video / video, 4) if video else None, "source_prime_s": round(prime_s, 3),
            "warmup_s": round(setup_s, 1), "peak_GiB": round(peak, 2) if peak is not None else None}


def parse_variant(variant: str):
    """'ours_fused+first_block+cfg:0:0.5@_native_cudnn' -> ('ours_fused', 'first_block', (0, 0.5), '_native_cudnn')."""
    from track2view.inference.guidance import check_interval
    from track2view.inference.step_cache import PRESETS

    name, _, backend = variant.partition("@")
    kind, *extras = name.split("+")
    step_cache, interval = "none", FULL_INTERVAL
    for extra in extras:
        if extra in PRESETS:
            step_cache = extra
        elif extra.startswith("cfg:") and len(extra.split(":")) == 3:
            interval = tuple(float(x) for x in extra.split(":")[1:])
            check_interval(interval, variant)
        else:
            raise ValueError(f"unknown option +{extra} of variant {variant!r}; give +first_block, +taylorseer, +mag "
                             f"or +cfg:START:END")
    if extras and not kind.startswith("ours"):
        raise ValueError(f"{variant!r}: step caches and guidance intervals are options of the ours variants")
    return kind, step_cache, interval, backend or None


def plain_counterpart(variant: str) -> str:
    """The plain variant an ours variant is compared with: the same compilation and attention backend."""
    kind, _, _, backend = parse_variant(variant)
    return "plain" + ("_compiled" if kind.endswith("_compiled") else "") + (f"@{backend}" if backend else "")


def time_whole_loop(variant, args, device, base, fn, timer, step_cache, interval):
    """A 50-step video timed whole (its steps differ in cost), with the step cache as infer.py enables it, after
    --warmup untimed steps; full_block_passes counts the transformer calls that ran every block."""
    from track2view.inference.step_cache import FullPassCounter, StepCache, enable_step_cache

    passes = FullPassCounter(base)  # before the cache's hooks, which wrap it

    def counted(n):
        passes.reset()
        return fn(n)

    try:
        with torch.no_grad():
            enable_step_cache(base, bench_step_cache(step_cache, args, base, fn), VIDEO_STEPS)
            seconds, cond_s, peak = timed(counted, device, args.warmup, VIDEO_STEPS, timer)
    finally:
        timer.remove()
        enable_step_cache(base, StepCache(), VIDEO_STEPS)
    return {"variant": variant, "video_50steps_cfg_s": round(seconds, 2), "extrapolated": False,
            "timed_steps": VIDEO_STEPS, "step_cache": step_cache, "guidance_interval": list(interval),
            "transformer_calls": VIDEO_STEPS, "full_block_passes": passes.full,
            "s_per_full_pass": round((seconds - cond_s) / max(passes.full, 1), 4),
            "conditioner_s_per_video": round(cond_s, 3), "peak_GiB": round(peak, 2) if peak is not None else None}


def bench_step_cache(preset: str, args, base, fn):
    """The StepCache of `preset` with infer.py's defaults; mag's ratios from --mag-ratios, else calibrated on this
    model by an untimed run of --calibration-steps steps (diffusers maps them to 50 steps)."""
    from track2view.inference.guidance import BOTH_BRANCHES, POSITIVE_BRANCH
    from track2view.inference.step_cache import (PRESETS, StepCache, enable_step_cache, parse_step_cache,
                                                 recorded_mag_ratios)

    if preset != "mag" or args.mag_ratios:
        return parse_step_cache(preset, [f"mag_ratios_file={args.mag_ratios}"] if preset == "mag" else [])
    calibration = StepCache("mag", calibrate_to=Path("unused"))  # the ratios are read back, no file is written
    enable_step_cache(base, calibration, args.calibration_steps)
    fn(args.calibration_steps)
    ratios = recorded_mag_ratios(base, (BOTH_BRANCHES, POSITIVE_BRANCH))
    return StepCache("mag", dict(PRESETS["mag"].defaults), mag_ratios=tuple(ratios))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
