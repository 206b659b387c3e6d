"""The training loader: stage-2 shards (docs/architecture.md "Shards") -> batches ("Batch").

    shard list -> index of every sample (shards.py: header walk, duplicates dropped, damaged shards accounted)
      -> schedule (schedule.py: slot -> sample, a pure function of (seed, position); per rank, per worker)
      -> positioned reads of the members the batch needs -> safe decode + validate (samples.py)
      -> collate in the worker -> DataLoader(batch_size=None)

Why an index and a schedule rather than a shuffled stream: the checkpoint can then hold the stream's position
as one number, and a resumed run reads exactly what the uninterrupted run would have (no shuffle buffer or
prefetched batch to lose, no replay of what was read). The cost is one header walk over the shards at start
(no sample data) and a seek per sample; a sample is megabytes of contiguous members, so the reads stay large
and decoding dominates as before (docs/benchmarks.md, loader throughput).

Every skip goes through `LoaderStats` (stats.py: one rule for counting lost samples). Nothing is unpickled:
only the members the batch needs are read, and only schema's safe decoders decode them.
"""

from __future__ import annotations

import os

import torch

from track2view.data.samples import (INPUT_MEMBERS, REQUIRED, Reference, collate, members_read,  # noqa: F401
                                     prepare_sample, probe_reference)
from track2view.data.reader import SampleReader
from track2view.data.schedule import Schedule
from track2view.data.shards import build_index, resolve_shards  # noqa: F401
from track2view.data.stats import BadSample, DataStreamError, LoaderStats  # noqa: F401
from track2view.data.tars import read_tar  # noqa: F401  (the loader's names stay importable from here)

MAX_NUM_TRACKS = 16384  # the track conditioner's activations grow with it: ~3 GB per 1152 tracks at 21 frames
MAX_LOADER_MEMORY = 0.5  # share of this machine's memory the batches in flight may take


def check_settings(*, batch_size: int, num_tracks: int, max_text_len: int, num_workers: int = 0,
                   temporal_stride: int = 4, latent_channels: int = 16, seed: int = 0, prefetch_factor: int = 2,
                   prefix: str = "") -> None:
    """Raise ValueError naming the first loader setting out of range (one message per setting)."""
    p = prefix
    checks = [(batch_size >= 1, f"{p}batch_size={batch_size} must be >= 1"),
              (1 <= num_tracks <= MAX_NUM_TRACKS,
               f"{p}num_tracks={num_tracks} must be in [1, {MAX_NUM_TRACKS}]: the track conditioner's memory grows "
               f"with it (about 3 GB of activations per 1152 tracks at 21 latent frames, width 512; the paper "
               f"uses 1152)"),
              (max_text_len >= 1, f"{p}max_text_len={max_text_len} must be >= 1 (Wan: 512)"),
              (num_workers >= 0, f"{p}num_workers={num_workers} must be >= 0"),
              (prefetch_factor >= 1, f"{p}prefetch_factor={prefetch_factor} must be >= 1"),
              (temporal_stride >= 1, f"{p}temporal_stride={temporal_stride} must be >= 1 (Wan: 4)"),
              (latent_channels >= 1, f"{p}latent_channels={latent_channels} must be >= 1 (Wan-2.1: 16)"),
              (seed >= 0, f"{p}seed={seed} must be >= 0")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


class ShardDataset(torch.utils.data.IterableDataset):
    """Batches in schedule order (schedule.py): the DataLoader yields batch 0, 1, 2, ... of the rank's stream."""

    def __init__(self, index, schedule: Schedule, stats: LoaderStats, prepare: dict, allow_pipe_urls: bool = False):
        self.index, self.schedule, self.stats, self.prepare = index, schedule, stats, prepare
        self.allow_pipe_urls, self.reference = allow_pipe_urls, prepare.get("reference")

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        with SampleReader(self.index, self.allow_pipe_urls) as reader:
            for b in self.schedule.batches(worker, workers):
                samples, reference = [], self.reference  # (no probe was readable: the batch's first sample's shapes)
                for k in self.schedule.slots(b):
                    if (sample := self._sample(reader, k, reference)) is not None:
                        samples.append(sample)
                        reference = reference or Reference(tuple(sample["source_latents"].shape),
                                                           sample["prompt_embeds"].shape[1])
                if samples:
                    yield collate(samples)

    def _sample(self, reader: SampleReader, k: int, reference: Reference | None) -> dict | None:
        """Slot k's sample, or its replacements' until one is usable (validation: None for an unusable one)."""
        attempt = 0
        while True:
            i, seed = self.schedule.sample(k, attempt)
            try:
                sample = prepare_sample(reader.read(i), rng=torch.Generator().manual_seed(seed),
                                        **{**self.prepare, "reference": reference})
                self.stats.count("samples")
                return sample
            except Exception as e:  # noqa: BLE001 - BadSample, or a decoder failing in a way it did not foresee
                self.stats.skip(getattr(e, "reason", "decode_error"), str(e))
            if not self.schedule.resampled:
                return None
            attempt += 1


def make_dataset(shards: str | list[str], *, batch_size: int, num_tracks: int, max_text_len: int = 512,
                 resampled: bool = True, shuffle_buffer: int = 0, seed: int = 0, temporal_stride: int = 4,
                 latent_channels: int = 16, num_workers: int = 0, stats: LoaderStats | None = None,
                 inputs: tuple[str, ...] = ("tracks",), rank: int | None = None, world_size: int | None = None,
                 start: int = 0, allow_pipe_urls: bool = False) -> ShardDataset:
    """The dataset yielding collated batches (each worker batches its own samples).

    resampled=True (training): endless; epoch after epoch over every sample in a seeded order, split over ranks
    (schedule.py); a skipped sample is replaced, so batches are full. start: the global stream position to start
    at (a resumed run's, from the checkpoint). resampled=False (validation): each sample once, in order, split
    over ranks and workers, last batch partial. shuffle_buffer: no effect (the order is a permutation of all
    samples, no buffer is needed); kept so that older configs still parse.
    rank, world_size: this process's place among the training processes (default: torch.distributed's).
    num_workers: the DataLoader workers that will run it (sizes the counters).
    inputs: the conditioning inputs the batches carry (`track2view.conditioning.input_names(kind)`).
    allow_pipe_urls: read `pipe:` shard URLs (they run a shell command); refused otherwise.
    """
    check_settings(batch_size=batch_size, num_tracks=num_tracks, max_text_len=max_text_len, num_workers=num_workers,
                   temporal_stride=temporal_stride, latent_channels=latent_channels, seed=seed)
    stats = stats if stats is not None else LoaderStats(num_workers)
    index = build_index(resolve_shards(shards, allow_pipe_urls), members_read(tuple(inputs)), stats, allow_pipe_urls)
    if rank is None or world_size is None:
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world_size = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
    schedule = Schedule(len(index), batch_size, seed=seed, rank=rank, world_size=world_size, start=start,
                        resampled=resampled)
    with SampleReader(index, allow_pipe_urls) as reader:
        reference = probe_reference(index, reader)
    prepare = dict(num_tracks=num_tracks, max_text_len=max_text_len, temporal_stride=temporal_stride,
                   latent_channels=latent_channels, inputs=tuple(inputs), reference=reference)
    return ShardDataset(index, schedule, stats, prepare, allow_pipe_urls)


def check_memory(reference: Reference | None, *, batch_size: int, num_tracks: int, max_text_len: int,
                 in_flight: int) -> None:
    """Refuse settings whose batches in flight would not fit in this machine's memory (rather than be killed)."""
    if reference is None:
        return
    per_sample = 4 * (2 * int(torch.tensor(reference.latents).prod()) + max_text_len * reference.text_dim +
                      2 * reference.latents[1] * num_tracks * 4 + reference.latents[1] * 12)
    need, total = per_sample * batch_size * in_flight, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > MAX_LOADER_MEMORY * total:
        raise ValueError(f"batch_size={batch_size} with max_text_len={max_text_len} and num_tracks={num_tracks} "
                         f"needs {per_sample * batch_size / 2**30:.1f} GiB per batch, {need / 2**30:.1f} GiB for the "
                         f"{in_flight} batches in flight (workers x prefetch_factor + 2), more than "
                         f"{MAX_LOADER_MEMORY:.0%} of this machine's {total / 2**30:.0f} GiB; lower them")


def make_loader(shards: str | list[str], *, batch_size: int, num_tracks: int, num_workers: int = 4,
                max_text_len: int = 512, resampled: bool = True, shuffle_buffer: int = 0, seed: int = 0,
                persistent_workers: bool = True, pin_memory: bool = True, prefetch_factor: int = 2,
                temporal_stride: int = 4, latent_channels: int = 16, stats: LoaderStats | None = None,
                inputs: tuple[str, ...] = ("tracks",), rank: int | None = None, world_size: int | None = None,
                start: int = 0, allow_pipe_urls: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over `make_dataset`; `loader.dataset.stats` holds the counters."""
    check_settings(batch_size=batch_size, num_tracks=num_tracks, max_text_len=max_text_len, num_workers=num_workers,
                   prefetch_factor=prefetch_factor)
    dataset = make_dataset(shards, batch_size=batch_size, num_tracks=num_tracks, max_text_len=max_text_len,
                           resampled=resampled, seed=seed, temporal_stride=temporal_stride,
                           latent_channels=latent_channels, num_workers=num_workers, stats=stats, inputs=inputs,
                           rank=rank, world_size=world_size, start=start, allow_pipe_urls=allow_pipe_urls)
    check_memory(dataset.reference, batch_size=batch_size, num_tracks=num_tracks, max_text_len=max_text_len,
                 in_flight=num_workers * prefetch_factor + 2)
    workers = dict(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor) if num_workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                       pin_memory=pin_memory and torch.cuda.is_available(), **workers)
