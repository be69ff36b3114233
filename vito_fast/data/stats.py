"""``LoaderStats``: what a PairLoader counts, one record its parts add to.

The host preparation counts failed files, timeouts and worker restarts; the producer the time its
device thread waited for the host; the loader the samples served and the consumer's waiting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

__all__ = ["LoaderStats"]


@dataclass
class LoaderStats:
    """samples: served so far; replaced: samples served from a replacement clip; failed_files: file
    name (or, when the reads of an object holding many clips failed, the object's: a tar shard, a frame
    store's shard, once for all its clips) -> the first error seen for it; timeouts: samples given up after
    ``sample_timeout``; worker_restarts: decode workers replaced (hung or died). wait_seconds: time
    spent in ``next()`` waiting for a batch, out of elapsed_seconds since the first request;
    host_wait_seconds: time the device stage's thread waited for the host to finish a batch;
    decoder_fallbacks: times the loader left a video decoder that failed on frames PyAV decodes."""

    samples: int = 0
    replaced: int = 0
    failed_files: Dict[str, str] = field(default_factory=dict)
    timeouts: int = 0
    worker_restarts: int = 0
    wait_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    host_wait_seconds: float = 0.0
    decoder_fallbacks: int = 0

    @property
    def wait_share(self) -> float:
        """Share of the consumer's time spent waiting for data."""
        return self.wait_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0
