"""experiments/synthetic/make_model.py: the experiment's Wan directory from a trained autoencoder and model.json's
transformer config; `--patch P` changes only the transformer's spatial patch (the token grid), a bad one is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "synthetic" / "make_model.py"
VAE = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2], "num_res_blocks": 1, "temperal_downsample": [True],
       "scale_factor_spatial": 2, "scale_factor_temporal": 2}
TRANSFORMER = {"patch_size": [1, 4, 4], "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4,
               "out_channels": 4, "text_dim": 32, "freq_dim": 16, "ffn_dim": 32, "num_layers": 1,
               "rope_max_seq_len": 64}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    root = tmp_path_factory.mktemp("make_model")
    AutoencoderKLWan(**VAE).save_pretrained(root / "vae")
    (root / "model.json").write_text(json.dumps({"vae": VAE, "transformer": TRANSFORMER}))
    return root


def run(root: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--vae", str(root / "vae"), "--config", str(root / "model.json"),
                           "--out", str(root / out), *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)


def transformer_config(path: Path) -> dict:
    return json.loads((path / "transformer" / "config.json").read_text())


def test_patch_overrides_only_the_spatial_patch(setup):
    default, patched = run(setup, "default"), run(setup, "patch2", "--patch", "2")
    assert default.returncode == 0 and patched.returncode == 0, default.stderr[-2000:] + patched.stderr[-2000:]
    a, b = transformer_config(setup / "default"), transformer_config(setup / "patch2")
    assert list(a["patch_size"]) == [1, 4, 4] and list(b["patch_size"]) == [1, 2, 2]
    assert {k: v for k, v in a.items() if k != "patch_size"} == {k: v for k, v in b.items() if k != "patch_size"}
    assert (setup / "patch2" / "model_index.json").is_file() and (setup / "patch2" / "vae" / "config.json").is_file()


def test_a_patch_below_one_is_refused_and_nothing_is_written(setup):
    proc = run(setup, "refused", "--patch", "0")
    assert proc.returncode == 2 and "--patch must be a positive integer" in proc.stderr, proc.stderr[-2000:]
    assert not (setup / "refused").exists()
