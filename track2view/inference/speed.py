"""The inference speed and memory options of infer.py and evaluate.py generate (docs/inference.md).

    --cache NAME, --cache-option KEY=VALUE, --cache-calibrate FILE   step caches (step_cache.py)
    --attention-backend NAME                                         diffusers' `set_attention_backend`
                                                                     (default: flash-attn-4 where it runs, else SDPA)
    --vae-tiling, --offload none|model|sequential                    memory (memory.py)

(--guidance-interval is a generation setting of each request: guidance.py.) `SpeedOptions` holds them, checked
before any model loads; `apply_speed_options` puts them on a loaded Track2ViewPipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from track2view.inference.memory import OFFLOAD_MODES, check_offload, enable_offload, enable_vae_tiling
from track2view.inference.step_cache import PRESETS, StepCache, parse_step_cache
from track2view.model.flash_attn_4 import default_backend, set_attention_backend


@dataclass
class SpeedOptions:
    cache: StepCache = field(default_factory=StepCache)
    attention_backend: str | None = None  # None: flash-attn-4 where it runs (default_backend), else PyTorch SDPA
    vae_tiling: bool = False
    offload: str = "none"

    def check(self, device: str | None) -> None:
        check_offload(self.offload, device)
        if self.attention_backend is not None:
            check_attention_backend(self.attention_backend)


def add_speed_arguments(parser, calibration: bool = True) -> None:
    """The options' flags, as one argument group of `parser` (argparse)."""
    g = parser.add_argument_group("speed and memory (docs/inference.md)")
    g.add_argument("--cache", default="none", metavar="NAME",
                   help=f"a diffusers step cache that skips blocks on predictable steps: {', '.join(PRESETS)} "
                        f"(default %(default)s: every step computed)")
    g.add_argument("--cache-option", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the --cache preset (repeatable), e.g. threshold=0.08; mag needs "
                        "mag_ratios_file=FILE")
    if calibration:
        g.add_argument("--cache-calibrate", default=None, metavar="FILE",
                       help="with --cache mag: re-render exactly (nothing skipped) and write this model's per-step "
                            "magnitude ratios to FILE (JSON) for --cache-option mag_ratios_file=FILE")
    g.add_argument("--attention-backend", default=None, metavar="NAME",
                   help="diffusers attention backend: native (PyTorch SDPA), _native_cudnn, flash, _flash_3, sage, "
                        "flash_4_hub, ... (default: flash_4_hub where PyPI's flash-attn-4 is installed, the GPU is "
                        "Hopper or Blackwell and the dtype bf16/fp16, else native); flash and sage need their "
                        "packages installed; flash_4_hub without flash-attn-4 installed is fetched from the Hub")
    g.add_argument("--vae-tiling", action="store_true",
                   help="encode and decode in 256x256 tiles (lower VAE peak memory; tile seams differ slightly)")
    g.add_argument("--offload", default="none", metavar="MODE",
                   help=f"{' | '.join(OFFLOAD_MODES)}: keep weights in CPU memory and move each component "
                        f"(model) or each layer (sequential, slowest) to the GPU as it runs (default %(default)s)")


def speed_options_from(args) -> SpeedOptions:
    """The parsed flags -> SpeedOptions; ValueError naming the problem (unknown preset, option, ...)."""
    cache = parse_step_cache(args.cache, args.cache_option, getattr(args, "cache_calibrate", None))
    return SpeedOptions(cache, args.attention_backend, args.vae_tiling, args.offload)


def check_attention_backend(name: str) -> None:
    """ValueError listing diffusers' backends when `name` is none of them (availability is checked on use)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = [b.value for b in AttentionBackendName]
    if name.lower() not in known:
        raise ValueError(f"unknown --attention-backend {name!r}; diffusers knows {', '.join(known)}")


def apply_speed_options(pipe, device: str, options: SpeedOptions, context_parallel: bool = False) -> None:
    """Attention backend, VAE tiling and offload hooks on a loaded Track2ViewPipeline (the step cache is put on
    per request, as MagCache needs the step count). With no backend named: `default_backend`, except under
    context parallelism (diffusers' flash_4_hub has no context-parallel support; SDPA stays)."""
    wan = pipe.transformer.transformer
    backend = options.attention_backend or (None if context_parallel else default_backend(
        device.startswith("cuda"), wan.dtype))
    if backend is not None:
        try:
            set_attention_backend(wan, backend)
        except (RuntimeError, ImportError) as e:  # known to diffusers, but its package is missing here
            raise ValueError(f"--attention-backend {backend} cannot run here: {e}; install it "
                             f"or choose another backend") from None
    if options.vae_tiling:
        enable_vae_tiling(pipe.vae)
    if options.offload != "none":
        enable_offload(pipe, device, options.offload)


def compile_blocks(transformer, **compile_kwargs) -> None:
    """torch.compile (fullgraph) the `forward` of every block of `transformer` (a WanTransformer3DModel; infer.py
    --compile); `compile_kwargs` go to torch.compile (e.g. backend).

    Not `compile_repeated_blocks`: it compiles each block's whole call (`nn.Module.compile`), so the hooks a step
    cache registers on the blocks later run inside the trace, and their Python skip decisions and
    `torch.compiler.disable`d helpers fail a fullgraph trace. A compiled `forward` holds the block's computation
    only (one graph for all blocks: dynamo keys it by the forward's code, the weights are inputs); diffusers'
    HookRegistry wraps the `forward` it finds when a hook is registered, so the step cache's hooks run eagerly
    around the graph. Hooks registered before (context-parallel splits) are traced with the block, as before.
    """
    import torch

    for block in transformer.blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, **compile_kwargs)
