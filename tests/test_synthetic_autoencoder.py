"""experiments/synthetic/autoencoder.py: whole-length training clips, the per-frame held-out PSNR, fine-tuning with
--init (--seconds 0: as it is), and the refusals (an --init of another config, a clip longer than the videos,
nothing to train or measure); real subprocesses, tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "synthetic" / "autoencoder.py"
VAE = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2], "num_res_blocks": 1, "temperal_downsample": [True],
       "scale_factor_spatial": 2, "scale_factor_temporal": 2}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--device", "cpu", "--batch-size", "1"], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from track2view.synthetic import generate

    root = tmp_path_factory.mktemp("ae")
    for split, seed in (("train", 0), ("test", 2)):
        generate(root, scenes=1, cameras=2, height=16, frames=5, seed=seed, split=split)
    config = root / "model.json"
    config.write_text(json.dumps({"vae": VAE}))
    return root, config


def test_trains_on_whole_videos_and_reports_psnr_per_frame_then_fine_tunes(setup):
    root, config = setup
    common = ["--train", str(root / "train"), "--test", str(root / "test"), "--config", str(config), "--max-steps", "2"]
    proc = run(*common, "--out", str(root / "vae"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "vae" / "autoencoder.json").read_text())
    assert report["clip_frames"] == 5 and report["steps"] == 2 and report["init"] is None
    assert len(report["test_psnr_db_by_frame"]) == 5 and report["test_psnr_db"] > 0
    proc = run(*common, "--out", str(root / "tuned"), "--init", str(root / "vae"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((root / "tuned" / "autoencoder.json").read_text())["init"] == str(root / "vae")
    proc = run(*common, "--out", str(root / "as_is"), "--init", str(root / "tuned"), "--seconds", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    as_is = json.loads((root / "as_is" / "autoencoder.json").read_text())
    assert as_is["steps"] == 0 and as_is["test_psnr_db_by_frame"]
    tuned, kept = (load_file(str(root / d / "diffusion_pytorch_model.safetensors")) for d in ("tuned", "as_is"))
    assert tuned.keys() == kept.keys() and all(torch.equal(tuned[k], kept[k]) for k in tuned)


def test_an_init_of_another_config_or_a_clip_longer_than_the_videos_is_refused(setup, tmp_path):
    root, config = setup
    common = ["--train", str(root / "train"), "--test", str(root / "test"), "--max-steps", "1"]
    other = tmp_path / "model.json"
    other.write_text(json.dumps({"vae": {**VAE, "z_dim": 8}}))
    first = run(*common, "--config", str(config), "--out", str(tmp_path / "vae"))
    assert first.returncode == 0, first.stderr[-3000:]
    for extra, needle in ((["--config", str(other), "--init", str(tmp_path / "vae")], "'z_dim': (8, 4)"),
                          (["--config", str(config), "--clip-frames", "9"], "at most the videos' 5 frames"),
                          (["--config", str(config), "--seconds", "0"], "no autoencoder to measure")):
        proc = run(*common, *extra, "--out", str(tmp_path / "refused"))
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-3000:]
        assert not (tmp_path / "refused").exists()
