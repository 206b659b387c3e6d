"""`LoaderStats`: the loader's one account of what arrived and what was lost, per sample.

The rule (per-sample loss accounting): every sample the stream was to deliver either arrives (`samples`) or is
counted under exactly one skip reason, once per time the stream reaches it; so a validation pass counts each
lost sample once, and a training stream that meets a lost sample in every epoch counts it in every epoch.
A sample is lost to a damaged shard as well as to a bad member: when a shard breaks off, the sample it breaks
in and, where the shard's manifest says how many it held, every sample after the break are in the stream as
lost samples and counted `unreadable_shard` when reached (track2view/data/shards.py). Two counts describe the
shards rather than the stream and are counted once, when the loader indexes them: `damaged_shards` (with a
warning that says how many complete samples the shard yielded and how many it should hold, when known) and
`duplicate_key` (samples dropped because their key was already in the shards: never read twice).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("track2view.data")


class BadSample(ValueError):
    """A sample that cannot be used; `reason` is one of LoaderStats.SKIP_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class DataStreamError(ValueError):
    """The stream delivers nothing usable any more (every sample in a long run was skipped).

    Raised in a DataLoader worker, it reaches the main process rebuilt from the worker's whole traceback text
    ("Caught DataStreamError in DataLoader worker process 0. Original Traceback ..."); only its own message is
    kept, so that the command line still reports one clear line."""

    def __init__(self, message: str):
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class LoaderStats:
    """Counters shared by the DataLoader workers and readable in the main process.

    `samples` counts samples that passed validation, `shards` the shards indexed without a problem; every
    SKIP_REASONS counter is a reason for a skipped sample; `damaged_shards`, `duplicate_key`: see the module
    docstring. The counts live in a shared-memory tensor with one row per process (main process: row 0,
    DataLoader worker i: row i + 1), so every row has a single writer and no lock is needed; it works with
    fork, spawn and forkserver workers. Create it before the workers start.
    """
    SKIP_REASONS = ("unreadable_shard", "decode_error", "missing_member", "bad_shape", "bad_dtype", "non_finite",
                    "frame_count", "shape_mismatch")
    SHARD_COUNTS = ("damaged_shards", "duplicate_key")
    NAMES = ("samples", "shards") + SKIP_REASONS + SHARD_COUNTS
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

    def warn(self, reason: str, message: str) -> None:
        """Log a warning for `reason`, rate-limited per reason and process."""
        seen = self._warned[reason] = self._warned.get(reason, 0) + 1
        if seen <= self.WARN_FIRST or seen % self.WARN_EVERY == 0:
            log.warning("%s (%d so far in this process): %s", reason, seen, message)

    def skip(self, reason: str, message: str) -> None:
        """Count a skipped sample and warn; raise DataStreamError when nothing usable arrives any more (an endless
        resampled stream of broken data would otherwise hang training)."""
        self.count(reason)
        self._consecutive += 1
        if self._consecutive >= self.max_consecutive_skips:
            raise DataStreamError(f"{self._consecutive} samples in a row were unusable (last: {reason}: {message}); "
                                  f"the data is broken or does not match the loader settings (latent_channels, "
                                  f"temporal_stride); see the warnings above and loader stats {self.as_dict()}")
        self.warn(f"skipped ({reason})", message)

    def as_dict(self) -> dict[str, int]:
        out = dict(zip(self.NAMES, self._counts.sum(0).tolist()))
        out["skipped"] = sum(out[r] for r in self.SKIP_REASONS)
        return out
