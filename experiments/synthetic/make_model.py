r"""The experiment's Wan-2.1 directory (diffusers layout): the trained autoencoder, a random-init transformer of
model.json's small Wan config (the from-scratch starting point of every arm), the tiny UMT5 text encoder and its
word-level tokenizer (track2view.testing.tiny), Wan's UniPC scheduler.

    python experiments/synthetic/make_model.py --vae RUN/vae --config model.json --out RUN/wan [--seed 0] [--patch 2]

`--patch P` overrides the config's spatial patch (1 x P x P): the latents, and so the autoencoder and the curated
data, are the same for every patch; only the token grid changes (32 x 32 latents: 8 x 8 tokens at 4, 16 x 16 at 2,
Wan-2.1's own patch).

The text encoder stays random: the scenes' captions carry no camera information, and every arm gets the same
prompt embeddings, so it cannot favour one. Written atomically; an existing directory is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def make_model(vae_dir: str | Path, config: dict, out: str | Path, seed: int = 0, patch: int | None = None) -> Path:
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    from track2view.inference.pipeline import default_scheduler
    from track2view.io import atomic_directory
    from track2view.testing.tiny import tiny_text_encoder, tiny_tokenizer

    out = Path(out)
    if (out / "model_index.json").is_file():
        return out
    transformer_config = dict(config["transformer"])
    if patch is not None:
        transformer_config["patch_size"] = [transformer_config["patch_size"][0], patch, patch]
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**transformer_config)
    pipe = WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=tiny_text_encoder(seed),
                       vae=AutoencoderKLWan.from_pretrained(vae_dir), scheduler=default_scheduler(),
                       transformer=transformer)
    with atomic_directory(out, "synthetic-wan") as tmp:
        pipe.save_pretrained(tmp)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True, help="the trained autoencoder (autoencoder.py --out)")
    p.add_argument("--config", required=True, help="model.json: its 'transformer' entry")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch", type=int, default=None, help="spatial patch size (default: the config's)")
    a = p.parse_args(argv)
    if a.patch is not None and a.patch < 1:
        p.error(f"--patch must be a positive integer, got {a.patch}")
    print(make_model(a.vae, json.loads(Path(a.config).read_text()), a.out, a.seed, a.patch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
