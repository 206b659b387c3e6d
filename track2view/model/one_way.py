"""One-way attention: the source tokens attend to the source only, the target tokens to every token.

    self-attention input [B, S, D], S = 2 S_src: the tokens of the F source latent frames, then of the F target ones
    source queries [B, S_src] over source keys/values [B, S_src]   -> output[:, :S_src]
    target queries [B, S_src] over all keys/values [B, S]          -> output[:, S_src:]

`OneWayAttnProcessor` is an attention processor set on every Wan block's self-attention (`attn1`): diffusers'
forward, LoRA (also fused), attention backends (two `dispatch_attention_fn` calls, no dense mask) and compiled
blocks keep working. S_src = S / 2 is read from each call's shape. Training skips a quarter of the
self-attention FLOPs (S^2 -> S^2/4 + S^2/2).

With per-token timesteps (t = 0 on the source half) nothing in a block then carries the noisy target into the
source tokens, so inference can compute the source's keys/values once per re-render (track2view/model/
source_kv.py); with one timestep per sample the source's modulation would change at every step, hence one-way
attention requires `timestep_mode: per_token` (`check_timestep_mode`).

Modes (`OneWayAttnProcessor.mode`, set by source_kv.py's hooks): FULL (the call holds the whole sequence, as
above), PRIME (it holds the source tokens only: they attend among themselves and their keys/values are kept),
STEPS (it holds the target tokens only: they attend over the kept source keys/values and their own).

Context parallelism (diffusers' `enable_parallelism`, track2view/inference/parallel.py) gives each process a
contiguous share of the call's tokens. PRIME and STEPS attend over every key of the call, so diffusers' split
attention (Ulysses / ring, `dispatch_attention_fn(parallel_config=...)`) runs them as they are: in STEPS each
process brings its share of the kept source keys/values with its target ones, and as attention does not depend on
the order of the keys, the keys of all processes together are every source and target key. FULL attends over two
different key sets, split where the shares need not end, so it refuses context parallelism.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

ATTENTIONS = ("full", "one_way")
FULL, PRIME, STEPS = "full", "prime", "steps"


def check_attention(attention: str) -> None:
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")


def check_timestep_mode(attention: str, timestep_mode: str) -> None:
    """Raise ValueError when `attention` cannot run with `timestep_mode` (one_way needs per_token)."""
    check_attention(attention)
    if attention == "one_way" and timestep_mode != "per_token":
        raise ValueError(f"attention one_way needs per-token timesteps (t = 0 on the source half), got "
                         f"{timestep_mode} timesteps: train with model.flow_matching.timestep_mode: per_token (an "
                         f"export's pipeline follows it), or use attention full")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding: x [B, S, heads, d], cos/sin [1, S, 1, d] (as WanAttnProcessor applies it)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class OneWayAttnProcessor:
    """Self-attention (Wan's `attn1`) with one-way attention; see the module docstring for the modes."""

    _attention_backend = None  # set by diffusers' `set_attention_backend`
    _parallel_config = None  # set by diffusers' `enable_parallelism`: PRIME and STEPS attend split

    def __init__(self):
        self.mode = FULL
        self.source_key: torch.Tensor | None = None  # [B, S_src, heads, d]: written in PRIME, read in STEPS
        self.source_value: torch.Tensor | None = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """hidden_states [B, S, D] (the whole sequence, or one half in PRIME / STEPS), rotary_emb for those
        tokens -> [B, S, D]."""
        if self._parallel_config is not None and self.mode == FULL:
            raise NotImplementedError("one-way attention over the whole sequence cannot run split for context "
                                      "parallelism (source and target queries attend over different keys); it runs "
                                      "split inside the source KV cache (Track2ViewPipeline.denoise), or use "
                                      "attention full")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        out = self._attention(query, key, value).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query/key/value [B, S, heads, d] -> [B, S, heads, d]."""
        if self.mode == PRIME:
            self.source_key, self.source_value = key, value
            return self._attend(query, key, value)
        if self.mode == STEPS:
            return self._attend(query, torch.cat([self.source_key, key], dim=1),
                                torch.cat([self.source_value, value], dim=1))
        n = query.shape[1] // 2  # the source tokens: the first half
        return torch.cat([self._attend(query[:, :n], key[:, :n], value[:, :n]), self._attend(query[:, n:], key, value)],
                         dim=1)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return dispatch_attention_fn(query, key, value, backend=self._attention_backend,
                                     parallel_config=self._parallel_config)


def set_attention(transformer, attention: str) -> None:
    """Give every block's self-attention of a `WanTransformer3DModel` the processor of `attention` (keeping the
    attention backend and the context-parallel config set on it)."""
    check_attention(attention)
    for block in transformer.blocks:
        old = block.attn1.processor
        processor = OneWayAttnProcessor() if attention == "one_way" else WanAttnProcessor()
        processor._attention_backend = getattr(old, "_attention_backend", None)
        processor._parallel_config = getattr(old, "_parallel_config", None)
        block.attn1.set_processor(processor)


def one_way_processors(transformer) -> list[OneWayAttnProcessor]:
    """The blocks' one-way processors, in block order (empty with full attention)."""
    return [b.attn1.processor for b in transformer.blocks if isinstance(b.attn1.processor, OneWayAttnProcessor)]
