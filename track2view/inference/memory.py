"""GPU memory options for re-rendering on smaller GPUs (infer.py --vae-tiling, --offload).

* VAE tiling (`AutoencoderKLWan.enable_tiling` + `enable_slicing`): the VAE encodes and decodes 256x256 pixel
  tiles (blended over their overlap) instead of whole frames, one batch item at a time; at 480x832 its
  activations, which set the peak of encoding and decoding, shrink to a tile's. Frames differ slightly from the
  untiled ones near tile seams.
* offload "model" (diffusers' `enable_model_cpu_offload`): the components stay in CPU memory and each moves to
  the GPU whole while it runs, in `Track2ViewPipeline.model_cpu_offload_seq` order (text encoder, transformer,
  VAE), so the GPU holds one of them at a time; costs a few seconds of transfers per video.
* offload "sequential" (`enable_sequential_cpu_offload`): every leaf module's weights move to the GPU for its
  own call only; the least memory, but each denoising step streams the whole DiT from CPU memory (much slower).
  The conditioning module stays on the GPU (it is small): torch's MultiheadAttention in the track conditioner
  reads its `out_proj` weights without calling that module, which per-module offload hooks cannot follow.

Offload needs an accelerator. Under offload the weights' device says nothing about where computation runs: the
pipeline places its tensors on `DiffusionPipeline._execution_device`, which reads the offload hooks.
"""

from __future__ import annotations

OFFLOAD_MODES = ("none", "model", "sequential")


def check_offload(mode: str, device: str | None) -> None:
    """--offload MODE for a run on `device` (None: cuda if available); ValueError naming the problem otherwise."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"unknown --offload {mode!r}; choose one of {', '.join(OFFLOAD_MODES)}")
    if mode == "none":
        return
    import torch

    on = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(on).type != "cuda":
        raise ValueError(f"--offload {mode} keeps the weights in CPU memory and moves them to a GPU as they are "
                         f"used, but this run is on {on}; drop --offload (on a CPU there is no GPU memory to save)")


def enable_vae_tiling(vae) -> None:
    vae.enable_tiling()
    vae.enable_slicing()


def enable_offload(pipe, device: str, mode: str) -> None:
    """Offload hooks on every component of `pipe` (mode "model" or "sequential"), computing on `device`."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
        keep_on_device(pipe.transformer.conditioning, device)
    else:
        raise ValueError(f"enable_offload takes 'model' or 'sequential', got {mode!r}")


def keep_on_device(module, device: str) -> None:
    """Take `module` out of sequential offload: its hooks removed (which restores its weights) and it moved to
    `device` for good."""
    from accelerate.hooks import remove_hook_from_module

    remove_hook_from_module(module, recurse=True)
    module.to(device)
