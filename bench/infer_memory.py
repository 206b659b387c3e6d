"""Peak GPU memory of one re-render with infer.py's memory options: default, --vae-tiling, --offload model, both.

Wan2.1-T2V-1.3B shapes without weights: the Track2View transformer (random init, LoRA r=64 merged as infer.py
does, the track conditioner on 1152 tracks), the real AutoencoderKLWan (its default config is Wan-2.1's VAE;
random init, float32 as the pipeline loads it) and a text encoder of UMT5-XXL's shape (bfloat16, zero weights:
only their size matters), at 480x832x81. Each variant runs in a process of its own (clean allocator, no hooks
left over) and goes through what `Rerenderer` runs: `apply_speed_options` on the pipeline, `prepare_source` (VAE
encode + prompts), `free_text_encoder` when nothing is offloaded, the denoising loop (`--steps`, default 2: the
memory of a step does not depend on how many follow) and the VAE decode. It reports
torch.cuda.max_memory_allocated and max_memory_reserved over the whole re-render and per phase, and the
seconds per phase (offload's transfer cost). One JSON line per variant.

    python bench/infer_memory.py                            # H200: default, vae_tiling, offload_model, both
    python bench/infer_memory.py --variants offload_sequential,vae_tiling+offload_sequential --steps 1
    python bench/infer_memory.py --tiny --device cpu        # smoke test (offload variants are skipped on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from track2view.testing.tiny import WAN_1_3B  # noqa: E402

UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                dense_act_fn="gelu_new", is_gated_act=True, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0)  # google/umt5-xxl, Wan-2.1's text encoder
VARIANTS = "default,vae_tiling,offload_model,vae_tiling+offload_model"


def parse_variant(variant: str) -> tuple[bool, str]:
    """'vae_tiling+offload_model' -> (vae tiling, offload mode)."""
    tiling, offload = False, "none"
    for part in variant.split("+"):
        if part == "vae_tiling":
            tiling = True
        elif part in ("offload_model", "offload_sequential"):
            offload = part.removeprefix("offload_")
        elif part != "default":
            raise ValueError(f"unknown variant part {part!r} in {variant!r}; parts: default, vae_tiling, "
                             f"offload_model, offload_sequential (joined by +)")
    return tiling, offload


def build_pipeline(args, device):
    """Track2ViewPipeline of the benchmark's components, weights in CPU memory (the variant places them)."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from track2view.inference.pipeline import Track2ViewPipeline, default_scheduler
    from track2view.model.transformer import Track2ViewTransformer
    from track2view.testing import tiny

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device is much faster than on the CPU
        if args.tiny:
            transformer = Track2ViewTransformer.from_config(tiny.TINY_TRANSFORMER, conditioning_config={
                "width": 32, "num_heads": 2, "num_layers": 2}, lora={"rank": 4, "alpha": 4.0})
            vae, text_encoder = tiny.tiny_vae(), tiny.tiny_text_encoder()
        else:
            transformer = Track2ViewTransformer.from_config(WAN_1_3B, torch_dtype=dtype, lora={"rank": 64, "alpha": 64.0})
            vae = AutoencoderKLWan()
            with torch.device("meta"):
                text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).to(dtype)
            text_encoder = text_encoder.to_empty(device="cpu")
            for p in text_encoder.parameters():
                p.data.zero_()
    transformer.transformer.fuse_lora()  # infer.py's default with a checkpoint
    pipe = Track2ViewPipeline(tokenizer=tiny.tiny_tokenizer(), text_encoder=text_encoder.eval(), vae=vae.eval(),
                              transformer=transformer.eval(), scheduler=default_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


class Phases:
    """Peak memory (allocated, reserved) and seconds of each named phase, from a reset at its start."""

    def __init__(self, device):
        self.device, self.rows = device, {}

    def run(self, name, fn, *args, **kwargs):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            resident = torch.cuda.memory_allocated(self.device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize(self.device)
        row = {"s": round(time.perf_counter() - t0, 2)}
        if cuda:
            row.update(resident_GiB=gib(resident), peak_allocated_GiB=gib(torch.cuda.max_memory_allocated(self.device)),
                       peak_reserved_GiB=gib(torch.cuda.max_memory_reserved(self.device)))
        self.rows[name] = row
        return out


def gib(n: int) -> float:
    return round(n / 2**30, 2)


def run_variant(variant: str, args, device) -> dict:
    from track2view.inference.rerender import free_text_encoder
    from track2view.inference.speed import SpeedOptions, apply_speed_options
    from track2view.tracks import PairedTracks

    tiling, offload = parse_variant(variant)
    if offload != "none" and device.type != "cuda":
        return {"variant": variant, "skipped": f"--offload {offload} needs a CUDA device"}
    pipe = build_pipeline(args, device)
    if offload == "none":
        pipe.to(device)
    apply_speed_options(pipe, str(device), SpeedOptions(vae_tiling=tiling, offload=offload))
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (args.frames, args.height, args.width, 3), generator=g, dtype=torch.uint8).numpy()
    tracks = PairedTracks.from_projections(torch.rand(2, args.frames, args.tracks, 2, generator=g),
                                           1 + 4 * torch.rand(2, args.frames, args.tracks, generator=g))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    phases = Phases(device)
    with torch.no_grad():
        source = phases.run("encode", pipe.prepare_source, video, "a street at dusk", "", args.height, args.width,
                            args.frames, 5.0, 16.0)
        if offload == "none":
            free_text_encoder(pipe)
        latents = phases.run("denoise", pipe, source=source, inputs={"tracks": tracks}, num_inference_steps=args.steps,
                             generator=torch.Generator().manual_seed(0), output_type="latent").frames
        frames = phases.run("decode", pipe.decode, latents)
    assert frames.shape == (args.frames, 3, args.height, args.width), frames.shape
    row = {"variant": variant, "vae_tiling": tiling, "offload": offload, "denoise_steps": args.steps}
    if device.type == "cuda":
        row.update({k: max(p[k] for p in phases.rows.values()) for k in ("peak_allocated_GiB", "peak_reserved_GiB")})
    return {**row, "phases": phases.rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny model and shapes (CPU smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--tracks", type=int, default=1152)
    p.add_argument("--steps", type=int, default=2, help="denoising steps (memory does not grow with them)")
    p.add_argument("--variants", default=VARIANTS, help=f"comma list of default, vae_tiling, offload_model, "
                   f"offload_sequential and their + combinations (default {VARIANTS})")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one variant, in this process
    args = p.parse_args(argv)
    if args.tiny:
        args.height, args.width, args.frames, args.tracks = 32, 48, 9, 64
    device = torch.device(args.device)
    if args.only:
        print(json.dumps(run_variant(args.only, args, device)), flush=True)
        return
    common = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  shape=[args.frames, args.height, args.width], tracks=args.tracks, torch=torch.__version__)
    print(json.dumps({"event": "config", **common}), flush=True)
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        parse_variant(variant)
        rest = [a for a in (argv if argv is not None else sys.argv[1:])]
        r = subprocess.run([sys.executable, __file__, *rest, "--only", variant], capture_output=True, text=True)
        lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
        last_error = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        print(lines[-1] if r.returncode == 0 and lines else json.dumps({"variant": variant, "error": last_error}),
              flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
