"""Training-step benchmark: the plain diffusers+peft baseline of shared/bench/wan_step.py against our full
Track2View step (conditioner with 1152 tracks + target-half flow-matching loss + AdamW) under named variants,
in one process, one after the other on the same GPU.

    python bench/train_step.py                                   # baseline + the default variants, 480x832x81
    python bench/train_step.py --variants ours-full ours-sel-compile "mine=ckpt:selective,sel:20,compile:1"
    H=384 W=672 F=81 python bench/train_step.py                  # another size
    python bench/train_step.py --device cpu --tiny               # smoke test (tiny Wan, 32x32x5)

Prints one JSON line per run {variant, s_per_step, tokens_per_s, peak_GiB, ratio_vs_baseline, ...} and a table.
Timing: torch.cuda.synchronize around each step, warm-up steps (compilation) excluded, median of --steps.
Peak memory: max_memory_allocated after the model and optimizer exist (as wan_step.py measures it).

Variant spec: a preset name (PRESETS) or "name=key:value,..." with keys
    ckpt: none|full|selective   k: checkpoint only the first k blocks   sel: selective for the first m of them
    compile: 0|1 (compiled blocks)   backend: diffusers attention backend   fused: 0|1 (fused AdamW)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from track2view.flow_matching import FlowMatchingConfig, flow_matching_loss, prepare_training_inputs  # noqa: E402
from track2view.tiny import TINY_TRANSFORMER, WAN_1_3B  # noqa: E402
from track2view.tracks import PairedTracks  # noqa: E402
from track2view.transformer import SpeedSettings, Track2ViewTransformer  # noqa: E402

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
PRESETS = {
    "ours-full": "ckpt:full,fused:1",  # same levers as the baseline: the conditioner's + loss's cost
    "ours-sel": "ckpt:selective,fused:1",
    "ours-sel-compile": "ckpt:selective,compile:1,fused:1",
    "ours-sel-compile-cudnn": "ckpt:selective,compile:1,fused:1,backend:_native_cudnn",
    "ours-sel20-compile": "ckpt:selective,sel:20,compile:1,fused:1",
    "ours-full-compile": "ckpt:full,compile:1,fused:1",
}
DEFAULT_VARIANTS = ["ours-full", "ours-sel", "ours-sel-compile", "ours-sel20-compile"]


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, body = spec.partition("=")
    body = body or PRESETS.get(name)
    if body is None:
        raise SystemExit(f"unknown variant {spec!r}: use a preset {sorted(PRESETS)} or name=key:value,...")
    opts = dict(ckpt="full", k=None, sel=None, compile=0, backend=None, fused=1)
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        if key not in opts:
            raise SystemExit(f"variant {spec!r}: unknown key {key!r}; keys: {sorted(opts)}")
        opts[key] = value
    return name, dict(speed=SpeedSettings(checkpointing=opts["ckpt"],
                                          checkpoint_blocks=None if opts["k"] is None else int(opts["k"]),
                                          selective_blocks=None if opts["sel"] is None else int(opts["sel"]),
                                          compile_blocks=bool(int(opts["compile"])),
                                          attention_backend=opts["backend"]),
                      fused=bool(int(opts["fused"])))


class Setup:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cfg = dict(TINY_TRANSFORMER if args.tiny else WAN_1_3B)
        default_size = (32, 32, 5) if args.tiny else (480, 832, 81)
        self.H, self.W, self.F = (int(os.environ.get(k, d)) for k, d in zip("HWF", default_size))
        self.B = int(os.environ.get("B", 1))
        self.lf, self.lh, self.lw = (self.F - 1) // 4 + 1, self.H // 8, self.W // 8
        self.tokens = 2 * self.lf * (self.lh // 2) * (self.lw // 2)
        self.text_len = 512
        self.num_tracks = 16 if args.tiny else args.tracks
        self.conditioner = dict(width=32, num_layers=2, num_heads=2) if args.tiny else {}
        self.rank = 4 if args.tiny else 64

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self):
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device.type == "cuda" else 0.0

    def base_model(self):
        from diffusers import WanTransformer3DModel

        torch.manual_seed(0)
        with torch.device(self.device):  # random init on the device: same weights' shapes, much faster than CPU
            model = WanTransformer3DModel(**self.cfg)
        return model.to(self.device, torch.bfloat16)

    def timed(self, step, label: str, extra: dict, compiled: bool = False) -> dict:
        warmup = self.args.warmup if self.args.warmup is not None else (2 if compiled else 1)
        times = []
        for i in range(warmup + self.args.steps):
            self.sync()
            t0 = time.perf_counter()
            step()
            self.sync()
            times.append(time.perf_counter() - t0)
            if i < warmup:
                print(f"  {label}: warm-up step {i} {times[-1]:.2f} s", file=sys.stderr, flush=True)
        s = statistics.median(times[warmup:])
        return dict(variant=label, s_per_step=round(s, 3), tokens_per_s=round(self.B * self.tokens / s),
                    peak_GiB=self.peak_gib(), HxWxF=f"{self.H}x{self.W}x{self.F}", B=self.B, tokens=self.tokens,
                    warmup_s=[round(t, 2) for t in times[:warmup]], **extra)


def run_baseline(st: Setup) -> dict:
    """shared/bench/wan_step.py's `run("default", ckpt=True)`: bf16 Wan, LoRA r=64 (fp32), SDPA, full ckpt, AdamW."""
    from peft import LoraConfig

    m = st.base_model()
    m.requires_grad_(False)
    m.add_adapter(LoraConfig(r=st.rank, lora_alpha=st.rank, target_modules=LORA_TARGETS))
    for n, p in m.named_parameters():
        if "lora" in n:
            p.data = p.data.float()
    m.enable_gradient_checkpointing()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(st.B, 16, 2 * st.lf, st.lh, st.lw, device=st.device, dtype=torch.bfloat16)
    txt = torch.randn(st.B, st.text_len, st.cfg["text_dim"], device=st.device, dtype=torch.bfloat16)
    t = torch.full((st.B,), 500.0, device=st.device)
    st.reset_peak()

    def step():
        with torch.autocast(st.device.type, dtype=torch.bfloat16):
            out = m(hidden_states=x, timestep=t, encoder_hidden_states=txt, return_dict=False)[0]
            loss = out[:, :, st.lf:].float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        return st.timed(step, "baseline", {})
    finally:
        del m, opt


def random_tracks(st: Setup, generator: torch.Generator) -> PairedTracks:
    shape = (st.B, 2, st.lf, st.num_tracks)
    return PairedTracks(uv=torch.rand(*shape, 2, generator=generator, device=st.device),
                        depth=0.5 + 5 * torch.rand(*shape, generator=generator, device=st.device),
                        valid=torch.rand(*shape, generator=generator, device=st.device) < 0.9)


def run_ours(st: Setup, name: str, variant: dict) -> dict:
    model = Track2ViewTransformer(st.base_model(), conditioner_config=st.conditioner,
                                  lora=dict(rank=st.rank, alpha=st.rank))
    model.configure_speed(variant["speed"])
    model.train()
    fused = variant["fused"] and st.device.type == "cuda"
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, fused=fused)
    gen = torch.Generator(device=st.device).manual_seed(0)
    latent = (st.B, 16, st.lf, st.lh, st.lw)
    source = torch.randn(latent, generator=gen, device=st.device, dtype=torch.bfloat16)
    target = torch.randn(latent, generator=gen, device=st.device, dtype=torch.bfloat16)
    text = torch.randn(st.B, st.text_len, st.cfg["text_dim"], generator=gen, device=st.device, dtype=torch.bfloat16)
    tracks = random_tracks(st, gen)
    fm = FlowMatchingConfig()
    st.reset_peak()

    def step():
        inputs = prepare_training_inputs(source, target, tracks, fm, generator=gen)
        with torch.autocast(st.device.type, dtype=torch.bfloat16):
            prediction = model(inputs.hidden_states, inputs.timestep, text, inputs.tracks, inputs.source_frame_mask)
            loss = flow_matching_loss(prediction, inputs.velocity)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    extra = dict(speed=vars(variant["speed"]), fused_adamw=fused, tracks=st.num_tracks,
                 trainable_M=round(sum(p.numel() for p in model.trainable_parameters()) / 1e6, 3))
    try:
        result = st.timed(step, name, extra, compiled=variant["speed"].compile_blocks)
        if st.args.sync_debug and st.device.type == "cuda":  # one more step that reports host syncs
            torch.cuda.set_sync_debug_mode("warn")
            step()
            torch.cuda.set_sync_debug_mode("default")
        return result
    finally:
        del model, opt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, help="presets or name=key:value,...")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed first steps (compilation, allocator); default 2 for compiled variants, else 1")
    ap.add_argument("--max-minutes", type=float, default=7.5,
                    help="skip a run when the time so far plus the longest run so far would exceed this")
    ap.add_argument("--tracks", type=int, default=1152)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny Wan at 32x32x5 (CPU smoke test)")
    ap.add_argument("--sync-debug", action="store_true", help="run one extra step with CUDA sync debug warnings")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    st = Setup(args)
    if st.device.type == "cuda":
        print(json.dumps(dict(torch=torch.__version__, gpu=torch.cuda.get_device_name())), flush=True)
    results, started, longest = [], time.perf_counter(), 0.0
    runs = ([("baseline", None)] if not args.no_baseline else []) + variants
    for name, variant in runs:
        run_start = time.perf_counter()
        if run_start - started + longest > 60 * args.max_minutes:
            res = dict(variant=name, error=f"skipped: would exceed --max-minutes {args.max_minutes}")
            results.append(res)
            print(json.dumps(res), flush=True)
            continue
        try:
            res = run_baseline(st) if variant is None else run_ours(st, name, variant)
        except Exception as e:  # report and go on with the other variants
            res = dict(variant=name, error=repr(e)[:400])
        base = results[0] if results and results[0]["variant"] == "baseline" and "error" not in results[0] else None
        if base and "tokens_per_s" in res:
            res["ratio_vs_baseline"] = round(res["tokens_per_s"] / base["tokens_per_s"], 3)
            res["peak_vs_baseline_GiB"] = round(res["peak_GiB"] - base["peak_GiB"], 2)
        res["run_s"] = round(time.perf_counter() - run_start, 1)
        longest = max(longest, res["run_s"])
        results.append(res)
        print(json.dumps(res), flush=True)
        gc.collect()
        torch._dynamo.reset()
        if st.device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{'variant':<26}{'s/step':>9}{'tokens/s':>11}{'peak GiB':>10}{'x base':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<26} error: {r['error'][:80]}")
        else:
            print(f"{r['variant']:<26}{r['s_per_step']:>9.3f}{r['tokens_per_s']:>11}{r['peak_GiB']:>10.2f}"
                  f"{r.get('ratio_vs_baseline', float('nan')):>8.3f}")


if __name__ == "__main__":
    main()
