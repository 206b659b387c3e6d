"""Training a base as a whole (`model.train_base`, the from-scratch experiments) and starting a run from an export
(`model.init_from`): through train.py fit / export, into inference."""

from __future__ import annotations

import json

import pytest
import torch

import train
from test_training import fit, load_ckpt, make_config
from track2view.model.transformer import Track2ViewTransformer
from track2view.tracks import PairedTracks


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_fixtures import stage2_sample, write_shard

    root = tmp_path_factory.mktemp("latent-shards")
    write_shard(root / "shard-000000.tar", [stage2_sample(f"f24-scene0-cam01-cam{j + 2:02d}", seed=j) for j in range(3)])
    return root


def forward(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden, text = torch.randn(1, 16, 6, 4, 6, generator=g), torch.randn(1, 7, 32, generator=g)
    tracks = PairedTracks.from_projections(torch.rand(1, 2, 3, 10, 2, generator=g) * 0.9 + 0.05,
                                           torch.rand(1, 2, 3, 10, generator=g) + 1.0)
    with torch.no_grad():
        return model.eval()(hidden, torch.tensor([500.0]), text, tracks=tracks)


def test_train_base_trains_every_weight_and_the_export_carries_them(tmp_path, tiny_wan_dir, shards):
    root, out = tmp_path / "run", tmp_path / "export"
    assert fit(make_config(tmp_path / "c.yaml"), root, tiny_wan_dir, shards, "--model.train_base", "true") == 0
    state = load_ckpt(root / "checkpoints" / "last.ckpt")["state_dict"]
    assert "model.transformer.patch_embedding.weight" in state and not any("lora_" in k for k in state)
    initial = Track2ViewTransformer.from_pretrained(tiny_wan_dir, torch_dtype=torch.float32)
    moved = state["model.transformer.blocks.0.attn1.to_q.weight"] - initial.transformer.blocks[0].attn1.to_q.weight
    assert moved.abs().max() > 0, "the base did not train"

    assert train.main(["export", "--ckpt", str(root / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    info = json.loads((out / "track2view.json").read_text())
    assert info["lora"] is None and info["transformer"] == "transformer" and info["training"]["train_base"]
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (out / "pytorch_lora_weights.safetensors").exists()

    # Inference takes the trained base from the export, whatever the model directory's transformer holds.
    loaded = Track2ViewTransformer.from_trained(tiny_wan_dir, out, torch_dtype=torch.float32)
    torch.testing.assert_close(loaded.transformer.blocks[0].attn1.to_q.weight,
                               state["model.transformer.blocks.0.attn1.to_q.weight"].float())
    assert (forward(loaded) - forward(initial)).abs().max() > 1e-6

    # A run started from the export continues from its weights: step 0 computes what the export computes.
    from track2view.training.module import Track2ViewModule

    module = Track2ViewModule(model_path=str(tiny_wan_dir), torch_dtype="float32", train_base=True,
                              init_from=str(out), conditioning_config={"width": 64, "num_layers": 2, "num_heads": 4})
    module.configure_model()
    torch.testing.assert_close(forward(module.model), forward(loaded), rtol=0, atol=1e-6)
    assert all(p.requires_grad for p in module.model.transformer.parameters())


def test_init_from_refuses_another_kind_and_a_lora_under_train_base(tmp_path, tiny_wan_dir, shards):
    from track2view.training.module import ConfigError, Track2ViewModule

    root, out = tmp_path / "run", tmp_path / "export"
    assert fit(make_config(tmp_path / "c.yaml"), root, tiny_wan_dir, shards) == 0
    assert train.main(["export", "--ckpt", str(root / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    with pytest.raises(ConfigError, match="'tracks' export but model.conditioning is 'camera'"):
        Track2ViewModule(model_path=str(tiny_wan_dir), conditioning="camera", init_from=str(out))
    with pytest.raises(ConfigError, match="holds a LoRA but model.train_base"):
        Track2ViewModule(model_path=str(tiny_wan_dir), train_base=True, init_from=str(out))
    with pytest.raises(ConfigError, match="another model.conditioning_config .*num_layers: export 2, config 8"):
        Track2ViewModule(model_path=str(tiny_wan_dir), init_from=str(out),
                         conditioning_config={"width": 64, "num_heads": 4})
    with pytest.raises(ConfigError, match="not a Track2View export"):
        Track2ViewModule(model_path=str(tiny_wan_dir), init_from=str(tmp_path))
