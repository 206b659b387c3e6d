r"""The experiment's Wan-2.1 directory (diffusers layout): the trained autoencoder, a random-init transformer of
model.json's small Wan config (the from-scratch starting point of every arm), the tiny UMT5 text encoder and its
word-level tokenizer (track2view.testing.tiny), Wan's UniPC scheduler.

    python experiments/synthetic/make_model.py --vae RUN/vae --config model.json --out RUN/wan [--seed 0]

The text encoder stays random: the scenes' captions carry no camera information, and every arm gets the same
prompt embeddings, so it cannot favour one. Written atomically; an existing directory is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def make_model(vae_dir: str | Path, config: dict, out: str | Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    from track2view.inference.pipeline import default_scheduler
    from track2view.io import atomic_directory
    from track2view.testing.tiny import tiny_text_encoder, tiny_tokenizer

    out = Path(out)
    if (out / "model_index.json").is_file():
        return out
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**config["transformer"])
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
    a = p.parse_args(argv)
    print(make_model(a.vae, json.loads(Path(a.config).read_text()), a.out, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
