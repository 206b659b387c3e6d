"""`Track2ViewDataModule`: the LightningDataModule over stage-2 shards (plain typed args for LightningCLI).

Resume is a continuation: the training stream is a schedule (track2view/data/schedule.py) in which the sample
of every position is a pure function of (seed, position), and its batches arrive in schedule order.
`on_before_batch_transfer`, which Lightning calls for the batch a step is about to use (not for the batch it
prefetched), advances the position by one full batch of every rank; the checkpoint saves it (`state_dict`), and
a resumed run starts its stream there (`load_state_dict` runs before `train_dataloader`). So a killed and
resumed run reads exactly the samples of the uninterrupted run, with the same track subsets, whatever the
DataLoader workers had read ahead. The position counts samples of all ranks, so a resume on another number of
devices or another batch size continues the same sequence of samples (the batches are then cut differently).
"""

from __future__ import annotations

import logging

import lightning as L

from track2view.conditioning import KINDS, input_names
from track2view.data.loader import LoaderStats, check_settings, make_loader

log = logging.getLogger(__name__)
STATE_VERSION = 2


class Track2ViewDataModule(L.LightningDataModule):
    """Batches of docs/architecture.md "Batch" from stage-2 shards.

    Args:
        train_shards: a directory of .tar shards, a brace pattern ('shards/shard-{000000..000099}.tar'), or
            several of those joined with '::'. Read endlessly (epoch after epoch, seeded order): train with
            `max_steps`.
        val_shards: the same for validation, read once per validation run (finite); None: no validation.
        batch_size: samples per batch and GPU (val_batch_size defaults to it).
        num_workers: DataLoader worker processes per GPU; batches are split over ranks and workers.
        num_tracks: tracks per sample after subsetting (random, if more) and padding (invalid tracks).
        max_text_len: prompt embeddings are zero-padded (or truncated) to this many tokens (Wan: 512).
        shuffle_buffer: no effect (the training order is a seeded permutation of all samples); kept so that
            older configs parse.
        seed: base seed of the sample order and track subsets.
        persistent_workers, pin_memory, prefetch_factor: passed to the DataLoader.
        temporal_stride: the VAE's temporal compression (Wan: 4); tracks are kept at frames 0, 4, 8, ...
        latent_channels: latent channels every sample must have (Wan-2.1: 16).
        conditioning: the model's conditioning kind (linked from `model.conditioning` by train.py): the batches
            carry that kind's inputs (`tracks`, `cameras`, or neither) and the loader reads only their members.
        allow_pipe_urls: allow `pipe:` shard URLs (webdataset runs them as shell commands); refused otherwise.

    Skips are counted in `stats` / `val_stats` (LoaderStats); `loader_stats()` gives them for logging.
    """

    def __init__(self, train_shards: str, val_shards: str | None = None, batch_size: int = 1,
                 val_batch_size: int | None = None, num_workers: int = 4, num_tracks: int = 1152,
                 max_text_len: int = 512, shuffle_buffer: int = 0, seed: int = 0, persistent_workers: bool = True,
                 pin_memory: bool = True, prefetch_factor: int = 2, temporal_stride: int = 4,
                 latent_channels: int = 16, conditioning: str = "tracks", allow_pipe_urls: bool = False):
        super().__init__()
        check_settings(batch_size=batch_size, num_tracks=num_tracks, max_text_len=max_text_len,
                       num_workers=num_workers, temporal_stride=temporal_stride, latent_channels=latent_channels,
                       seed=seed, prefetch_factor=prefetch_factor, prefix="data.")
        if val_batch_size is not None and val_batch_size < 1:
            raise ValueError(f"data.val_batch_size={val_batch_size} must be >= 1 (or unset: data.batch_size)")
        if conditioning not in KINDS:
            raise ValueError(f"data.conditioning={conditioning!r} is not one of {sorted(KINDS)}")
        self.save_hyperparameters()
        self.position = 0  # global training stream position: samples of all ranks consumed by finished steps
        self.stats: LoaderStats | None = None  # training counters (created with the train loader)
        self.val_stats: LoaderStats | None = None
        self._fingerprint = None

    def _loader(self, shards: str, *, resampled: bool, batch_size: int, stats: LoaderStats, start: int = 0):
        h, trainer = self.hparams, self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (None, None)
        return make_loader(shards, batch_size=batch_size, num_tracks=h.num_tracks, num_workers=h.num_workers,
                           max_text_len=h.max_text_len, resampled=resampled, seed=h.seed,
                           persistent_workers=h.persistent_workers, pin_memory=h.pin_memory,
                           prefetch_factor=h.prefetch_factor, temporal_stride=h.temporal_stride,
                           latent_channels=h.latent_channels, stats=stats, inputs=input_names(h.conditioning),
                           rank=rank, world_size=world, start=start, allow_pipe_urls=h.allow_pipe_urls)

    def train_dataloader(self):
        self.stats = LoaderStats(self.hparams.num_workers)
        loader = self._loader(self.hparams.train_shards, resampled=True, batch_size=self.hparams.batch_size,
                              stats=self.stats, start=self.position)
        fingerprint = loader.dataset.index.fingerprint()
        if self._fingerprint not in (None, fingerprint):
            log.warning("the training shards changed since the checkpoint was saved: the stream continues at "
                        "sample position %d of the new shards' order, which is not the interrupted run's",
                        self.position)
        self._fingerprint = fingerprint
        return loader

    def val_dataloader(self):
        if not self.hparams.val_shards:
            return []
        self.val_stats = LoaderStats(self.hparams.num_workers)
        return self._loader(self.hparams.val_shards, resampled=False, stats=self.val_stats,
                            batch_size=self.hparams.val_batch_size or self.hparams.batch_size)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Count the training batch a step is about to use (not the prefetched ones): the stream moves on by one
        batch of every rank (training batches are always full)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self.position += self.hparams.batch_size * trainer.world_size
        return batch

    def loader_stats(self) -> dict[str, int]:
        """Counters for logging, e.g. {'train/samples': .., 'train/skipped': .., 'val/non_finite': ..}."""
        out = {}
        for prefix, stats in (("train", self.stats), ("val", self.val_stats)):
            if stats is not None:
                out.update({f"{prefix}/{k}": v for k, v in stats.as_dict().items()})
        return out

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "seed": self.hparams.seed, "position": self.position,
                "shards": self._fingerprint}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("version") != STATE_VERSION:  # a checkpoint of the re-seeded stream: no position to keep
            log.warning("the checkpoint's data state %s predates exact resume: the data stream restarts at "
                        "position %d", state_dict, state_dict.get("samples_fetched", 0))
            self.position = int(state_dict.get("samples_fetched", 0))
            return
        if state_dict.get("seed") != self.hparams.seed:
            log.warning("data.seed is %s, the checkpoint's was %s: the resumed stream continues at position %d of "
                        "another order", self.hparams.seed, state_dict.get("seed"), state_dict["position"])
        self.position, self._fingerprint = int(state_dict["position"]), state_dict.get("shards")
