"""Fixtures of the evaluation tests: tiny random-init networks of the real classes saved where the metrics load
them from, RealCam-Vid look-alike metadata (and a malicious one), small synthetic benchmarks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch

CLIP_IMAGE = 32  # tiny CLIP's input size; real CLIP ViT-B/32 is 224


def save_tiny_clip(path: Path, projection_dim: int = 16, seed: int = 0) -> Path:
    """A transformers CLIP directory: random-init CLIPModel, a byte-level CLIP tokenizer, a PIL processor config."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in bytes_to_unicode().values():
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=CLIP_IMAGE, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).save_pretrained(path)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": CLIP_IMAGE},
        "crop_size": {"height": CLIP_IMAGE, "width": CLIP_IMAGE}, "do_center_crop": True, "do_resize": True,
        "do_normalize": True, "do_rescale": True, "resample": 3, "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return path


def save_tiny_dino(path: Path, seed: int = 0) -> Path:
    """A transformers ViT directory (DINO ViT-B/16's class and patch size, tiny widths)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(path)
    return path


def save_inception(path: Path, seed: int = 0) -> Path:
    """Random (variance-preserving) FID Inception-v3 weights, the real architecture, as safetensors."""
    from safetensors.torch import save_file

    from track2view.eval.networks.inception import FIDInceptionV3

    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in FIDInceptionV3().state_dict().items()}, str(path))
    return path


# ---- RealCam-Vid look-alikes ------------------------------------------------------------------------------------
SOURCES = ("RealEstate10K", "MiraData9K", "DL3DV-10K")


def realcam_records(count: int, num_frames: int = 12, short_every: int = 4, seed: int = 0) -> list[dict]:
    """Dicts in RealCam-Vid's layout; every `short_every`-th clip is shorter than num_frames."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        t = num_frames // 2 if short_every and i % short_every == short_every - 1 else num_frames
        w2c = np.tile(np.eye(4), (t, 1, 1))
        w2c[:, 2, 3] = -np.linspace(0, 0.3, t)
        source = SOURCES[i % len(SOURCES)]
        records.append({"video_path": f"{source}/clip_{i:04d}.mp4", "short_caption": f"clip {i}",
                        "long_caption": f"a long caption of clip {i}",
                        "camera_intrinsics": np.array([0.9, 1.6, 0.5, 0.5], np.float32),
                        "camera_extrinsics": w2c.astype(np.float32), "align_factor": np.float64(rng.uniform(1, 3)),
                        "camera_scale": np.float32(1.0), "vtss_score": np.float32(rng.uniform())})
    return records


def write_realcam(path: Path, records) -> Path:
    """The metadata file as RealCam-Vid ships it: np.savez of one object array (a pickle inside the npz)."""
    array = np.empty(len(records), dtype=object)
    array[:] = records
    np.savez(path, array)
    return path


class _RunsCode:
    """Unpickling this calls os.system (creates `marker`): what a malicious metadata file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def write_malicious_realcam(path: Path, marker: Path) -> Path:
    """An npz whose object array holds a payload that runs a shell command when unpickled by a general unpickler."""
    import zipfile

    records = realcam_records(2)
    records[1]["align_factor"] = _RunsCode(marker)
    array = np.empty(len(records), dtype=object)
    array[:] = records
    header = {"descr": "|O", "fortran_order": False, "shape": array.shape}
    with zipfile.ZipFile(path, "w") as archive, archive.open("arr_0.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        pickle.dump(array, f, protocol=3)
    return path


# ---- pytest fixtures (import them into a test module to use them) --------------------------------------------
import pytest  # noqa: E402

SYN_FRAMES, SYN_HEIGHT, SYN_WIDTH = 9, 32, 48


@pytest.fixture(scope="session")
def synthetic_benchmark(tmp_path_factory) -> Path:
    """Two held-out synthetic scenes, three cameras each, 9 frames of 32x48: <root>/test."""
    from track2view.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), scenes=2, cameras=3, height=SYN_HEIGHT, width=SYN_WIDTH,
                    frames=SYN_FRAMES, split="test", seed=11)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip-vit-b-32")


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory) -> Path:
    return save_tiny_dino(tmp_path_factory.mktemp("dino") / "dino-vitb16")


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory) -> Path:
    return save_inception(tmp_path_factory.mktemp("inception") / "inception.safetensors")
