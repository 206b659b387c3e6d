"""diffusers' context-parallel split hooks run outermost on Wan's submodules, whatever was registered after them.

`enable_parallelism` (track2view/inference/parallel.py) puts a split hook on `rope` (its outputs) and on `blocks.0`
(its input), a gather hook on `proj_out`, and a timestep split on the model itself. Hooks registered later wrap
the earlier ones, so without care they would meet the sequence on the wrong side of the split:

    rope      the source KV cache's slice (source_kv.py) must take its range of the whole sequence, then the split
              shares the range out: the split's post_forward must run last
    blocks.0  MagCache's head hook (step_cache.py) must see this process's share, as every block does: the split's
              pre_forward must run first

`keep_splits_outermost` re-registers the split hooks of every submodule last (outermost). The model's own split
stays where it is (inside the source KV cache's root hook, which slices the per-token timesteps of the whole
sequence), and gather hooks stay innermost (proj_out's output is whole before anything else reads it).
`read_split_signatures` fills in what a split hook would otherwise read with `inspect` on its first call, inside
compiled blocks (torch.compile with fullgraph cannot trace it).
"""

from __future__ import annotations

import inspect


def keep_splits_outermost(transformer) -> None:
    """Re-register the context-parallel split hooks of `transformer`'s submodules after their other hooks."""
    for name, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if name and registry is not None:
            _reorder(registry)


def _reorder(registry) -> None:
    from diffusers.hooks.context_parallel import ContextParallelSplitHook

    order = list(registry._hook_order)
    first = next((i for i, n in enumerate(order) if isinstance(registry.hooks[n], ContextParallelSplitHook)), None)
    if first is None:
        return
    moved = [(n, registry.hooks[n]) for n in order[first:]]
    wanted = [m for m in moved if not isinstance(m[1], ContextParallelSplitHook)] + \
        [m for m in moved if isinstance(m[1], ContextParallelSplitHook)]
    if [n for n, _ in wanted] == order[first:]:
        return
    # removed outermost first: removing the last hook restores the forward it wrapped, whereas removing an inner
    # one leaves it inside a later hook's new_forward (diffusers keeps that hook's original_forward)
    for hook_name in reversed(order[first:]):
        registry.remove_hook(hook_name, recurse=False)
    for hook_name, hook in wanted:
        registry.register_hook(hook, hook_name)  # a split hook's initialize_hook forgets the signature it read
        if isinstance(hook, ContextParallelSplitHook):
            _read_signature(hook.module_forward_metadata)


def read_split_signatures(transformer) -> None:
    """diffusers' split hook reads its module's forward signature (`inspect`) on its first call, which compiled
    blocks (torch.compile, fullgraph) cannot trace: read it now, for every split hook of `transformer`."""
    from diffusers.hooks.context_parallel import ContextParallelSplitHook

    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in registry.hooks.values() if registry is not None else ():
            if isinstance(hook, ContextParallelSplitHook):
                _read_signature(hook.module_forward_metadata)


def _read_signature(metadata) -> None:
    if metadata.cached_parameter_indices is None:  # as diffusers' ModuleForwardMetadata fills it on first use
        names = list(inspect.signature(metadata._cls.forward).parameters)[1:]  # without self
        metadata.cached_parameter_indices = {name: i for i, name in enumerate(names)}
