"""Tiny random-init Wan-2.1 components of the real classes, saved as a diffusers-format directory.

Tests, the CPU demo and the benchmarks use these in place of the real weights, which cannot be
downloaded here. Everything goes through the same loading code as the real model:
`WanPipeline.from_pretrained(dir)` / `WanTransformer3DModel.from_pretrained(dir, subfolder="transformer")`.

The only hand-written piece is the tokenizer: a word-level `tokenizers` vocabulary wrapped in
`PreTrainedTokenizerFast`, because UMT5's sentencepiece model cannot be fetched offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Wan-2.1 architecture with every width shrunk; patch (1,2,2), 16 latent channels and the qk-norm
# variant stay as in the real model so that shapes and code paths are the real ones.
TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_TEXT_ENCODER = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                         relative_attention_num_buckets=8, relative_attention_max_distance=16,
                         feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
                         pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# Wan-2.1-T2V-1.3B / 14B shapes (reference/wan.md); used by benchmarks and configs.
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = dict(WAN_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)

_WORDS = ("a the of and in on with camera scene video moving room street car person tree house sky "
          "red green blue white black slowly fast left right up down view static dynamic object ball box").split()


def tiny_transformer(seed: int = 0, **overrides):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TINY_TRANSFORMER, **overrides})


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**TINY_VAE)


def tiny_text_encoder(seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(**TINY_TEXT_ENCODER))


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in _WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def save_tiny_wan(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a complete tiny Wan-2.1 T2V pipeline (diffusers layout) to `path` and return it.

    Idempotent: an existing complete directory is left as it is. Written to a temporary sibling and
    renamed (track2view.io.atomic_directory), so an interrupted call never leaves a half-written model behind.
    """
    from diffusers import WanPipeline

    from track2view.inference.pipeline import default_scheduler
    from track2view.io import atomic_directory

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    pipe = WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=tiny_text_encoder(seed), vae=tiny_vae(seed),
                       scheduler=default_scheduler(), transformer=tiny_transformer(seed))
    with atomic_directory(path, "tiny-wan") as tmp:
        pipe.save_pretrained(tmp)
    return path
