"""The export: what trained, in the inference format (docs/architecture.md "Trained checkpoint").

    <dir>/pytorch_lora_weights.safetensors   the LoRA in diffusers' format with its adapter metadata
                                             (`WanPipeline.load_lora_weights(dir)` reads it)
    <dir>/conditioning/                      the conditioning module (`save_pretrained`: config + safetensors)
    <dir>/transformer/                       only for a base trained as a whole (`train_base`, models trained from
                                             scratch): the trained WanTransformer3DModel in diffusers' layout
    <dir>/track2view.json                    `ExportInfo`: conditioning kind and config, base-model fingerprint,
                                             LoRA settings, attention, latent stride, number of tracks, training
                                             excerpt

`write_export` needs only the trained tensors (no base model); `ExportInfo.read` is the one place that
parses track2view.json, and what it returns travels to every consumer (pipeline, infer.py, evaluation).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from track2view.io import atomic_directory

INFO_NAME = "track2view.json"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CONDITIONING_SUBFOLDER = "conditioning"
TRAINED_BASE_SUBFOLDER = "transformer"
BASE_WEIGHT_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' name, so from_pretrained reads the folder
EXPORT_KIND = "track2view-export"  # the output marker of an export directory (track2view.io.atomic_directory)
FORMAT = 2

if TYPE_CHECKING:
    import torch
# The Wan config entries that decide whether a LoRA/conditioning fits a base model.
FINGERPRINT_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                    "text_dim", "freq_dim", "ffn_dim", "num_layers", "image_dim", "added_kv_proj_dim")


def init_defaults(cls: type) -> dict:
    """The default of every argument of `cls.__init__` that has one (a class's config defaults, without building it)."""
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def full_wan_config(config: dict) -> dict:
    """A (partial) `WanTransformer3DModel` config completed with the class's defaults, without building it."""
    from diffusers import WanTransformer3DModel

    return {**init_defaults(WanTransformer3DModel), **dict(config)}


def plain_config(config) -> dict:
    """A diffusers config without its bookkeeping entries (`_class_name`, `_diffusers_version`, ...)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def base_fingerprint(config) -> dict:
    """The base-model settings an export must match (FINGERPRINT_KEYS of a Wan transformer config), JSON-typed."""
    config = full_wan_config(dict(config))
    return json.loads(json.dumps({k: config.get(k) for k in FINGERPRINT_KEYS}))  # tuples -> lists


def fingerprint_differences(trained: dict, base: dict) -> dict:
    """{key: (checkpoint value, base value)} for every fingerprint key on which the two disagree."""
    return {k: (trained.get(k), base.get(k)) for k in FINGERPRINT_KEYS if trained.get(k) != base.get(k)}


@dataclass
class ExportInfo:
    """track2view.json: everything an export's consumer needs to know, read once (`ExportInfo.read`)."""

    conditioning: str  # the conditioning kind (track2view.conditioning.KINDS)
    conditioning_config: dict
    base_model: dict  # base_fingerprint of the Wan transformer it was trained on
    lora: dict | None  # LoraSettings fields; None: no LoRA (the base trained as a whole, `transformer`)
    latent_stride: int = 4
    num_tracks: int | None = None
    training: dict = field(default_factory=dict)  # checkpoint, step and the training settings of EXPORTED_HPARAMS
    format: int = FORMAT
    transformer: str | None = None  # subfolder holding the trained base; None: the base model is the user's
    attention: str = "full"  # self-attention it was trained with: "full" or "one_way" (track2view/model/one_way.py)

    @property
    def timestep_mode(self) -> str:
        """The flow-matching timestep mode it was trained with ("per_sample" when not recorded)."""
        return (self.training.get("flow_matching") or {}).get("timestep_mode") or "per_sample"

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "ExportInfo":
        path = Path(directory) / INFO_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a Track2View export (write one with "
                                    f"`train.py export`)")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not readable JSON ({e}); export the checkpoint again") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{path} is export format {raw.get('format') if isinstance(raw, dict) else '?'}, this "
                             f"version reads format {FORMAT}; export the training checkpoint again with `train.py "
                             f"export`")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    def check_base(self, base_config: dict, where: str) -> None:
        """Raise ValueError naming the differing settings when this export does not fit the base `base_config`."""
        diff = [f"{k} {a} vs {b}" for k, (a, b) in
                fingerprint_differences(self.base_model, base_fingerprint(base_config)).items()]
        if diff:
            raise ValueError(f"the export was trained for another base model than {where} (export vs model: "
                             f"{'; '.join(diff)}); pass the base model it was trained on")


@dataclass
class TrainedBase:
    """A base transformer trained as a whole: its state dict (plain Wan keys) and its Wan config."""

    state: dict[str, torch.Tensor]
    config: dict


def write_export(directory: str | os.PathLike, lora_state: dict[str, torch.Tensor], lora_metadata: dict,
                 conditioning, info: ExportInfo, base: TrainedBase | None = None) -> Path:
    """Write an export atomically. lora_state: peft state-dict keys without the adapter name
    (`blocks.0.attn1.to_q.lora_A.weight`), empty when there is no LoRA; lora_metadata: the peft
    `LoraConfig.to_dict()`; base: the trained base (`info.transformer` names its subfolder).

    An existing `directory` is replaced only if it is a previous export (track2view.io.atomic_directory).
    """
    from diffusers import WanPipeline
    from safetensors.torch import save_file

    if (base is None) != (info.transformer is None) or (not lora_state) != (info.lora is None):
        raise ValueError("write_export: the trained base / LoRA given must match info.transformer / info.lora")
    with atomic_directory(directory, EXPORT_KIND) as tmp:
        if lora_state:
            WanPipeline.save_lora_weights(tmp, transformer_lora_layers=lora_state, weight_name=LORA_WEIGHT_NAME,
                                          transformer_lora_adapter_metadata=lora_metadata)
        if base is not None:
            (tmp / info.transformer).mkdir()
            save_file({k: v.detach().contiguous().cpu() for k, v in base.state.items()},
                      str(tmp / info.transformer / BASE_WEIGHT_NAME))
            config = {"_class_name": "WanTransformer3DModel", **plain_config(base.config)}
            (tmp / info.transformer / "config.json").write_text(json.dumps(config, indent=2, default=list))
        conditioning.save_pretrained(tmp / CONDITIONING_SUBFOLDER)
        (tmp / INFO_NAME).write_text(json.dumps(asdict(info), indent=2, default=str))
    return Path(directory)


def read_trained_base(directory: str | os.PathLike, info: ExportInfo) -> dict[str, torch.Tensor]:
    """The trained base's state dict of an export that carries one (safetensors, never unpickled)."""
    from safetensors.torch import load_file

    path = Path(directory) / str(info.transformer) / BASE_WEIGHT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the export {directory} is incomplete; export it again")
    return load_file(str(path))


def read_lora_state(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The export's LoRA tensors with the `transformer.` prefix of diffusers' format removed."""
    from diffusers import WanPipeline

    state = WanPipeline.lora_state_dict(directory, weight_name=LORA_WEIGHT_NAME)
    prefix = "transformer."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
