r"""Assemble the shipped demo model from the experiment: a Wan directory and a conditioning-only export, float16.

    python experiments/synthetic/ship.py --model RUN/wan --export RUN/exports/tracks --out experiments/synthetic/shipped

    <out>/wan/      diffusers Wan-2.1 layout: the trained autoencoder, the `tracks` arm's trained transformer,
                    the tiny text encoder + tokenizer, the scheduler (what `--model` points at)
    <out>/tracks/   the export: its conditioning (track conditioner) and track2view.json (what `--checkpoint` is)

The arm's export carries its trained base (`train_base`); here the base moves into the Wan directory, so the
shipped pair is used like a pretrained Wan + a Track2View export. Weights are stored in float16 (they load into
float32 on CPU, `torch_dtype`) to keep the pair small enough to commit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch


def ship(model_dir: Path, export_dir: Path, out: Path) -> Path:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    from track2view.conditioning import load_conditioning
    from track2view.io import atomic_directory
    from track2view.model.export import CONDITIONING_SUBFOLDER, INFO_NAME, ExportInfo

    info = ExportInfo.read(export_dir)
    if not info.transformer:
        raise ValueError(f"{export_dir} carries no trained base (was it trained with model.train_base?)")
    with atomic_directory(out, "synthetic-shipped-model") as tmp:
        wan = tmp / "wan"
        wan.mkdir()
        shutil.copy(model_dir / "model_index.json", wan / "model_index.json")
        for name in ("tokenizer", "scheduler"):
            shutil.copytree(model_dir / name, wan / name)
        UMT5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder").half().save_pretrained(wan / "text_encoder")
        AutoencoderKLWan.from_pretrained(model_dir, subfolder="vae").half().save_pretrained(wan / "vae")
        WanTransformer3DModel.from_pretrained(export_dir, subfolder=info.transformer).half().save_pretrained(
            wan / "transformer")
        conditioning = load_conditioning(info.conditioning, export_dir / CONDITIONING_SUBFOLDER)
        conditioning.half().save_pretrained(tmp / "tracks" / CONDITIONING_SUBFOLDER)
        shipped = ExportInfo(**{**asdict(info), "transformer": None,
                                "training": {**info.training, "shipped_from": str(export_dir)}})
        (tmp / "tracks" / INFO_NAME).write_text(json.dumps(asdict(shipped), indent=2, default=str))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the experiment's Wan directory (make_model.py)")
    p.add_argument("--export", required=True, help="the arm's export (train.py export of a train_base run)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    print(ship(Path(a.model), Path(a.export), Path(a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
