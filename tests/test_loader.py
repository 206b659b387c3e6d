"""The WebDataset loader and the Lightning data module on small stage-2 shards (CPU)."""

import io
import pickle
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from data_fixtures import (object_npy_payload, pickle_payload, stage2_arrays, stage2_sample, truncate_in_member,
                           write_shard, write_stage2_shards)
from track2view.data import schema
from track2view.data.datamodule import Track2ViewDataModule
from track2view.data.loader import DataStreamError, make_loader, read_tar, resolve_shards
from track2view.data.tars import ShardReadError
from track2view.data.tarwalk import TarSource, walk
from track2view.tracks import PairedTracks

F, HW, N, L, D = 3, (4, 6), 10, 5, 32  # latent frames, latent grid, tracks, text tokens, text dim (fixture defaults)


def _keys(loader):
    return [k for batch in loader for k in batch["key"]]


def test_batches_match_the_shard_arrays(tmp_path):
    write_stage2_shards(tmp_path, num_shards=2, per_shard=3)
    loader = make_loader(tmp_path, batch_size=2, num_tracks=16, num_workers=0, max_text_len=8, resampled=False)
    batches = list(loader)
    assert [len(b["key"]) for b in batches] == [2, 2, 2]
    b = batches[0]
    assert b["source_latents"].shape == b["target_latents"].shape == (2, 16, F, *HW)
    assert b["source_latents"].dtype == torch.float32 and b["prompt_embeds"].shape == (2, 8, D)
    assert isinstance(b["tracks"], PairedTracks) and b["tracks"].depth.shape == (2, 2, F, 16)
    b["tracks"].validate()

    a = stage2_arrays(seed=0)  # the first sample of shard 0
    assert b["key"][0] == "f24-scene0-cam01-cam02" and b["caption"][0] == "a red car moving on the street"
    np.testing.assert_array_equal(b["source_latents"][0].numpy(), a["source_latents"].astype(np.float32))
    np.testing.assert_array_equal(b["prompt_embeds"][0, :L].numpy(), a["prompt_embeds"].astype(np.float32))
    assert (b["prompt_embeds"][0, L:] == 0).all()
    # tracks: frames 0, 4, 8; the never-valid track 0 dropped; the others kept in order, then invalid padding
    keep = np.arange(1, N)
    valid = a["tracks"]["valid"][:, ::4][:, :, keep]
    t = b["tracks"]
    np.testing.assert_array_equal(t.valid[0, :, :, :N - 1].numpy(), valid)
    np.testing.assert_array_equal(t.uv[0, :, :, :N - 1].numpy()[valid], a["tracks"]["uv"][:, ::4][:, :, keep][valid])
    assert not t.valid[0, :, :, N - 1:].any()
    assert (t.uv[0][~t.valid[0]] == 0).all() and (t.depth[0][~t.valid[0]] == 1).all()  # no NaN behind the mask

    # more tracks than num_tracks: a random subset of the valid ones, no padding needed
    t = next(iter(make_loader(tmp_path, batch_size=2, num_tracks=4, num_workers=0, resampled=False)))["tracks"]
    assert t.depth.shape == (2, 2, F, 4) and t.valid.any(1).any(1).all()


def _bad_shards(tmp_path):
    """Shard 0: 3 good. Shard 1: good, missing key, NaN tracks, wrong frame count, good + evil.pyd, object npy.
    Shard 2: truncated inside its second sample. Returns (keys expected to arrive, markers)."""
    good = write_stage2_shards(tmp_path, num_shards=1, per_shard=3)
    s = [stage2_sample(f"f24-scene1-cam01-cam{j:02d}", seed=10 + j) for j in range(6)]
    del s[1][schema.TARGET_LATENTS]
    nan = stage2_arrays(seed=11)["tracks"]
    nan["uv"][1, 2, 3] = np.nan
    nan["valid"][1, 2, 3] = True
    s[2][schema.TRACKS] = schema.encode_npz(nan)
    s[3][schema.TRACKS] = schema.encode_npz(stage2_arrays(latent_frames=F + 1, seed=13)["tracks"])  # 13 frames, F=3
    markers = tmp_path / "pwned-pyd", tmp_path / "pwned-npy"
    s[4]["evil.pyd"] = pickle_payload(markers[0])
    s[5][schema.PROMPT_EMBEDS] = object_npy_payload(markers[1])
    write_shard(tmp_path / "shard-000001.tar", s)
    t = [stage2_sample(f"f24-scene2-cam01-cam{j:02d}", seed=20 + j) for j in range(2)]
    truncate_in_member(write_shard(tmp_path / "shard-000002.tar", t), t[1]["__key__"], schema.SOURCE_LATENTS)
    arrive = [x["__key__"] for x in (*[{"__key__": f"f24-scene0-cam01-cam{j + 2:02d}"} for j in range(3)],
                                     s[0], s[4], t[0])]
    assert len(good) == 1
    return arrive, markers


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_samples_and_shards_are_skipped_and_counted(tmp_path, num_workers):
    arrive, markers = _bad_shards(tmp_path)
    for marker in markers:  # the payloads are live: loading them the unsafe way would create the marker
        probe = marker.with_name(marker.name + "-probe")
        pickle.loads(pickle_payload(probe))
        assert probe.exists()
    loader = make_loader(tmp_path, batch_size=2, num_tracks=8, num_workers=num_workers, resampled=False,
                         persistent_workers=False)
    assert sorted(_keys(loader)) == sorted(arrive)
    assert loader.dataset.stats.as_dict() == {
        "samples": 6, "shards": 2, "unreadable_shard": 1, "decode_error": 1, "missing_member": 1, "bad_shape": 0,
        "bad_dtype": 0, "non_finite": 1, "frame_count": 1, "shape_mismatch": 0, "damaged_shards": 1,
        "duplicate_key": 0, "skipped": 5}
    assert not any(m.exists() for m in markers)


def test_schema_decoder_never_unpickles(tmp_path):
    markers = tmp_path / "a", tmp_path / "b"
    raw = {"__key__": "k", "evil.pyd": pickle_payload(markers[0]), "x.pickle": pickle_payload(markers[0]),
           "prompt_embeds.npy": object_npy_payload(markers[1])}
    with pytest.raises(ValueError, match="prompt_embeds.npy"):
        schema.decode_sample(raw)
    del raw["prompt_embeds.npy"]
    assert schema.decode_sample(raw) == {"__key__": "k"}
    assert not any(m.exists() for m in markers)


def test_workers_split_shards_each_sample_once_per_epoch(tmp_path):
    write_stage2_shards(tmp_path, num_shards=4, per_shard=3)
    loader = make_loader(str(tmp_path / "shard-{000000..000003}.tar"), batch_size=2, num_tracks=8, num_workers=2,
                         resampled=False, persistent_workers=True)
    for _ in range(2):
        keys = _keys(loader)
        assert len(keys) == 12 and len(set(keys)) == 12
    assert loader.dataset.stats.as_dict()["samples"] == 24


def test_resampled_mode_is_infinite_and_seeded(tmp_path):
    write_stage2_shards(tmp_path, num_shards=2, per_shard=3)

    def first_keys(seed, n=10):
        it = iter(make_loader(tmp_path, batch_size=2, num_tracks=8, num_workers=0, seed=seed, shuffle_buffer=4))
        return [k for _ in range(n) for k in next(it)["key"]]

    keys = first_keys(0)
    assert len(keys) == 20 and set(keys) == {f"f24-scene{i}-cam01-cam{j + 2:02d}" for i in range(2) for j in range(3)}
    assert first_keys(0) == keys and first_keys(1) != keys


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_stream_of_only_broken_data_raises_instead_of_hanging(tmp_path, num_workers):
    write_shard(tmp_path / "shard-000000.tar", [{**stage2_sample("k"), schema.TRACKS: b"not an npz"}])
    loader = make_loader(tmp_path, batch_size=1, num_tracks=4, num_workers=num_workers, resampled=True,
                         persistent_workers=False)
    with pytest.raises(DataStreamError) as e:
        next(iter(loader))
    assert str(e.value).startswith("1000 samples in a row were unusable (last: decode_error")  # no worker traceback
    assert "Traceback" not in str(e.value)
    assert loader.dataset.stats.as_dict()["decode_error"] == 1000


def test_shard_specs(tmp_path):
    paths = [str(p) for p in write_stage2_shards(tmp_path, num_shards=3, per_shard=1)]
    assert resolve_shards(tmp_path) == resolve_shards(str(tmp_path / "*.tar")) == paths
    assert resolve_shards(f"{paths[2]}::{tmp_path}/shard-{{000000..000001}}.tar") == [paths[2], *paths[:2]]


def test_a_killed_writers_temporary_file_is_not_a_shard(tmp_path):
    (path,) = [str(p) for p in write_stage2_shards(tmp_path, num_shards=1, per_shard=1)]
    # the name track2view.io.atomic_path gives the temporary file of a writer that was SIGKILLed
    (tmp_path / ".shard-000001.tar.tmp4242.tar").write_bytes(b"half a shard")
    assert resolve_shards(tmp_path) == resolve_shards(str(tmp_path / "*.tar")) == [path]
    with pytest.raises(FileNotFoundError, match="shards not found"):
        resolve_shards(str(tmp_path / ".*.tar"))


def test_read_tar_yields_the_complete_samples_of_a_broken_shard_then_raises(tmp_path):
    samples = [stage2_sample(f"f24-scene0-cam01-cam{j:02d}", seed=j) for j in range(3)]
    path = truncate_in_member(write_shard(tmp_path / "shard-000000.tar", samples), samples[2]["__key__"],
                              schema.SOURCE_LATENTS)
    got = []
    with pytest.raises(ShardReadError, match="breaks off in sample 'f24-scene0-cam01-cam02'"):
        for raw in read_tar(str(path)):
            got.append(raw)
    assert [r["__key__"] for r in got] == [s["__key__"] for s in samples[:2]]
    assert got[1][schema.TRACKS] == samples[1][schema.TRACKS] and got[1]["__url__"] == str(path)
    only = next(read_tar(str(path), select_files=lambda name: name.endswith(".txt")))
    assert set(only) == {"__key__", "__url__", schema.CAPTION}


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_strict_tar_walk_reads_what_tarfile_reads(tmp_path, fmt):
    """ustar name prefixes, GNU long names, PAX path records, non-ASCII names, directories skipped; from a file
    (positioned reads) and from a stream alike."""
    long = ("d" * 60 + "/" + "e" * 70 + "/k.txt") if fmt != tarfile.USTAR_FORMAT else "a" * 90 + "/" + "b" * 90 + ".txt"
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in ((long, b"hello"), ("k.npy", b"x" * 1000), ("\u00fc-key.json", b"{}"), ("somedir", None)):
            info = tarfile.TarInfo(name)
            info.mtime, info.type = 1.5, tarfile.REGTYPE if data is not None else tarfile.DIRTYPE
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    with tarfile.open(path) as tar:
        expected = [(m.name, m.size, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    for seekable in (True, False):
        with open(path, "rb") as f:
            assert [(n, s, read()) for n, _, s, read in walk(TarSource(f, seekable))] == expected


def test_bad_shard_spec_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="shards not found"):
        make_loader(str(tmp_path / "shard-{000..001}.tar"), batch_size=1, num_tracks=4)
    with pytest.raises(FileNotFoundError, match="no \\*.tar"):
        make_loader(tmp_path, batch_size=1, num_tracks=4)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_stats_are_shared_with_worker_processes(tmp_path, context):
    arrive, _ = _bad_shards(tmp_path)
    loader = make_loader(tmp_path, batch_size=2, num_tracks=8, num_workers=2, resampled=False)
    loader.multiprocessing_context = context
    assert sorted(_keys(loader)) == sorted(arrive)
    assert loader.dataset.stats.as_dict()["skipped"] == 5


# ---- Lightning ---------------------------------------------------------------------------------------------
class _Consumer:
    """A minimal LightningModule that consumes batches (built lazily: lightning import inside)."""

    @staticmethod
    def make():
        import lightning as L

        class Consumer(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(()))
                self.seen = []

            def training_step(self, batch, _):
                assert batch["tracks"].valid.dtype == torch.bool
                self.seen += batch["key"]
                return (batch["source_latents"].mean() + batch["tracks"].uv.mean() - self.w) ** 2

            def validation_step(self, batch, _):
                self.seen += ["val:" + k for k in batch["key"]]

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Consumer()


def test_datamodule_trains_and_resumes_where_it_stopped(tmp_path):
    import lightning as L

    write_stage2_shards(tmp_path / "train", num_shards=2, per_shard=3)
    write_stage2_shards(tmp_path / "val", num_shards=1, per_shard=2)
    args = dict(train_shards=str(tmp_path / "train"), val_shards=str(tmp_path / "val"), batch_size=2, num_workers=0,
                num_tracks=8, max_text_len=8, seed=3)
    trainer_args = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=3, num_sanity_val_steps=0)
    dm, model = Track2ViewDataModule(**args), _Consumer.make()
    L.Trainer(max_steps=3, default_root_dir=tmp_path / "first", **trainer_args).fit(model, datamodule=dm)
    assert len([k for k in model.seen if not k.startswith("val:")]) == 6
    assert dm.position == 6  # the samples the 3 steps used, not the batch Lightning prefetched
    assert Counter(k for k in model.seen if k.startswith("val:")) == {"val:f24-scene0-cam01-cam02": 1,
                                                                       "val:f24-scene0-cam01-cam03": 1}
    assert dm.loader_stats()["train/samples"] >= 6 and dm.loader_stats()["val/skipped"] == 0
    (ckpt,) = (tmp_path / "first").rglob("*.ckpt")
    state = torch.load(ckpt, weights_only=True)["Track2ViewDataModule"]
    assert {k: state[k] for k in ("version", "seed", "position")} == {"version": 2, "seed": 3, "position": 6}

    straight = _Consumer.make()
    L.Trainer(max_steps=6, default_root_dir=tmp_path / "straight", **trainer_args).fit(
        straight, datamodule=Track2ViewDataModule(**args))
    resumed_dm, resumed = Track2ViewDataModule(**args), _Consumer.make()
    L.Trainer(max_steps=6, default_root_dir=tmp_path / "resumed", **trainer_args).fit(
        resumed, datamodule=resumed_dm, ckpt_path=ckpt)
    train_keys = lambda m: [k for k in m.seen if not k.startswith("val:")]  # noqa: E731
    assert resumed_dm.position == 12 and len(train_keys(resumed)) == 6
    assert train_keys(model) + train_keys(resumed) == train_keys(straight)  # the continuation, sample for sample
    keys = train_keys(straight)  # 12 samples = 2 epochs of the 6: every sample once per epoch
    assert Counter(keys[:6]) == Counter(keys[6:]) == {k: 1 for k in set(keys)} and keys[:6] != keys[6:]
