"""End to end on CPU: synthetic scenes -> curation (oracle tracker) -> shards -> latent shards -> loader batch."""

import numpy as np
import torch

from data_curation import precompute
from data_curation.curate import CurateConfig, curate
from track2view.data.loader import make_dataset, read_tar, resolve_shards
from track2view.data.schema import LATENT_MEMBERS
from track2view.synthetic import generate
from track2view.tracks import PairedTracks

H = W = 32
T = 9  # 4k+1 frames -> 3 latent frames


def test_scenes_to_training_batch(tmp_path, tiny_wan_dir):
    root = generate(tmp_path / "MultiCamVideo", scenes=2, cameras=3, height=H, frames=T, seed=0)
    manifest = curate(root, tmp_path / "tracks", CurateConfig(pairs_per_scene=2, num_tracks=64, min_valid_tracks=8,
                                                              samples_per_shard=2))
    assert manifest["rejected"] == [], manifest["rejected"]
    precompute.main(["--shards", str(tmp_path / "tracks"), "--out", str(tmp_path / "latents"),
                     "--model", str(tiny_wan_dir), "--height", str(H), "--width", str(W),
                     "--num-frames", str(T), "--device", "cpu", "--dtype", "float32"])

    for shard in resolve_shards(str(tmp_path / "latents")):
        for sample in read_tar(shard):
            assert set(LATENT_MEMBERS) <= set(sample), sorted(sample)  # the stage-2 schema of docs/architecture.md

    data = make_dataset(str(tmp_path / "latents"), batch_size=2, num_tracks=48, max_text_len=16, resampled=False,
                        shuffle_buffer=0)
    batches = list(data)
    assert sum(len(b["key"]) for b in batches) == 4  # 2 scenes x 2 pairs, nothing skipped
    b = batches[0]
    latent_frames = (T - 1) // 4 + 1
    assert b["source_latents"].shape == (2, 16, latent_frames, H // 8, W // 8)
    assert b["target_latents"].shape == b["source_latents"].shape
    assert b["prompt_embeds"].shape[:2] == (2, 16)
    tracks = b["tracks"]
    assert isinstance(tracks, PairedTracks)
    assert tracks.uv.shape == (2, 2, latent_frames, 48, 2)
    tracks.validate()
    # the oracle tracks are real: most tracks are valid in the source view at frame 0 (where half were queried)
    assert tracks.valid[:, 0, 0].float().mean() > 0.3
    assert all(torch.isfinite(b[k]).all() for k in ("source_latents", "target_latents", "prompt_embeds"))
    # source and target latents are of different videos (the cameras differ after frame 0)
    assert not torch.allclose(b["source_latents"][:, :, -1], b["target_latents"][:, :, -1])
    # frame 0 is the same image in both views (all cameras start at the same pose)
    np.testing.assert_allclose(b["source_latents"][:, :, 0].numpy(), b["target_latents"][:, :, 0].numpy(), atol=0.05)
