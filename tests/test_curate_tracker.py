"""Curation through SpatialTrackerV2's adapter, against the stand-in clone of track2view.testing.fake_spatialtracker.py:
its confidence lands in the shards, and a tracker that breaks query identity gets its pairs rejected with the
reason in the manifest."""

import numpy as np
import pytest
import webdataset as wds

from data_curation.curate import CurateConfig, curate
from track2view.data.schema import decode_sample
from track2view.synthetic import generate
from track2view.testing.fake_spatialtracker import fake_clone

T = 9


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("scenes"), scenes=1, cameras=2, height=32, width=48, frames=T, seed=4,
                    lenses=("f24_aperture5",))


def config(opts: dict) -> CurateConfig:
    return CurateConfig(tracker="spatialtracker_v2", tracker_options={**opts, "device": "cpu"}, pairs_per_scene=2,
                        num_tracks=24, samples_per_shard=2, min_valid_tracks=4)


def test_confidence_is_stored_per_view_track_and_frame(root, tmp_path):
    with fake_clone(tmp_path / "clone") as opts:
        manifest = curate(root, tmp_path / "out", config(opts))
    assert manifest["counts"]["accepted"] == 2 and manifest["rejected"] == []
    samples = [decode_sample(s) for s in wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"),
                                                        shardshuffle=False)]
    for s in samples:
        conf = s["tracks.npz"]["confidence"]
        assert conf.shape == (2, T, 24) and conf.dtype == np.float16
        np.testing.assert_allclose(conf, 0.8, atol=1e-3)
        np.testing.assert_allclose(s["tracking.npz"]["confidence"], 0.8, atol=1e-6)  # the source view's
        assert s["meta.json"]["tracker"] == "spatialtracker_v2" and s["meta.json"]["metric"] is False


@pytest.mark.parametrize("behaviour", ["reorder", "duplicate"])
def test_pairs_whose_tracks_break_query_identity_are_rejected_with_the_reason(root, tmp_path, behaviour):
    with fake_clone(tmp_path / "clone", behaviour=behaviour) as opts:
        manifest = curate(root, tmp_path / "out", config(opts))
    assert manifest["counts"]["accepted"] == 0 and manifest["counts"]["rejected"] == 2
    for r in manifest["rejected"]:
        assert r["reason"].startswith("query identity: ")
        assert "do not pass through their own query point" in r["reason"] or "same track" in r["reason"]
