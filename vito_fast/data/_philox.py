"""Philox-4x32-10 counters for the view sampler, vectorised over NumPy arrays.

The C++ sampler (``csrc/sampler.cpp``) and the NumPy reference draw every random number from the
same counter layout, so a sample's parameters depend only on (seed, epoch, sample id, config):

    key     = (seed mod 2^32, seed div 2^32)
    counter = (stream << 16 | block, epoch, id mod 2^32, id div 2^32)

Each block gives 128 bits = two doubles in [0, 1), each from 53 bits:
``u = ((word1 << 32 | word0) >> 11) * 2^-53`` (and the same from words 2, 3).

Streams (view streams add the view index 0/1):

    0     timing:        block 0 -> (delta, first frame), block 1 -> (swap, unused)
    1, 2  crop shape:    block a -> (scale, log ratio) of crop attempt a
    3, 4  crop position: block 0 -> (top, left)
    5, 6  appearance:    block 0 (flip, jitter), 1 (grayscale, blur), 2 (solarize, blur sigma),
                         3 (brightness, contrast), 4 (saturation, hue),
                         5 (order step 3, order step 2), 6 (order step 1, unused)
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

STREAM_TIMING = 0
STREAM_CROP_SHAPE = 1
STREAM_CROP_POSITION = 3
STREAM_APPEARANCE = 5

_MULTIPLIER_0 = np.uint64(0xD2511F53)
_MULTIPLIER_1 = np.uint64(0xCD9E8D57)
_WEYL_0 = 0x9E3779B9
_WEYL_1 = 0xBB67AE85
_LOW_32 = np.uint64(0xFFFFFFFF)
_THIRTY_TWO = np.uint64(32)
_ELEVEN = np.uint64(11)
_TWO_TO_MINUS_53 = 2.0**-53

ArrayLike = Union[np.ndarray, int]


def philox4x32_10(counter: Tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike], key: Tuple[int, int]) -> Tuple[np.ndarray, ...]:
    """Philox-4x32-10 on broadcastable arrays of 32-bit counter words.

    counter: four arrays (any broadcastable shapes) of values in [0, 2^32); key: two ints.
    Returns four uint64 arrays (values < 2^32) of the broadcast shape.
    """
    words = [np.asarray(word, dtype=np.uint64) for word in counter]
    c0, c1, c2, c3 = np.broadcast_arrays(*words)
    key0, key1 = int(key[0]), int(key[1])
    for round_index in range(10):
        if round_index > 0:
            key0 = (key0 + _WEYL_0) & 0xFFFFFFFF
            key1 = (key1 + _WEYL_1) & 0xFFFFFFFF
        product0 = _MULTIPLIER_0 * c0  # < 2^64: exact in uint64
        product1 = _MULTIPLIER_1 * c2
        c0, c1, c2, c3 = (
            (product1 >> _THIRTY_TWO) ^ c1 ^ np.uint64(key0),
            product1 & _LOW_32,
            (product0 >> _THIRTY_TWO) ^ c3 ^ np.uint64(key1),
            product0 & _LOW_32,
        )
    return c0, c1, c2, c3


class SampleCounters:
    """The counters of a batch of samples: ``uniform_pair(stream, block)`` for all of them at once.

    sample_ids: (B,) int64, non-negative. ``block`` may be an int or an array that broadcasts
    against (B, 1) (e.g. ``np.arange(attempts)`` gives (B, attempts) draws).
    """

    def __init__(self, seed: int, epoch: int, sample_ids: np.ndarray) -> None:
        ids = np.asarray(sample_ids, dtype=np.int64).astype(np.uint64)
        self._key = (seed & 0xFFFFFFFF, seed >> 32)
        self._epoch = np.uint64(epoch)
        self._id_low = ids & _LOW_32
        self._id_high = ids >> _THIRTY_TWO

    def take(self, rows: np.ndarray) -> "SampleCounters":
        """The counters of the samples at positions ``rows`` only."""
        subset = object.__new__(SampleCounters)
        subset._key, subset._epoch = self._key, self._epoch
        subset._id_low, subset._id_high = self._id_low[rows], self._id_high[rows]
        return subset

    def uniform_pair(self, stream: int, block: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        """Two float64 arrays in [0, 1): (B,) for an int block, (B, len(block)) for a 1-D block."""
        block = np.asarray(block, dtype=np.uint64)
        id_low, id_high = self._id_low, self._id_high
        if block.ndim == 1:
            id_low, id_high = id_low[:, None], id_high[:, None]
        first_word = (np.uint64(stream) << np.uint64(16)) | block
        w0, w1, w2, w3 = philox4x32_10((first_word, self._epoch, id_low, id_high), self._key)
        return _to_unit(w0, w1), _to_unit(w2, w3)


def _to_unit(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (((high << _THIRTY_TWO) | low) >> _ELEVEN).astype(np.float64) * _TWO_TO_MINUS_53


def uniform_index(uniform: np.ndarray, last: ArrayLike) -> np.ndarray:
    """Integers uniform in [0, last] (int64) from doubles in [0, 1): min(floor(u·(last+1)), last)."""
    last = np.asarray(last, dtype=np.int64)
    scaled = np.floor(uniform * (last + 1).astype(np.float64))
    return np.minimum(scaled.astype(np.int64), last)
