"""Which sample each slot of the stream holds: a pure function of (seed, position), so a resumed run reads
exactly what the uninterrupted run would have read.

Training (`resampled`): global slot g = start + k * world_size + rank for the rank's k-th sample; epoch
e = g // S over the S indexed samples; g holds sample perm_e[g % S], perm_e a permutation seeded by (seed, e).
Every sample once per epoch, in a new order each epoch, whatever the number of ranks. A slot whose sample is
unusable takes a replacement drawn from (seed, g, attempt) until one is usable, so every batch is full and
its content depends on nothing but its position. Batch b of a rank is its slots [b B, (b + 1) B); DataLoader
worker w of W makes batches w, w + W, ... (the DataLoader takes them round-robin, so it yields 0, 1, 2, ...).
After b batches the global position is start + b B world_size: what the data module saves in checkpoints.

Validation: each sample once, in index order, split over ranks (sample i to rank i % world_size); an unusable
sample is dropped (its batch is shorter).
"""

from __future__ import annotations

import numpy as np

_REPLACE = 0x5EED  # separates the replacement draws' seeds from the permutations'


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Schedule:
    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, resampled: bool = True):
        if num_samples < 1:
            raise ValueError("the shards hold no samples")
        self.size, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.start, self.resampled = rank, world_size, start, resampled
        self._epoch, self._perm = None, None
        self._mine = None if resampled else np.arange(rank, num_samples, world_size)

    def batches(self, worker: int = 0, num_workers: int = 1):
        """The batch numbers worker `worker` makes: worker, worker + num_workers, ... (endless when resampled)."""
        b = worker
        while self.resampled or b * self.batch_size < len(self._mine):
            yield b
            b += num_workers

    def slots(self, b: int) -> range:
        """The rank-local slots of batch b."""
        end = (b + 1) * self.batch_size
        return range(b * self.batch_size, end if self.resampled else min(end, len(self._mine)))

    def sample(self, k: int, attempt: int = 0) -> tuple[int, int]:
        """(sample index, seed of its random draws) for the rank's slot k; attempt > 0: the attempt-th replacement."""
        if not self.resampled:
            return int(self._mine[k]), _seed(self.seed, k, self.rank)
        g = self.start + k * self.world_size + self.rank
        if attempt:
            return int(np.random.default_rng(_seed(self.seed, _REPLACE, g, attempt)).integers(self.size)), \
                _seed(self.seed, g, attempt)
        return int(self._permutation(g // self.size)[g % self.size]), _seed(self.seed, g, 0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng(_seed(self.seed, epoch)).permutation(self.size)
        return self._perm
