"""The training loader: stage-2 shards (docs/architecture.md "Shards") -> batches ("Batch").

    shard list (resampled for training, finite for validation)
      -> split_by_node -> split_by_worker -> tar samples (a broken shard is counted and skipped)
      -> shuffle buffer -> safe decode + validate + tracks at the latent stride (a bad sample is counted and skipped)
      -> batched + collated in the worker -> DataLoader(batch_size=None)

Every skip goes through `LoaderStats`: a warning and a counter in shared memory, so the counts of all
DataLoader workers are visible in the main process (`stats.as_dict()`, e.g. logged by a callback).
Nothing is unpickled: only the members the batch needs are read, and only schema's safe decoders decode them.
"""

from __future__ import annotations

import glob
import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from track2view.conditioning.camera import relative_camera_features
from track2view.data import schema
from track2view.tracks import PairedTracks
from track2view.video_size import latent_frames

log = logging.getLogger(__name__)

REQUIRED = (schema.SOURCE_LATENTS, schema.TARGET_LATENTS, schema.PROMPT_EMBEDS)
# The shard member behind each conditioning input (track2view/conditioning/): the loader reads only those the
# configured kind needs, and never the videos.
INPUT_MEMBERS = {"tracks": schema.TRACKS, "cameras": schema.CAMERAS}


class BadSample(ValueError):
    """A sample that cannot be used; `reason` is one of LoaderStats.SKIP_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class LoaderStats:
    """Counters shared by the DataLoader workers and readable in the main process.

    `samples` counts samples that passed validation, `shards` shards read to the end; every other
    counter is a reason for a skip. The counts live in a shared-memory tensor with one row per process
    (main process: row 0, DataLoader worker i: row i + 1), so every row has a single writer and no lock
    is needed; it works with fork, spawn and forkserver workers. Create it before the workers start.
    """
    SKIP_REASONS = ("unreadable_shard", "decode_error", "missing_member", "bad_shape", "non_finite", "frame_count")
    NAMES = ("samples", "shards") + SKIP_REASONS
    WARN_FIRST, WARN_EVERY = 20, 1000  # per reason and process: warn for the first ones, then every n-th

    def __init__(self, num_workers: int = 0, max_consecutive_skips: int = 1000):
        self._counts = torch.zeros(num_workers + 1, len(self.NAMES), dtype=torch.int64).share_memory_()
        self.max_consecutive_skips = max_consecutive_skips
        self._warned, self._consecutive = {}, 0

    def count(self, name: str, n: int = 1) -> None:
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else info.id + 1
        if row >= len(self._counts):
            raise RuntimeError(f"LoaderStats was made for {len(self._counts) - 1} workers, used by worker {row - 1}; "
                               f"create it with LoaderStats(num_workers)")
        self._counts[row, self.NAMES.index(name)] += n
        if name == "samples":
            self._consecutive = 0

    def skip(self, reason: str, message: str) -> None:
        """Count a skipped sample or shard and warn (rate-limited per reason); raise when nothing usable
        arrives any more (an endless resampled stream of broken data would otherwise hang training)."""
        self.count(reason)
        self._consecutive += 1
        if self._consecutive >= self.max_consecutive_skips:
            raise RuntimeError(f"{self._consecutive} shards/samples in a row were unusable "
                               f"(last: {reason}: {message}); "
                               f"the data is broken or does not match the loader settings (latent_channels, "
                               f"temporal_stride); see the warnings above and loader stats {self.as_dict()}")
        seen = self._warned[reason] = self._warned.get(reason, 0) + 1
        if seen <= self.WARN_FIRST or seen % self.WARN_EVERY == 0:
            log.warning("skipped (%s, %d so far in this process): %s", reason, seen, message)

    def handler(self, exn: Exception) -> bool:
        """webdataset exception handler: count, warn, continue."""
        self.skip(getattr(exn, "reason", "decode_error"), str(exn))
        return True

    def as_dict(self) -> dict[str, int]:
        out = dict(zip(self.NAMES, self._counts.sum(0).tolist()))
        out["skipped"] = sum(out[r] for r in self.SKIP_REASONS)
        return out


# ---- shards --------------------------------------------------------------------------------------------
def resolve_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs from a directory (its *.tar), a brace pattern ('data/shard-{000..099}.tar'), a glob
    ('data/*.tar'), a '::'-joined list of those, or a list. Local paths must exist; URLs such as
    'pipe:...' are passed through. Directories and globs skip hidden files: `.shard-000001.tar.tmp123.tar`
    is the temporary file of a writer that was killed (track2view.io.atomic_path), not a shard."""
    specs = spec if isinstance(spec, (list, tuple)) else str(spec).split("::")
    urls = []
    for s in specs:
        s = str(s)
        if Path(s).is_dir():
            found = sorted(str(p) for p in Path(s).glob("*.tar") if not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"shard directory {s} holds no *.tar files; run data_curation.precompute")
            urls += found
        elif any(c in s for c in "*?["):
            urls += sorted(u for u in glob.glob(s) if not Path(u).name.startswith(".")) or [s]
        else:
            urls += wds.shardlists.expand_urls(s)
    missing = [u for u in urls if ":" not in u.split("/")[0] and not Path(u).is_file()]
    if missing or not urls:
        raise FileNotFoundError(f"shards not found: {missing[:5] or spec} (of {len(urls)}); give a directory of "
                                f".tar shards or a brace pattern such as 'shards/shard-{{000000..000009}}.tar'")
    return urls


def members_read(inputs: tuple[str, ...]) -> frozenset[str]:
    """The shard members a batch for conditioning `inputs` needs (latents, prompt, caption + the inputs')."""
    unknown = [k for k in inputs if k not in INPUT_MEMBERS]
    if unknown:
        raise ValueError(f"the loader cannot read conditioning inputs {unknown}; it knows {sorted(INPUT_MEMBERS)}")
    return frozenset(REQUIRED + (schema.CAPTION,) + tuple(INPUT_MEMBERS[k] for k in inputs))


class _Wanted:
    """Picklable member filter for the tar reader."""

    def __init__(self, members: frozenset[str]):
        self.members = members

    def __call__(self, fname: str) -> bool:
        return base_plus_ext(fname)[1] in self.members


def read_tar(url: str, select_files=None):
    """Raw samples {'__key__', '__url__', member: bytes} of one tar shard, in order (members filtered by
    `select_files(name)`, default all). A shard that breaks off mid-way yields the samples completed before
    the break, drops the partial one and then raises the read error.

    Hand-written around webdataset's tar iterator and grouping (rather than `wds.tarfile_to_samples`, whose
    grouping spans shards) so that a broken shard is one error the caller can count: the partial sample
    never leaks into the next shard's grouping. Also used by data_curation.precompute.
    """
    with gopen(url) as stream:
        yield from group_by_keys({**f, "__url__": url} for f in tar_file_iterator(stream, select_files=select_files))


def tar_samples(shards, stats: LoaderStats, members: frozenset[str]):
    """{'url': ...} -> raw samples (`read_tar`, `members` only); a broken shard is counted and skipped."""
    wanted = _Wanted(members)
    for shard in shards:
        url = shard["url"]
        try:
            yield from read_tar(url, select_files=wanted)
            stats.count("shards")
        except Exception as e:
            stats.skip("unreadable_shard", f"{url}: {e!r}")


# ---- samples -------------------------------------------------------------------------------------------
def _check_finite(name: str, a: np.ndarray, key: str) -> None:
    if not np.isfinite(a).all():
        raise BadSample("non_finite", f"{key}: {name} holds NaN or inf")


def prepare_sample(raw: dict, num_tracks: int, max_text_len: int, temporal_stride: int = 4,
                   latent_channels: int = 16, rng: torch.Generator | None = None,
                   inputs: tuple[str, ...] = ("tracks",)) -> dict:
    """Decode (safe decoders only), validate and shape one raw sample; raise BadSample naming the problem.

    Returns source_latents/target_latents [C, F, h, w] float32, prompt_embeds [max_text_len, D] float32
    (zero-padded or truncated), key, caption, and the conditioning `inputs`: tracks PairedTracks [2, F, num_tracks]
    at the latent stride (`_tracks`), cameras [F, 12] float32 (`_cameras`).
    """
    key = raw.get("__key__", "?")
    try:
        s = schema.decode_sample(raw)
    except ValueError as e:
        raise BadSample("decode_error", str(e)) from e
    missing = [m for m in REQUIRED + tuple(INPUT_MEMBERS[k] for k in inputs) if m not in s]
    if missing:
        raise BadSample("missing_member", f"{key} ({raw.get('__url__')}): missing members {missing}")

    src, tgt, text = s[schema.SOURCE_LATENTS], s[schema.TARGET_LATENTS], s[schema.PROMPT_EMBEDS]
    if src.ndim != 4 or src.shape[0] != latent_channels or src.shape != tgt.shape:
        raise BadSample("bad_shape", f"{key}: latents must be [{latent_channels}, F, h, w] and equal for source "
                                     f"and target, got {src.shape} and {tgt.shape}")
    if text.ndim != 2 or text.shape[0] < 1:
        raise BadSample("bad_shape", f"{key}: prompt_embeds must be [L, D] with L >= 1, got {text.shape}")
    for name, a in ((schema.SOURCE_LATENTS, src), (schema.TARGET_LATENTS, tgt), (schema.PROMPT_EMBEDS, text)):
        _check_finite(name, a, key)

    f = src.shape[1]
    conditioning = {}
    if "tracks" in inputs:
        conditioning["tracks"] = _tracks(s[schema.TRACKS], key, f, num_tracks, temporal_stride, rng)
    if "cameras" in inputs:
        conditioning["cameras"] = _cameras(s[schema.CAMERAS], key, f, temporal_stride)
    text = torch.from_numpy(text[:max_text_len].astype(np.float32))
    text = torch.cat([text, text.new_zeros(max_text_len - text.shape[0], text.shape[1])])
    return dict(source_latents=torch.from_numpy(src.astype(np.float32)),
                target_latents=torch.from_numpy(tgt.astype(np.float32)),
                prompt_embeds=text, key=key, caption=s.get(schema.CAPTION, ""), **conditioning)


def _frame_count_problem(t: int, f: int, temporal_stride: int, key: str, what: str) -> None:
    if (t - 1) % temporal_stride or latent_frames(t, temporal_stride) != f:
        raise BadSample("frame_count", f"{key}: {t} {what} frames do not match {f} latent frames "
                                       f"(need T = {temporal_stride}*(F-1)+1 = {temporal_stride * (f - 1) + 1})")


def _tracks(arrays: dict, key: str, f: int, num_tracks: int, temporal_stride: int, rng) -> PairedTracks:
    """PairedTracks [2, F, num_tracks] at the latent stride: all-invalid tracks dropped, then a random subset if
    more than num_tracks, then padded with invalid tracks; invalid entries set to uv 0 / depth 1 (no NaN)."""
    try:
        tracks = PairedTracks.from_numpy(arrays).validate()
    except (KeyError, ValueError) as e:
        reason = "non_finite" if "non-finite" in str(e) else "bad_shape"
        raise BadSample(reason, f"{key}: {schema.TRACKS}: {e}") from e
    _frame_count_problem(tracks.num_frames, f, temporal_stride, key, "track")
    tracks = tracks.at_latent_stride(temporal_stride)
    tracks = tracks.tracks(torch.nonzero(tracks.valid.flatten(0, 1).any(0)).flatten())
    if tracks.num_tracks > num_tracks:
        tracks = tracks.subsample_tracks(num_tracks, generator=rng)
    tracks = tracks.pad_tracks(num_tracks)
    invalid = ~tracks.valid
    return PairedTracks(tracks.uv.masked_fill(invalid[..., None], 0.0), tracks.depth.masked_fill(invalid, 1.0),
                        tracks.valid)


def _cameras(arrays: dict, key: str, f: int, temporal_stride: int) -> torch.Tensor:
    """[F, 12]: the target camera relative to the source camera at frame 0 per latent frame (cameras.npz c2w
    [2, T, 4, 4], metres)."""
    c2w = arrays.get("c2w")
    if c2w is None or c2w.ndim != 4 or c2w.shape[:1] != (2,) or c2w.shape[2:] != (4, 4):
        raise BadSample("bad_shape", f"{key}: {schema.CAMERAS}: c2w must be [2, T, 4, 4], got "
                                     f"{None if c2w is None else c2w.shape}")
    _check_finite("cameras c2w", c2w, key)
    _frame_count_problem(c2w.shape[1], f, temporal_stride, key, "camera")
    return torch.from_numpy(relative_camera_features(c2w[0], c2w[1], temporal_stride))


def collate(samples: list[dict]) -> dict:
    """Stack prepared samples into a batch (docs/architecture.md "Batch")."""
    shapes = {s["key"]: (tuple(s["source_latents"].shape), tuple(s["prompt_embeds"].shape)) for s in samples}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"samples of one batch have different latent / prompt shapes {shapes}; precompute all "
                         f"shards with one --height/--width/--num-frames and use one max_text_len")
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("source_latents", "target_latents", "prompt_embeds")}
    if "tracks" in samples[0]:
        batch["tracks"] = PairedTracks.stack([s["tracks"] for s in samples])
    if "cameras" in samples[0]:
        batch["cameras"] = torch.stack([s["cameras"] for s in samples])
    batch["key"] = [s["key"] for s in samples]
    batch["caption"] = [s["caption"] for s in samples]
    return batch


class _Prepare:
    """Picklable map stage holding a per-worker generator for track subsets (seeded on first use)."""

    def __init__(self, seed: int, **kwargs):
        self.seed, self.kwargs, self.rng = seed, kwargs, None

    def __call__(self, raw: dict) -> dict:
        if self.rng is None:
            self.rng = torch.Generator().manual_seed(wds.utils.make_seed(self.seed, wds.utils.pytorch_worker_seed()))
        return prepare_sample(raw, rng=self.rng, **self.kwargs)


# ---- pipeline ------------------------------------------------------------------------------------------
def make_dataset(shards: str | list[str], *, batch_size: int, num_tracks: int, max_text_len: int = 512,
                 resampled: bool = True, shuffle_buffer: int = 64, seed: int = 0, temporal_stride: int = 4,
                 latent_channels: int = 16, num_workers: int = 0, stats: LoaderStats | None = None,
                 inputs: tuple[str, ...] = ("tracks",)) -> wds.DataPipeline:
    """The webdataset pipeline yielding collated batches (each worker batches its own samples).

    resampled=True (training): every rank and worker draws shards with replacement from its own stream,
    seeded by (seed, rank, worker), forever; raw samples are shuffled in a buffer of `shuffle_buffer` per
    worker (about 12 MB each at 480x832x81). resampled=False (validation): each shard is read once, in
    order, split over ranks and workers (each sample once per pass), last batch partial.
    num_workers: the DataLoader workers that will run the pipeline (sizes the counters).
    inputs: the conditioning inputs the batches carry (`track2view.conditioning.input_names(kind)`).
    """
    stats = stats if stats is not None else LoaderStats(num_workers)
    urls = resolve_shards(shards)
    if resampled:
        source = [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    else:
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        if len(urls) < world_size * max(num_workers, 1):
            log.warning("%d shards for %d ranks x %d workers: some read nothing (uneven validation across ranks); "
                        "write smaller shards", len(urls), world_size, max(num_workers, 1))
        source = [wds.SimpleShardList(urls), wds.split_by_node]
    stages = [*source, wds.split_by_worker, partial(tar_samples, stats=stats, members=members_read(inputs))]
    if resampled and shuffle_buffer > 1:
        stages.append(partial(_shuffled, bufsize=shuffle_buffer, seed=seed))
    prepare = _Prepare(seed, num_tracks=num_tracks, max_text_len=max_text_len, temporal_stride=temporal_stride,
                       latent_channels=latent_channels, inputs=tuple(inputs))
    stages += [wds.map(prepare, handler=stats.handler), wds.map(partial(_counted, stats=stats)),
               wds.batched(batch_size, collation_fn=collate, partial=not resampled)]
    pipeline = wds.DataPipeline(*stages)
    pipeline.stats = stats
    return pipeline


def _shuffled(samples, bufsize: int, seed: int):
    """wds.shuffle with a seed of its own per rank and worker."""
    worker_seed = wds.utils.make_seed(seed, wds.utils.pytorch_worker_seed())
    return wds.shuffle(bufsize, initial=bufsize, seed=worker_seed)(samples)


def _counted(sample: dict, stats: LoaderStats) -> dict:
    stats.count("samples")
    return sample


def make_loader(shards: str | list[str], *, batch_size: int, num_tracks: int, num_workers: int = 4,
                max_text_len: int = 512, resampled: bool = True, shuffle_buffer: int = 64, seed: int = 0,
                persistent_workers: bool = True, pin_memory: bool = True, prefetch_factor: int = 2,
                temporal_stride: int = 4, latent_channels: int = 16, stats: LoaderStats | None = None,
                inputs: tuple[str, ...] = ("tracks",)) -> torch.utils.data.DataLoader:
    """A DataLoader over `make_dataset`; `loader.dataset.stats` holds the counters."""
    dataset = make_dataset(shards, batch_size=batch_size, num_tracks=num_tracks, max_text_len=max_text_len,
                           resampled=resampled, shuffle_buffer=shuffle_buffer, seed=seed,
                           temporal_stride=temporal_stride, latent_channels=latent_channels,
                           num_workers=num_workers, stats=stats, inputs=inputs)
    workers = dict(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor) if num_workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                       pin_memory=pin_memory and torch.cuda.is_available(),
                                       **workers)
