import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import torch

torch.set_num_threads(int(os.environ.get("T2V_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    """A complete tiny Wan-2.1 pipeline in diffusers layout (random init, real classes)."""
    from track2view.testing.tiny import save_tiny_wan

    return save_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-wan")


@pytest.fixture(scope="session")
def two_camera_scene(tmp_path_factory):
    """One synthetic scene, 2 cameras, 9 frames of 32x48 (the re-render tests' source video and ground truth)."""
    from track2view.synthetic import random_scene, write_scene

    spec = random_scene(seed=5, index=1, num_cameras=2, height=32, width=48, num_frames=9, lens="f24_aperture5")
    return write_scene(tmp_path_factory.mktemp("scenes"), spec, supersample=1)
