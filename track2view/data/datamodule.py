"""`Track2ViewDataModule`: the LightningDataModule over stage-2 shards (plain typed args for LightningCLI).

Resume guarantee (honest version): the training stream samples shards with replacement and shuffles in a
buffer, so there is no exact "position" to restore. The data module counts the samples it has handed to
Lightning (`samples_fetched`; Lightning prefetches one batch, so it leads the optimizer steps by a batch);
the count is saved in the checkpoint (`state_dict`) and, on resume, the stream is re-seeded with
(seed, samples fetched). A resumed run therefore does not replay the batches the run started with; it is
not the bit-exact continuation of the interrupted stream either (shuffle buffers and prefetched batches
are not checkpointed). Two runs with the same seed and the same resume points see the same data.
"""

from __future__ import annotations

import lightning as L
import webdataset as wds

from track2view.conditioning import input_names
from track2view.data.loader import LoaderStats, make_loader


class _CountingLoader:
    """Iterate a DataLoader and count the samples handed out (the data position saved in checkpoints)."""

    def __init__(self, loader, datamodule: "Track2ViewDataModule"):
        self.loader, self.datamodule = loader, datamodule

    def __iter__(self):
        for batch in self.loader:
            self.datamodule.samples_fetched += len(batch["key"])
            yield batch


class Track2ViewDataModule(L.LightningDataModule):
    """Batches of docs/architecture.md "Batch" from stage-2 shards.

    Args:
        train_shards: a directory of .tar shards, a brace pattern ('shards/shard-{000000..000099}.tar'), or
            several of those joined with '::'. Read resampled (infinite): train with `max_steps`.
        val_shards: the same for validation, read once per validation run (finite); None: no validation.
        batch_size: samples per batch and GPU (val_batch_size defaults to it).
        num_workers: DataLoader worker processes per GPU; shards are split over ranks and workers.
        num_tracks: tracks per sample after subsetting (random, if more) and padding (invalid tracks).
        max_text_len: prompt embeddings are zero-padded (or truncated) to this many tokens (Wan: 512).
        shuffle_buffer: raw samples held per worker for shuffling (training only; ~12 MB each at 480p).
        seed: base seed of shard sampling, shuffling and track subsets.
        persistent_workers, pin_memory, prefetch_factor: passed to the DataLoader.
        temporal_stride: the VAE's temporal compression (Wan: 4); tracks are kept at frames 0, 4, 8, ...
        latent_channels: latent channels every sample must have (Wan-2.1: 16).
        conditioning: the model's conditioning kind (linked from `model.conditioning` by train.py): the batches
            carry that kind's inputs (`tracks`, `cameras`, or neither) and the loader reads only their members.

    Skips are counted in `stats` / `val_stats` (LoaderStats); `loader_stats()` gives them for logging.
    """

    def __init__(self, train_shards: str, val_shards: str | None = None, batch_size: int = 1,
                 val_batch_size: int | None = None, num_workers: int = 4, num_tracks: int = 1152,
                 max_text_len: int = 512, shuffle_buffer: int = 32, seed: int = 0, persistent_workers: bool = True,
                 pin_memory: bool = True, prefetch_factor: int = 2, temporal_stride: int = 4,
                 latent_channels: int = 16, conditioning: str = "tracks"):
        super().__init__()
        self.save_hyperparameters()
        self.samples_fetched = 0
        self.stats: LoaderStats | None = None  # training counters (created with the train loader)
        self.val_stats: LoaderStats | None = None

    def _loader(self, shards: str, *, resampled: bool, batch_size: int, seed: int, stats: LoaderStats):
        h = self.hparams
        return make_loader(shards, batch_size=batch_size, num_tracks=h.num_tracks, num_workers=h.num_workers,
                           max_text_len=h.max_text_len, resampled=resampled, shuffle_buffer=h.shuffle_buffer,
                           seed=seed, persistent_workers=h.persistent_workers, pin_memory=h.pin_memory,
                           prefetch_factor=h.prefetch_factor, temporal_stride=h.temporal_stride,
                           latent_channels=h.latent_channels, stats=stats, inputs=input_names(h.conditioning))

    def train_dataloader(self):
        self.stats = LoaderStats(self.hparams.num_workers)
        seed = wds.utils.make_seed(self.hparams.seed, self.samples_fetched)  # resume re-seeds by position
        loader = self._loader(self.hparams.train_shards, resampled=True, batch_size=self.hparams.batch_size,
                              seed=seed, stats=self.stats)
        return _CountingLoader(loader, self)

    def val_dataloader(self):
        if not self.hparams.val_shards:
            return []
        self.val_stats = LoaderStats(self.hparams.num_workers)
        return self._loader(self.hparams.val_shards, resampled=False, seed=self.hparams.seed, stats=self.val_stats,
                            batch_size=self.hparams.val_batch_size or self.hparams.batch_size)

    def loader_stats(self) -> dict[str, int]:
        """Counters for logging, e.g. {'train/samples': .., 'train/skipped': .., 'val/non_finite': ..}."""
        out = {}
        for prefix, stats in (("train", self.stats), ("val", self.val_stats)):
            if stats is not None:
                out.update({f"{prefix}/{k}": v for k, v in stats.as_dict().items()})
        return out

    def state_dict(self) -> dict:
        return {"seed": self.hparams.seed, "samples_fetched": self.samples_fetched}

    def load_state_dict(self, state_dict: dict) -> None:
        self.samples_fetched = int(state_dict.get("samples_fetched", 0))
