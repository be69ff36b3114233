"""The order part of a PairLoader: which clip every sample of a rank shows, a pure function of
(seed, epoch, step, rank, world size).

An epoch is a stream of clips: permutation 0 of the clips, then permutation 1, ... (``repeat`` r
uses ``default_rng((seed, epoch, TAG, r))``; r = 0 keeps the seed of single-permutation epochs).
Rank k takes stream positions ``[k * per_rank, k * per_rank + steps * B)`` with
``per_rank = max(num_clips // world_size, B)``, so a corpus that fills a batch per rank is visited
at most once per epoch (the remainder is dropped), and a smaller one continues into the next
permutations: its clips repeat within a batch, each time with new frames and augmentations,
because a sample's sampler id counts its repeat::

    sampler id = clip + num_clips * pair(repeat, attempt),  pair(r, a) = (r + a)(r + a + 1) / 2 + a

(``attempt`` > 0 for a replacement of a sample that could not be used; replacement clips come from
``default_rng((seed, epoch, position, attempt, REPL))``). pair(0, 0) = 0: an ordinary sample's id
is its clip index.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["SampleOrder"]

_PERMUTATION_TAG, _REPLACEMENT_TAG = 0x5045524D, 0x5245504C  # "PERM", "REPL"


def pair(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cantor's pairing: distinct non-negative pairs -> distinct non-negative integers."""
    total = first + second
    return total * (total + 1) // 2 + second


class SampleOrder:
    """The order of one rank's samples; ``steps`` batches of ``batch_size`` per epoch."""

    def __init__(self, num_clips: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        if num_clips < 1:
            raise ValueError("SampleOrder: the source holds no clips")
        self.num_clips, self.batch_size, self.seed = int(num_clips), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.per_rank = max(self.num_clips // self.world_size, self.batch_size)
        self.steps = self.per_rank // self.batch_size
        # the last two epochs' orders (reading ahead across an epoch's end asks for the next one early)
        self._cached: Tuple[Tuple[int, np.ndarray, np.ndarray], ...] = ()

    @property
    def repeats_per_batch(self) -> float:
        """How often a clip appears in one global batch (> 1 only for a corpus smaller than a batch)."""
        return self.batch_size * self.world_size / self.num_clips if self.num_clips < self.batch_size * self.world_size else 1.0

    def first_position(self, step: int) -> int:
        """Stream position of row 0 of ``step`` on this rank."""
        return self.rank * self.per_rank + step * self.batch_size

    def _permutation(self, epoch: int, repeat: int) -> np.ndarray:
        key = (self.seed, epoch, _PERMUTATION_TAG) if repeat == 0 else (self.seed, epoch, _PERMUTATION_TAG, repeat)
        return np.random.default_rng(key).permutation(self.num_clips)

    def epoch(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """(clips, repeats), each (steps * batch_size,) int64 and read-only: this rank's samples in order."""
        for cached in self._cached:
            if cached[0] == epoch:
                return cached[1], cached[2]
        positions = self.first_position(0) + np.arange(self.steps * self.batch_size, dtype=np.int64)
        repeats = positions // self.num_clips
        clips = np.empty_like(positions)
        for repeat in np.unique(repeats):
            chosen = repeats == repeat
            clips[chosen] = self._permutation(epoch, int(repeat))[positions[chosen] % self.num_clips]
        clips.flags.writeable = repeats.flags.writeable = False
        self._cached = ((epoch, clips, repeats),) + self._cached[:1]  # one tuple: safe to swap under other threads
        return clips, repeats

    def replacement(self, epoch: int, position: int, attempt: int) -> int:
        """The clip that replaces the sample at stream ``position`` on its ``attempt``-th try (>= 1)."""
        generator = np.random.default_rng((self.seed, epoch, position, attempt, _REPLACEMENT_TAG))
        return int(generator.integers(self.num_clips))

    def sampler_ids(self, clips: np.ndarray, repeats: np.ndarray, attempts: np.ndarray) -> np.ndarray:
        return clips + self.num_clips * pair(repeats, attempts)
