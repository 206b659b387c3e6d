"""`ConditioningHook`: adds a conditioning kind's tokens to the output of Wan's patch embedding.

    WanTransformer3DModel.forward: patch_embedding(latents) -> [B, D, 2F, h, w]
        + conditioning.condition_tokens(...)                  <- this hook (diffusers `ModelHook.post_forward`)
      -> flatten -> blocks (context-parallel split at blocks.0) -> norm_out -> proj_out

A diffusers hook on the `patch_embedding` submodule (`HookRegistry`, as diffusers' own caches and context
parallelism are), so diffusers' forward runs unchanged and the hook composes with `enable_cache(...)` (hooks
on the blocks) and `enable_parallelism(...)` (the split comes after the patch embedding, so the hook sees
the whole token grid, as the bilinear sampling needs).

State: `inputs`, the call's conditioning inputs (set by `Track2ViewTransformer.forward` for one call), and at
inference, with `reuse_tokens` on, the tokens of the first call, reused for every later denoising step and CFG
branch while the kind is `steps_invariant` (the track conditioner reads only the clean source half: computing
it once per video removes 2 x steps - 1 of its 2 x steps calls, exactly). `reset_state` (diffusers'
`reset_stateful_hooks`) clears them.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from diffusers.hooks import HookRegistry, ModelHook

HOOK_NAME = "track2view_conditioning"


class ConditioningHook(ModelHook):
    _is_stateful = True

    def __init__(self, conditioning: torch.nn.Module):
        super().__init__()
        self.conditioning = conditioning
        self.inputs: Mapping[str, Any] | None = None
        self.reuse_tokens = False
        self.tokens: torch.Tensor | None = None

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        if self.inputs is None:  # called as a bare Wan transformer
            return output
        if self.reuse_tokens and self.conditioning.steps_invariant:
            if self.tokens is None:  # one video: the samples the inputs describe (1: shared by the CFG branches)
                batch = _batch_size(self.inputs, output.shape[0])
                self.tokens = self.conditioning.condition_tokens(output[:batch], self.inputs, patch_bias=module.bias)
            tokens = self.tokens
        else:
            tokens = self.conditioning.condition_tokens(output, self.inputs, patch_bias=module.bias)
        if tokens is None:
            return output
        return output + tokens.expand(output.shape[0], *tokens.shape[1:])

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.inputs, self.tokens = None, None
        return module


def _batch_size(inputs: Mapping[str, Any], default: int) -> int:
    sizes = {v.valid.shape[0] if hasattr(v, "valid") else v.shape[0] for v in inputs.values() if v is not None}
    return sizes.pop() if len(sizes) == 1 else default


def attach(patch_embedding: torch.nn.Module, conditioning: torch.nn.Module) -> ConditioningHook:
    """Register (or re-point) the conditioning hook on Wan's patch embedding; returns the hook."""
    registry = HookRegistry.check_if_exists_or_initialize(patch_embedding)
    hook = registry.get_hook(HOOK_NAME)
    if hook is None:
        hook = ConditioningHook(conditioning)
        registry.register_hook(hook, HOOK_NAME)
    hook.conditioning = conditioning
    return hook
