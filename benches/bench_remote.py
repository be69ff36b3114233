"""PairLoader on a frame store read over HTTP with injected latency, against the same store on disk.

    python -m pytest benches/bench_remote.py --benchmark-only --benchmark-columns=min,median,rounds -s

Corpus: the loader bench's (VIDEOS VP9 files, 320x256, each listed REPEAT times; a frame store at
8 fps), served by the tests' loopback HTTP server with Range support (tests/range_server.py), which
sleeps LATENCY ms before every answer. Providers: local (the store on disk) and http-<ms> for 0, 20
and 50 ms. Every provider: batch BATCH pairs at 224 px, every augmentation, bf16, the default
device stage; one round = one epoch after a warm-up epoch. extra_info: pairs_per_s (fastest epoch),
requests_per_pair, bytes_per_pair (what the server sent, per pair served). Goal (issue 27): at 50 ms
at least 90 % of the local pairs/s.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bench_loader import BATCH, corpus  # noqa: F401  (corpus: the loader bench's fixture, shared)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from range_server import RangeServer  # noqa: E402


@pytest.fixture(scope="session")
def store(corpus):
    """The folder holding the loader bench's frame store (served as ``/store``)."""
    return Path(corpus["store"]).parent


@pytest.mark.parametrize("provider", ["local", "http-0", "http-20", "http-50"])
def test_remote_store(benchmark, store, provider):
    from vito_fast.data import LoaderConfig, PairLoader

    latency = 0.0 if provider == "local" else int(provider.split("-")[1]) / 1000.0
    config = LoaderConfig(image_size=224, dtype="bfloat16")
    with RangeServer(store, latency=latency) as server:
        source = str(store / "store") if provider == "local" else server.url + "/store"
        with PairLoader(source, BATCH, device="cpu", seed=0, config=config) as loader:
            list(loader)  # warm-up epoch
            before = len(server.requests)
            fastest = []

            def epoch():
                started = time.perf_counter()
                served = sum(len(batch["sample_ids"]) for batch in loader)
                fastest.append(served / (time.perf_counter() - started))
                return served

            served = benchmark.pedantic(epoch, rounds=3, iterations=1)
            requests = len(server.requests) - before
        sent = sum(size for size in getattr(server, "bytes_sent", [])) if hasattr(server, "bytes_sent") else None
    benchmark.extra_info.update(pairs_per_s=round(max(fastest), 1), latency_ms=latency * 1000,
                                requests_per_pair=round(requests / (3 * served), 2))
    print(f"{provider}: {max(fastest):.1f} pairs/s, {requests / (3 * served):.2f} requests per pair"
          + ("" if sent is None else f", {sent / (3 * served):.0f} bytes per pair"))
