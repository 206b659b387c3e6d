"""diffusers' step caches as opt-in presets for re-rendering (infer.py / evaluate.py generate: --cache NAME).

A step cache skips the DiT's blocks on denoising steps whose result it predicts from earlier steps. It is
enabled on the base `WanTransformer3DModel` (`enable_cache`), whose hooks sit on the blocks: our conditioning
hook on the patch embedding runs before them at every step, and the LoRA (merged or not) is inside the blocks,
so both are in what is computed and cached. The hooks keep their state per cache context of the pipeline
("cond_uncond": both CFG branches as a batch of 2, "cond": the positive branch alone) and the pipeline resets
it before each video.

    preset       skips                                            defaults, and why
    none         nothing (the default)
    first_block  blocks 2..30 while the first block's residual    threshold 0.05 (diffusers' default; Wan-2.1 users
                 changed by less than `threshold` (relative mean     report 0.03-0.07 usable, higher visibly worse;
                 absolute difference) since the last full step       our tokens include the clean source half, which
                                                                    changes less, so we stay low)
    taylorseer   every block; the model output is extrapolated    cache_interval 5, disable_cache_before_step 10,
                 from the last full steps by a Taylor series         max_order 1 (diffusers' documented setting;
                 ("lite" mode); full steps: the first 10, then       the paper's video setting is N=5, O=1),
                 every 5th                                           taylor_factors_dtype float32 (the cached output
                                                                    is small: [B, tokens, 64])
    mag          every block, reusing the last residual while     threshold 0.12, max_skip_steps 2, retention_ratio
                 the error accumulated from per-step magnitude       0.2: MagCache's Wan2.1-T2V-1.3B setting
                 ratios stays under `threshold`                      (E012K2R02, the more conservative of its two)

TaylorSeer runs in diffusers' lite mode: its default patterns ('^blocks.*attn') match none of Wan's modules
(attn1, attn2), and caching every attention output with its Taylor factors would hold about 48 GB at 480p.
MagCache needs this model's per-step magnitude ratios: `--cache mag --cache-calibrate FILE` runs an exact
re-render (nothing skipped) that records them, `--cache-option mag_ratios_file=FILE` uses them (diffusers maps
them to another step count by nearest interpolation). Step counters are per cache context, so MagCache
refuses a --guidance-interval that splits the steps between the two contexts; TaylorSeer's warm-up restarts in
the "cond" context. Quality and speed of each preset: docs/benchmarks.md. Under context parallelism (parallel.py)
taylorseer and mag run on each process's share of the tokens (their schedules are the same on every process);
first_block, whose skips depend on the tokens, is refused there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from track2view.model.split_hooks import keep_splits_outermost

RATIOS_KIND = "track2view-mag-ratios"


def _number(cast, low: float, high: float = math.inf):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if cast is int else 'a number'}") from None
        if not low <= value <= high:
            raise ValueError(f"must be in [{low:g}, {high:g}]" if high < math.inf else f"must be >= {low:g}")
        return value
    return parse


def _optional_step(text: str) -> int | None:
    return None if text.lower() == "none" else _number(int, 0)(text)


def _dtype_name(text: str) -> str:
    if text not in ("float32", "bfloat16", "float16"):
        raise ValueError("expected float32, bfloat16 or float16")
    return text


@dataclass(frozen=True)
class Preset:
    config_class: str  # a diffusers cache config
    defaults: dict  # config fields we set
    options: dict  # --cache-option KEY -> its parser


PRESETS = {
    "none": Preset("", {}, {}),
    "first_block": Preset("FirstBlockCacheConfig", {"threshold": 0.05}, {"threshold": _number(float, 0.0)}),
    "taylorseer": Preset(
        "TaylorSeerCacheConfig",
        {"use_lite_mode": True, "cache_interval": 5, "disable_cache_before_step": 10, "max_order": 1,
         "taylor_factors_dtype": "float32"},
        {"cache_interval": _number(int, 1), "disable_cache_before_step": _number(int, 0),
         "disable_cache_after_step": _optional_step, "max_order": _number(int, 0),
         "taylor_factors_dtype": _dtype_name}),
    "mag": Preset(
        "MagCacheConfig", {"threshold": 0.12, "max_skip_steps": 2, "retention_ratio": 0.2},
        {"threshold": _number(float, 0.0), "max_skip_steps": _number(int, 0),
         "retention_ratio": _number(float, 0.0, 1.0), "mag_ratios_file": str}),
}


@dataclass
class StepCache:
    """A preset with its config fields (defaults overridden by --cache-option), MagCache's ratios or the file its
    calibration writes."""

    preset: str = "none"
    fields: dict = field(default_factory=dict)
    mag_ratios: tuple[float, ...] | None = None
    calibrate_to: Path | None = None

    def config(self, num_inference_steps: int):
        """The diffusers cache config for runs of `num_inference_steps` steps (None: no cache)."""
        if self.preset == "none":
            return None
        import diffusers

        fields = dict(self.fields)
        if "taylor_factors_dtype" in fields:
            from track2view.dtypes import parse_dtype

            fields["taylor_factors_dtype"] = parse_dtype(fields["taylor_factors_dtype"])
        if self.calibrate_to:  # one step more than the run: diffusers would print and clear the ratios at the end
            fields.update(calibrate=True, num_inference_steps=num_inference_steps + 1)
        elif self.preset == "mag":
            fields.update(mag_ratios=list(self.mag_ratios), num_inference_steps=num_inference_steps)
        return getattr(diffusers, PRESETS[self.preset].config_class)(**fields)

    def check_run(self, guided: list[bool], overwrite: bool) -> None:
        """Checks against one request: its guided steps (guidance.guided_steps) and whether outputs may be replaced."""
        if self.preset == "mag" and 0 < sum(guided) < len(guided):
            raise ValueError("--cache mag counts steps per cache context, and this --guidance-interval splits the "
                             "steps between two (both CFG branches / the positive one alone); use the full interval "
                             "or --cache first_block / taylorseer")
        if self.calibrate_to and (self.calibrate_to.is_dir() or (self.calibrate_to.exists() and not overwrite)):
            raise ValueError(f"--cache-calibrate {self.calibrate_to} exists; pass --overwrite to replace it, or "
                             f"choose another file")


def parse_step_cache(preset: str = "none", options: list[str] = (), calibrate_to: str | None = None) -> StepCache:
    """--cache, --cache-option KEY=VALUE (repeatable), --cache-calibrate FILE -> StepCache; ValueError naming the
    problem and the fix otherwise (read before any model loads)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --cache {preset!r}; choose one of {', '.join(PRESETS)}")
    if preset == "none" and options:
        raise ValueError("--cache-option sets an option of a --cache preset; give --cache first_block, taylorseer or "
                         "mag")
    if calibrate_to and preset != "mag":
        raise ValueError("--cache-calibrate records MagCache's magnitude ratios; use it with --cache mag")
    known = PRESETS[preset].options
    fields = dict(PRESETS[preset].defaults)
    for option in options:
        key, sep, text = option.partition("=")
        if not sep or not key:
            raise ValueError(f"--cache-option takes KEY=VALUE, got {option!r}")
        if key not in known:
            raise ValueError(f"--cache-option {key}: --cache {preset} has no such option; its options: "
                             f"{', '.join(known)}")
        try:
            fields[key] = known[key](text)
        except ValueError as e:
            raise ValueError(f"--cache-option {option}: {key} {e}") from None
    ratios_file = fields.pop("mag_ratios_file", None)
    if preset == "mag" and not ratios_file and not calibrate_to:
        raise ValueError("--cache mag needs this model's per-step magnitude ratios: record them once with --cache mag "
                         "--cache-calibrate ratios.json, then pass --cache-option mag_ratios_file=ratios.json")
    if ratios_file and calibrate_to:
        raise ValueError("--cache-calibrate writes a ratios file and mag_ratios_file reads one; give only one of them")
    return StepCache(preset, fields, read_mag_ratios(ratios_file) if ratios_file else None,
                     Path(calibrate_to) if calibrate_to else None)


def enable_step_cache(transformer, cache: StepCache, num_inference_steps: int) -> None:
    """Put `cache`'s hooks on the base WanTransformer3DModel for runs of `num_inference_steps` (replacing any)."""
    from diffusers.hooks import HookRegistry

    if transformer.is_cache_enabled:
        transformer.disable_cache()
    HookRegistry.check_if_exists_or_initialize(transformer.blocks[-1]).remove_hook(RECORDER_HOOK, recurse=False)
    config = cache.config(num_inference_steps)
    if config is None:
        return
    transformer.enable_cache(config)
    keep_splits_outermost(transformer)  # under context parallelism the head hook sees this process's share
    if cache.calibrate_to:
        _attach_recorder(transformer)


class FullPassCounter:
    """Counts the calls of a WanTransformer3DModel (`calls`) and those that ran its last block (`full`: a step
    cache skipped the others), for benchmarks. Create it before the cache is enabled: it wraps the last block's
    `forward`, which the cache's hooks then wrap in turn, so it counts only when the block computes, and outside a
    compiled block's graph (where a hook would run once, at tracing). It stays for the model's lifetime."""

    def __init__(self, transformer):
        self.calls = self.full = 0
        block = transformer.blocks[-1]
        inner = block.forward

        def computed(*args, **kwargs):
            self.full += 1
            return inner(*args, **kwargs)

        transformer.register_forward_pre_hook(self._called)
        block.forward = computed

    def _called(self, *_) -> None:
        self.calls += 1

    def reset(self) -> None:
        self.calls = self.full = 0


# ---- MagCache calibration ----------------------------------------------------------------------------------
RECORDER_HOOK = "track2view_mag_ratios"


class MagRatioRecorder:
    """Registered on the last block after MagCache's hook: after each call, a copy of the ratios its calibration
    recorded so far, per cache context (kept when the hooks' state is reset as a re-render ends)."""

    def __init__(self, state_manager):
        self.state_manager, self.ratios = state_manager, {}

    def __call__(self, module, output):
        self.ratios[self.state_manager.context.name] = list(self.state_manager.get_state().calibration_ratios)
        return output


def _attach_recorder(transformer) -> None:
    from diffusers.hooks import HookRegistry, ModelHook
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK

    registry = HookRegistry.check_if_exists_or_initialize(transformer.blocks[-1])
    hook = ModelHook()
    hook.post_forward = MagRatioRecorder(registry.get_hook(_MAG_CACHE_BLOCK_HOOK).state_manager)
    registry.register_hook(hook, RECORDER_HOOK)


def recorded_mag_ratios(transformer, contexts: tuple[str, ...]) -> list[float]:
    """The per-step magnitude ratios the last calibration run recorded in one of the cache `contexts` (diffusers'
    formula: mean over tokens of |residual_t| / |residual_t-1| of the block stack, the CFG batch measured jointly)."""
    from diffusers.hooks import HookRegistry

    recorder = HookRegistry.check_if_exists_or_initialize(transformer.blocks[-1]).get_hook(RECORDER_HOOK).post_forward
    runs = [ratios for name, ratios in recorder.ratios.items() if name in contexts]
    recorder.ratios = {}
    if len(runs) != 1:
        raise RuntimeError(f"the calibration recorded {len(runs)} of the cache contexts {contexts}, expected one")
    return runs[0]


def write_mag_ratios(path: Path, runs: list[list[float]], **about) -> Path:
    """The ratios averaged over the calibration runs (one per re-rendered trajectory), as JSON, atomically."""
    from track2view.io import write_json

    ratios = [round(sum(step) / len(step), 6) for step in zip(*runs)]
    return write_json(path, {"kind": RATIOS_KIND, "mag_ratios": ratios, "num_inference_steps": len(ratios),
                             "runs": len(runs), **about})


def read_mag_ratios(path: str) -> tuple[float, ...]:
    """The ratios of a file `write_mag_ratios` wrote; ValueError naming the problem otherwise."""
    fix = f"write it with --cache mag --cache-calibrate {path}"
    if not Path(path).is_file():
        raise ValueError(f"mag_ratios_file {path} not found; {fix}")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"mag_ratios_file {path} is not a ratios file ({e}); {fix}") from None
    ratios = data.get("mag_ratios") if isinstance(data, dict) else None
    if not (isinstance(ratios, list) and ratios and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0 for r in ratios)):
        raise ValueError(f"mag_ratios_file {path} has no list of positive finite 'mag_ratios'; {fix}")
    return tuple(float(r) for r in ratios)
