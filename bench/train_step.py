"""Training-step benchmark: the plain diffusers+peft baseline against our full
Track2View step (conditioner with 1152 tracks + target-half flow-matching loss + AdamW) under named variants,
in one process, one after the other on the same GPU.

    python bench/train_step.py                                   # baseline + the default variants, 480x832x81
    python bench/train_step.py --variants ours-sel-compile-ffn --memory-profile   # where the peak is
    python bench/train_step.py --variants ours-full ours-sel-compile "mine=ckpt:selective,sel:20,compile:1"
    python bench/train_step.py --variants ours-sel-compile-ffn-pertoken ours-sel-compile-ffn-oneway  # one-way attention
    H=384 W=672 F=81 python bench/train_step.py                  # another size
    python bench/train_step.py --device cpu --tiny               # smoke test (tiny Wan, 32x32x5)

Prints one JSON line per run {variant, s_per_step, tokens_per_s, peak_GiB, ratio_vs_baseline, ...} and a table.
Timing: torch.cuda.synchronize around each step, warm-up steps (compilation) excluded, median of --steps.
Peak memory: max_memory_allocated after the model and optimizer exist (as wan_step.py measures it), over all
steps (`peak_GiB`) and over the timed steps only (`steady_peak_GiB`, without compilation's first steps).
`--memory-profile`: one more step that reports the peak per phase (forward, each block's backward, the tail =
conditioner + patch embedding, optimizer) and the allocations alive at the step's peak, grouped by call site.

Variant spec: a preset name (PRESETS) or "name=key:value,..." with keys
    ckpt: none|full|selective   k: checkpoint only the first k blocks   sel: selective for the first m of them
    compile: 0|1 (compiled blocks)   backend: diffusers attention backend   fused: 0|1 (fused AdamW)
    ffn: tokens per chunk of the lean LoRA FFN's backward (SpeedSettings.ffn_chunk_tokens; default off)
    attn: full|one_way (one-way attention, track2view/model/one_way.py: a quarter less self-attention)
    t: per_sample|per_token timesteps (one_way needs and implies per_token)
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

from track2view.model.flow_matching import FlowMatchingConfig, flow_matching_loss, prepare_training_inputs  # noqa: E402
from track2view.testing.tiny import TINY_TRANSFORMER, WAN_1_3B, WAN_14B  # noqa: E402
from track2view.tracks import PairedTracks  # noqa: E402
from track2view.video_size import latent_frames  # noqa: E402
from track2view.model.transformer import SpeedSettings, Track2ViewTransformer  # noqa: E402

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
PRESETS = {
    "ours-full": "ckpt:full,fused:1",  # same levers as the baseline: the conditioner's + loss's cost
    "ours-sel": "ckpt:selective,fused:1",
    "ours-sel-compile": "ckpt:selective,compile:1,fused:1",
    "ours-sel-compile-cudnn": "ckpt:selective,compile:1,fused:1,backend:_native_cudnn",
    "ours-sel20-compile": "ckpt:selective,sel:20,compile:1,fused:1",
    "ours-full-compile": "ckpt:full,compile:1,fused:1",
    "ours-sel-ffn": "ckpt:selective,fused:1,ffn:8192",  # + the lean LoRA FFN (backward 8192 tokens at a time)
    "ours-sel-compile-ffn": "ckpt:selective,compile:1,fused:1,ffn:8192",
    "ours-full-ffn": "ckpt:full,fused:1,ffn:8192",
    # one-way attention on the GPU configs' levers, and its reference: the same with full attention and the
    # per-token timesteps one-way attention needs
    "ours-sel-compile-ffn-pertoken": "ckpt:selective,compile:1,fused:1,ffn:8192,t:per_token",
    "ours-sel-compile-ffn-oneway": "ckpt:selective,compile:1,fused:1,ffn:8192,attn:one_way",
}
DEFAULT_VARIANTS = ["ours-full", "ours-full-ffn", "ours-sel-compile", "ours-sel-compile-ffn"]


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, body = spec.partition("=")
    body = body or PRESETS.get(name)
    if body is None:
        raise SystemExit(f"unknown variant {spec!r}: use a preset {sorted(PRESETS)} or name=key:value,...")
    opts = dict(ckpt="full", k=None, sel=None, compile=0, backend=None, fused=1, ffn=None, attn="full", t=None)
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        if key not in opts:
            raise SystemExit(f"variant {spec!r}: unknown key {key!r}; keys: {sorted(opts)}")
        opts[key] = value
    return name, dict(speed=SpeedSettings(checkpointing=opts["ckpt"],
                                          checkpoint_blocks=None if opts["k"] is None else int(opts["k"]),
                                          selective_blocks=None if opts["sel"] is None else int(opts["sel"]),
                                          compile_blocks=bool(int(opts["compile"])),
                                          attention_backend=opts["backend"],
                                          ffn_chunk_tokens=None if opts["ffn"] is None else int(opts["ffn"])),
                      fused=bool(int(opts["fused"])), attention=opts["attn"],
                      timestep_mode=opts["t"] or ("per_token" if opts["attn"] == "one_way" else "per_sample"))


class Setup:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cfg = dict(TINY_TRANSFORMER if args.tiny else {"1.3b": WAN_1_3B, "14b": WAN_14B}[args.model])
        default_size = (32, 32, 5) if args.tiny else (480, 832, 81)
        self.H, self.W, self.F = (int(os.environ.get(k, d)) for k, d in zip("HWF", default_size))
        self.B = int(os.environ.get("B", 1))
        self.lf, self.lh, self.lw = latent_frames(self.F), self.H // 8, self.W // 8
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
        times, warmup_peak = [], 0.0
        for i in range(warmup + self.args.steps):
            if i == warmup:  # the steady-state peak leaves out compilation and the allocator's first step
                warmup_peak = self.peak_gib()
                self.reset_peak()
            self.sync()
            t0 = time.perf_counter()
            step()
            self.sync()
            times.append(time.perf_counter() - t0)
            if i < warmup:
                print(f"  {label}: warm-up step {i} {times[-1]:.2f} s", file=sys.stderr, flush=True)
        s = statistics.median(times[warmup:])
        return dict(variant=label, s_per_step=round(s, 3), tokens_per_s=round(self.B * self.tokens / s),
                    peak_GiB=max(warmup_peak, self.peak_gib()), steady_peak_GiB=self.peak_gib(),
                    model="tiny" if self.args.tiny else self.args.model, HxWxF=f"{self.H}x{self.W}x{self.F}",
                    B=self.B, tokens=self.tokens,
                    warmup_s=[round(t, 2) for t in times[:warmup]], **extra)


# ---- memory profile: where the peak of one steady-state step happens and what is alive then ----------
class MemoryPhases:
    """Peak allocated memory per phase of one step: forward, the head's backward, each block's backward
    (hooks on the checkpointed blocks' outputs), the tail (conditioner, patch embedding) and the optimizer."""

    def __init__(self, model):
        self.model, self.phase, self.peaks, self.allocated = model, "start", {}, {}
        self.original = model._gradient_checkpointing_func
        self.index = {id(b): i for i, b in enumerate(model.blocks)}
        model._gradient_checkpointing_func = self.wrapped

    def mark(self, phase: str):
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), torch.cuda.max_memory_allocated())
        self.allocated[phase] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.phase = phase

    def wrapped(self, block, *args):
        i = self.index[id(block)]
        if i == 0:
            self.mark("fwd_blocks")
            if args[0].requires_grad:
                args[0].register_hook(lambda g: self.mark("bwd_tail"))
        out = self.original(block, *args)
        out.register_hook(lambda g, i=i: self.mark(f"bwd_block{i}"))
        if i == len(self.index) - 1:
            self.mark("fwd_head")
        return out

    def close(self):
        self.model._gradient_checkpointing_func = self.original

    def summary(self) -> dict:
        gib = lambda x: round(x / 2**30, 2)  # noqa: E731
        blocks = {k: v for k, v in self.peaks.items() if k.startswith("bwd_block")}
        top = max(self.peaks, key=self.peaks.get)
        out = dict(peak_phase=top, peak_GiB=gib(self.peaks[top]),
                   phases={k: gib(v) for k, v in self.peaks.items() if not k.startswith("bwd_block")},
                   allocated_at={k: gib(v) for k, v in self.allocated.items() if not k.startswith("bwd_block")})
        if blocks:
            order = sorted(blocks, key=lambda k: -int(k[9:]))
            out["bwd_block_peaks"] = [gib(blocks[k]) for k in order]  # last block first, as backward runs
            out["bwd_block_start_alloc"] = [gib(self.allocated[k]) for k in order]
        return out


def _site(frames: list) -> str:
    """The innermost frame of project / diffusers / peft / torch.nn code of an allocation, else the innermost."""
    keep = ("track2view", "diffusers", "peft", "bench", "torch/nn/", "torchinductor", "flow_matching")
    for fr in frames:
        if any(k in fr["filename"] for k in keep) and "torch/nn/modules/module.py" not in fr["filename"]:
            return f"{Path(fr['filename']).name}:{fr['line']}:{fr['name']}"
    return f"{Path(frames[0]['filename']).name}:{frames[0]['line']}:{frames[0]['name']}" if frames else "?"


def live_at_peak(snapshot: dict, before: int, top: int = 14) -> dict:
    """Replay the allocator trace of one step: its peak and the allocations alive then, grouped by call site."""
    trace = [e for e in snapshot["device_traces"][torch.cuda.current_device()] if e["action"] in
             ("alloc", "free_completed")]
    live, current, best, best_at = {}, before, before, -1
    for i, e in enumerate(trace):
        if e["action"] == "alloc":
            live[e["addr"]] = e["size"]
            current += e["size"]
        elif e["addr"] in live:
            current -= live.pop(e["addr"])
        if current > best:
            best, best_at = current, i
    live = {}
    for e in trace[:best_at + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        else:
            live.pop(e["addr"], None)
    groups: dict[str, list] = {}
    for e in live.values():
        g = groups.setdefault(_site(e.get("frames", [])), [0, 0])
        g[0] += e["size"]
        g[1] += 1
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
    at = trace[best_at] if best_at >= 0 else {}
    return dict(trace_peak_GiB=round(best / 2**30, 2), before_step_GiB=round(before / 2**30, 2),
                event=f"{best_at}/{len(trace)}", at_site=_site(at.get("frames", [])) if at else None,
                live_by_site=[(k, round(v[0] / 2**30, 3), v[1]) for k, v in ranked])


def profile_step(st, step, transformer, label: str) -> None:
    """One more (steady-state) step with phase peaks and the allocator trace; prints one JSON line."""
    if st.device.type != "cuda":
        return
    phases = MemoryPhases(transformer)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, context="alloc", stacks="python")
    try:
        torch.cuda.reset_peak_memory_stats()
        step(phases)
        torch.cuda.synchronize()
        phases.mark("end")
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
        phases.close()
    print(json.dumps(dict(memory_profile=label, **phases.summary(), **live_at_peak(snapshot, before))), flush=True)


def run_baseline(st: Setup) -> dict:
    """The plain baseline: bf16 Wan, LoRA r=64 (fp32), SDPA, full ckpt, AdamW."""
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

    def step(phases=None):
        mark = phases.mark if phases else (lambda phase: None)
        mark("fwd_embed")
        with torch.autocast(st.device.type, dtype=torch.bfloat16):
            out = m(hidden_states=x, timestep=t, encoder_hidden_states=txt, return_dict=False)[0]
            loss = out[:, :, st.lf:].float().pow(2).mean()
        mark("bwd_head")
        loss.backward()
        mark("optimizer")
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        result = st.timed(step, "baseline", {})
        if getattr(st.args, "memory_profile", False):
            profile_step(st, step, m, "baseline")
        return result
    finally:
        del m, opt


def random_tracks(st: Setup, generator: torch.Generator) -> PairedTracks:
    shape = (st.B, 2, st.lf, st.num_tracks)
    return PairedTracks(uv=torch.rand(*shape, 2, generator=generator, device=st.device),
                        depth=0.5 + 5 * torch.rand(*shape, generator=generator, device=st.device),
                        valid=torch.rand(*shape, generator=generator, device=st.device) < 0.9)


def run_ours(st: Setup, name: str, variant: dict) -> dict:
    model = Track2ViewTransformer(st.base_model(), conditioning_config=st.conditioner,
                                  lora=dict(rank=st.rank, alpha=st.rank), attention=variant["attention"])
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
    fm = FlowMatchingConfig(timestep_mode=variant["timestep_mode"])
    st.reset_peak()

    def step(phases=None):
        mark = phases.mark if phases else (lambda phase: None)
        mark("fwd_embed")
        inputs = prepare_training_inputs(source, target, fm, generator=gen)
        cond = model.conditioning.augment({"tracks": tracks}, fm, gen)
        with torch.autocast(st.device.type, dtype=torch.bfloat16):
            prediction = model(inputs.hidden_states, inputs.timestep, text, **cond,
                               source_frame_mask=inputs.source_frame_mask)
            loss = flow_matching_loss(prediction, inputs.velocity)
        mark("bwd_head")
        loss.backward()
        mark("optimizer")
        opt.step()
        opt.zero_grad(set_to_none=True)

    extra = dict(speed=vars(variant["speed"]), fused_adamw=fused, tracks=st.num_tracks, attention=variant["attention"],
                 timestep_mode=variant["timestep_mode"],
                 trainable_M=round(sum(p.numel() for p in model.trainable_parameters()) / 1e6, 3))
    try:
        result = st.timed(step, name, extra, compiled=variant["speed"].compile_blocks)
        if st.args.sync_debug and st.device.type == "cuda":  # one more step that reports host syncs
            torch.cuda.set_sync_debug_mode("warn")
            step()
            torch.cuda.set_sync_debug_mode("default")
        if getattr(st.args, "memory_profile", False):
            profile_step(st, step, model.transformer, name)
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
    ap.add_argument("--model", choices=("1.3b", "14b"), default="1.3b", help="Wan-2.1 T2V shape (random init)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny Wan at 32x32x5 (CPU smoke test)")
    ap.add_argument("--memory-profile", action="store_true",
                    help="one more step recording the peak per phase (forward, each block's backward, conditioner, "
                         "optimizer) and the allocations alive at the peak, grouped by call site")
    ap.add_argument("--sync-debug", action="store_true", help="run one extra step with CUDA sync debug warnings")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    st = Setup(args)
    if st.device.type == "cuda":
        print(json.dumps(dict(torch=torch.__version__, gpu=torch.cuda.get_device_name())), flush=True)
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend

    default_backend = _AttentionBackendRegistry.get_active_backend()[0]
    results, started, longest = [], time.perf_counter(), 0.0
    runs = ([("baseline", None)] if not args.no_baseline else []) + variants
    for name, variant in runs:
        run_start = time.perf_counter()
        if run_start - started + longest > 60 * args.max_minutes:
            res = dict(variant=name, error=f"skipped: would exceed --max-minutes {args.max_minutes}")
            results.append(res)
            print(json.dumps(res), flush=True)
            continue
        try:  # diffusers' set_attention_backend also sets its process-wide default: keep a variant's to itself
            with attention_backend(default_backend):
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
