"""The source KV cache: with one-way attention, every denoising step runs only the target tokens through Wan.

With one-way attention (one_way.py) and t = 0 on the source, the source tokens' path through the blocks does
not depend on the noisy target, so their self-attention keys/values (after norm_q/norm_k and the rotary
embedding, what attention consumes) are the same at every step. Within `source_kv_cache(transformer)`, the first
call of each diffusers cache context ("cond_uncond": the CFG batch of 2; "cond": one branch) primes that
context's cache: it runs the source tokens alone through the blocks and each block's processor keeps their K/V.
That call and every later one then run the target tokens alone, attending over the kept source K/V and their
own: half the tokens per step, so about half the linear work and half the attention (S_src x S instead of S^2).

Hooks (diffusers ModelHooks through HookRegistry; like diffusers' context-parallel plan, they cut the sequence
at named submodules and put it back together at the output, so Wan's forward runs unchanged):

    root (WanTransformer3DModel)  SourceKVCacheHook: per call the token range (source to prime, target to step) and
                                  per-token timesteps [B, S] -> [B, range]; the kept K/V in a StateManager keyed by
                                  the cache context's name. It primes under its own context "<name>/source", so
                                  step caches (FirstBlockCache, TaylorSeer, MagCache) keep the priming call out of
                                  their state of the steps, and every step shows them the same token count.
    patch_embedding               tokens [B, D, 2F, h, w] -> the range's frames (after the conditioning hook has
                                  added its tokens to the whole grid)
    rope                          (cos, sin) [1, S, 1, d] -> [1, range, 1, d]
    proj_out                      [B, range, C p] -> zero-padded to [B, S, C p], so that the unpatchify is unchanged:
                                  the output's source half is zeros (the pipeline reads only the target half).

The cut is at the patch embedding's output rather than at `blocks.0`'s input (where the context-parallel plan
splits), so that hooks on the blocks (step caches) see only the range whatever order they were registered in.

Under context parallelism (track2view/inference/parallel.py) diffusers' plan then splits the range: the root
hook runs before diffusers' timestep split, the rope slice before its split of the rope outputs (the range is cut
from the whole sequence, then shared out: track2view/model/split_hooks.py), the padding after its gather at
proj_out. Each process keeps the K/V of its share of the source; one_way.py says why the split steps are exact.

Every call within the block must bring the same source latents, prompt embeddings and conditioning inputs per
cache context (one re-render). Memory: the kept K/V, 2 x blocks x batch x S_src x D values per context.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager, _set_cache_context

from track2view.model.one_way import FULL, PRIME, STEPS, one_way_processors
from track2view.model.split_hooks import keep_splits_outermost

ROOT_HOOK, FRAMES_HOOK, ROPE_HOOK, PAD_HOOK = (f"track2view_source_kv_{n}" for n in ("root", "frames", "rope", "pad"))
PRIME_CONTEXT_SUFFIX = "/source"


class SourceKVState(BaseState):
    """One cache context's kept source keys/values: per block (key, value), each [B, S_src, heads, d]."""

    def __init__(self):
        self.keys_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def reset(self):
        self.keys_values = None


class SourceKVCacheHook(ModelHook):
    """On the Wan transformer: primes each cache context once, then runs every call on the target tokens."""

    _is_stateful = True

    def __init__(self, processors: list):
        super().__init__()
        self.processors = processors
        self.state_manager = StateManager(SourceKVState)
        self.frames = slice(None)  # the (patched) latent frames the blocks see in this call
        self.tokens = slice(None)  # their tokens
        self.total_tokens = 0  # tokens of the whole sequence (the output's length)
        self.signature = None  # of the Wan forward, to read its arguments by name

    def initialize_hook(self, module):
        self.signature = inspect.signature(module.forward)
        return module

    def new_forward(self, module, *args, **kwargs):
        call = self.signature.bind(*args, **kwargs)
        hidden_states, timestep = call.arguments["hidden_states"], call.arguments["timestep"]
        if timestep.dim() != 2:
            raise ValueError(f"the source KV cache needs per-token timesteps [B, S], got {tuple(timestep.shape)}")
        p_t, p_h, p_w = module.config.patch_size
        frames = hidden_states.shape[2] // p_t
        per_frame = (hidden_states.shape[3] // p_h) * (hidden_states.shape[4] // p_w)
        self.total_tokens, half = frames * per_frame, frames // 2
        state = self.state_manager.get_state()
        if state.keys_values is None:
            self._prime(module, call, half, per_frame)
            state.keys_values = [(p.source_key, p.source_value) for p in self.processors]
        self._load(state, hidden_states.shape[0])
        return self._run(call, STEPS, slice(half, frames), per_frame)

    def _prime(self, module, call, half: int, per_frame: int) -> None:
        """Run the source tokens alone, under the context "<name>/source" (the step caches' state stays apart)."""
        context = self.state_manager.context  # diffusers' own setter (private): every stateful hook follows it
        _set_cache_context(module, dataclasses.replace(context, name=context.name + PRIME_CONTEXT_SUFFIX))
        try:
            self._run(call, PRIME, slice(0, half), per_frame)
        finally:
            _set_cache_context(module, context)

    def _load(self, state: SourceKVState, batch: int) -> None:
        kept = state.keys_values[0][0].shape[0]
        if kept != batch:
            raise ValueError(f"the source KV cache of cache context {self.state_manager.context.name!r} holds a "
                             f"batch of {kept}, this call has {batch}: give each CFG batch its own cache_context name")
        for processor, (key, value) in zip(self.processors, state.keys_values):
            processor.source_key, processor.source_value = key, value

    def _run(self, call, mode: str, frames: slice, per_frame: int):
        """The original forward on `frames` only (per-token timesteps sliced to their tokens)."""
        self.frames, self.tokens = frames, slice(frames.start * per_frame, frames.stop * per_frame)
        for processor in self.processors:
            processor.mode = mode
        timestep = call.arguments["timestep"][:, self.tokens]
        if bool((timestep == timestep[:, :1]).all()):  # one t per half (the pipeline's): Wan's per-sample path, the
            timestep = timestep[:, 0]  # same values without the per-token modulation tensors (7% of a step on GPU)
        return self.fn_ref.original_forward(**{**call.arguments, "timestep": timestep})

    # ---- the submodules' output edits -------------------------------------------------------------------------
    def slice_frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch-embedded tokens [B, D, 2F, h, w] -> [B, D, range frames, h, w]."""
        return tokens[:, :, self.frames]

    def slice_rope(self, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [1, S, 1, d] -> [1, range, 1, d]."""
        return tuple(f[:, self.tokens] for f in rope)

    def pad_tokens(self, output: torch.Tensor) -> torch.Tensor:
        """[B, range, C] -> [B, S, C], zeros outside the range."""
        before, after = self.tokens.start, self.total_tokens - self.tokens.stop
        return torch.nn.functional.pad(output, (0, 0, before, after))

    def reset_state(self, module):
        self.state_manager.reset()
        for processor in self.processors:
            processor.mode, processor.source_key, processor.source_value = FULL, None, None
        return module


class OutputEditHook(ModelHook):
    """Applies `edit` to a submodule's output."""

    def __init__(self, edit):
        super().__init__()
        self.edit = edit

    def post_forward(self, module, output):
        return self.edit(output)


def _edits(transformer, root: SourceKVCacheHook) -> dict:
    return {FRAMES_HOOK: (transformer.patch_embedding, root.slice_frames),
            ROPE_HOOK: (transformer.rope, root.slice_rope), PAD_HOOK: (transformer.proj_out, root.pad_tokens)}


@contextlib.contextmanager
def source_kv_cache(transformer):
    """Within the block, a `WanTransformer3DModel` with one-way attention runs every call of a cache context on
    the target tokens only, over its source K/V computed once (module docstring). Calls must come inside
    `transformer.cache_context(name)`; on leaving, the hooks go and the base's stateful hooks (this cache, the
    step caches: a re-render ended) are reset."""
    processors = one_way_processors(transformer)
    if len(processors) != len(transformer.blocks):
        raise ValueError("the source KV cache needs one-way attention in every block (attention one_way)")
    root, registry = SourceKVCacheHook(processors), HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(root, ROOT_HOOK)
    edits = _edits(transformer, root)
    for name, (module, edit) in edits.items():  # registered last: they see the outputs of earlier hooks
        HookRegistry.check_if_exists_or_initialize(module).register_hook(OutputEditHook(edit), name)
    keep_splits_outermost(transformer)  # except diffusers' split of the rope outputs: it shares out the range
    registry.invalidate_child_registries_cache()
    try:
        yield
    finally:
        registry.reset_stateful_hooks()
        registry.remove_hook(ROOT_HOOK, recurse=False)
        for name, (module, _) in edits.items():
            module._diffusers_hook.remove_hook(name, recurse=False)
        registry.invalidate_child_registries_cache()
