"""Frame store: how fast an index opens (version 1 JSON vs version 2 arrays) and what reading a pair costs.

    pytest benches/bench_frame_store.py --benchmark-only -s
    python benches/bench_frame_store.py        # one run of each, printed as a Markdown table

Open (an index made by ``synthetic_index``: 100 stored frames per clip, ten clips per video, 400
labels; no shards): ``FrameStoreSource(store)`` (what each rank's loader does) in a fresh Python
process, imports done before the clock starts. Providers open[v1|v2, 1M|10M frames]. extra_info:
open_s, rss_mb (RSS growth after opening) and peak_mb (growth of the peak RSS, reset before opening).
Reads (a store of CLIPS clips x 100 frames, ~0.5 GB, written with ShardWriter: payloads of 8-40 kB
framed as JPEGs), PAIRS random pairs (a clip, two of its frames) per round from a warm page cache:
  read[load]          FrameStoreSource.load per pair: two os.pread calls
  read[load_many]     FrameStoreSource.load_many on batches of BATCH pairs, 4 read threads
  read[load_many-1]   the same on 1 thread
  read[mmap-view]     what version 1 did: memoryview slices of the memory-mapped shards; only the
                      JPEG markers are touched, the page faults come later, in the decoder's copy
  read[mmap-copy]     baseline: the same, with the bytes copied out (what the decoder's copy costs)
  read[...-cold]      COLD_PAIRS pairs after evicting the shards from the page cache (posix_fadvise
                      DONTNEED): reads from the disk, where the read threads overlap the waits. Few
                      pairs, so that mmap's readahead seldom holds a later frame, as in a large store
extra_info: cpu_ms_per_pair (CPU time of the process, all threads, per pair), us_per_pair (wall).
Env: VITO_BENCH_V1_10M=0 skips version 1 at 10M frames (writing and opening it takes ~2-3 GB).
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from vito_fast.prepare.frame_store_write import ShardWriter
from vito_fast.data.frame_store_index import synthetic_index, write_index, write_version_1_index
from vito_fast.data.pair_sources import FrameStoreSource

CLIPS, FRAMES_PER_CLIP, PAIRS, COLD_PAIRS, BATCH = 200, 100, 4096, 256, 256
V1_AT_10M = os.environ.get("VITO_BENCH_V1_10M", "1") != "0"

OPEN_IN_CHILD = """
import json, sys, time
from vito_fast.data.pair_sources import FrameStoreSource

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # resets VmHWM to the current RSS
before = status("VmRSS:")
started = time.perf_counter()
source = FrameStoreSource(sys.argv[1])
seconds = time.perf_counter() - started
print(json.dumps({"open_s": seconds, "rss_mb": status("VmRSS:") - before, "peak_mb": status("VmHWM:") - before,
                  "frames": int(source.num_frames.sum())}))
"""


def make_index(folder: Path, version: int, frames: int) -> Path:
    header, arrays, labels = synthetic_index(frames // 100, 100, seed=0)
    writer = write_index if version == 2 else write_version_1_index
    return writer(folder, header, arrays, labels)


def measure_open(folder: Path) -> dict:
    """Open the store in a fresh process: seconds, RSS growth and peak RSS growth (MB)."""
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", OPEN_IN_CHILD, str(folder)], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


def make_read_store(folder: Path) -> Path:
    """CLIPS clips of random JPEG-framed payloads, ten clips per shard, with a version-2 index."""
    rng = np.random.default_rng(0)
    header, arrays, labels = synthetic_index(CLIPS, FRAMES_PER_CLIP, clips_per_shard=10, seed=0)
    offsets = np.empty_like(arrays["frame_offsets"])
    writer, shards = None, []
    for clip in range(CLIPS):
        if clip % 10 == 0:
            writer = ShardWriter(folder, f"shard-{clip // 10:05d}.tar")
        for k in range(FRAMES_PER_CLIP):
            row = clip * FRAMES_PER_CLIP + k
            size = int(arrays["frame_sizes"][row])
            payload = b"\xff\xd8" + rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes() + b"\xff\xd9"
            offsets[row], _ = writer.add_frame(f"{clip:08d}/{k:06d}.jpg", payload)
        if clip % 10 == 9:
            shards.append({"name": writer.name, "bytes": writer.finish()})
    arrays["frame_offsets"] = offsets
    return write_index(folder, {**header, "shards": shards}, arrays, labels)


class MmapReader:
    """The version-1 reader's way: shards memory-mapped once, a frame is a view into the mapping."""

    def __init__(self, source: FrameStoreSource, copy: bool):
        self.source, self.copy, self.maps = source, copy, {}

    def load(self, clip: int, frames) -> dict:
        store = self.source.store
        shard = int(store.arrays["shard"][clip])
        if shard not in self.maps:
            with open(store.path / store.shards[shard]["name"], "rb") as handle:
                self.maps[shard] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        inputs = {}
        for view, frame in enumerate(frames):
            row = int(store.arrays["first_frame"][clip]) + int(frame)
            offset, size = int(store.arrays["frame_offsets"][row]), int(store.arrays["frame_sizes"][row])
            data = memoryview(self.maps[shard])[offset: offset + size]
            if data[0] != 0xFF or data[1] != 0xD8 or data[-2] != 0xFF or data[-1] != 0xD9:
                raise ValueError("not a JPEG")
            inputs[f"image{view}"] = np.frombuffer(bytes(data) if self.copy else data, dtype=np.uint8)
        return inputs


def random_pairs(seed: int, count: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, CLIPS, size=count), rng.integers(0, FRAMES_PER_CLIP, size=(count, 2))


def evict_shards(folder: Path) -> None:
    """Drop the shards' pages from the page cache (they are clean: ShardWriter fsyncs them)."""
    for shard in folder.glob("shard-*.tar"):
        descriptor = os.open(shard, os.O_RDONLY)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(descriptor)


def read_round(folder: Path, provider: str, seed: int) -> dict:
    """Read random pairs with one provider; CPU ms and wall µs per pair."""
    count = PAIRS
    if provider.endswith("-cold"):
        evict_shards(folder)
        provider, count = provider[: -len("-cold")], COLD_PAIRS
    source = FrameStoreSource(folder, threads=1 if provider == "load_many-1" else 4)
    clips, frames = random_pairs(seed, count)
    reader = MmapReader(source, copy=provider == "mmap-copy") if provider.startswith("mmap") else source
    cpu, wall = time.process_time(), time.perf_counter()
    if provider.startswith("load_many"):
        for start in range(0, count, BATCH):
            rows = source.load_many(clips[start: start + BATCH], frames[start: start + BATCH])
            assert all(isinstance(row, dict) for row in rows)
    else:
        for clip, pair in zip(clips.tolist(), frames):
            reader.load(clip, pair)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    source.store.close()
    return {"cpu_ms_per_pair": 1e3 * cpu / count, "us_per_pair": 1e6 * wall / count, "pairs": count}


OPEN_CASES = [(version, frames) for frames in (1_000_000, 10_000_000) for version in (1, 2)]
READ_PROVIDERS = ["load", "load_many", "load_many-1", "mmap-view", "mmap-copy",
                  "load_many-cold", "load_many-1-cold", "mmap-copy-cold"]


@pytest.fixture(scope="module")
def read_store():
    folder = Path(tempfile.mkdtemp(prefix="vito_bench_frame_store_"))
    make_read_store(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("version,frames", OPEN_CASES, ids=[f"v{v}-{f // 10**6}M" for v, f in OPEN_CASES])
def test_open(benchmark, version, frames):
    if version == 1 and frames >= 10_000_000 and not V1_AT_10M:
        pytest.skip("VITO_BENCH_V1_10M=0")
    folder = Path(tempfile.mkdtemp(prefix="vito_bench_index_"))
    try:
        make_index(folder, version, frames)
        results = []
        benchmark.pedantic(lambda: results.append(measure_open(folder)), rounds=3, iterations=1)
        best = min(results, key=lambda result: result["open_s"])
        peak_mb = max(result["peak_mb"] for result in results)
        benchmark.extra_info.update(version=version, frames=frames, open_s=round(best["open_s"], 4),
                                    rss_mb=round(best["rss_mb"], 1), peak_mb=round(peak_mb, 1),
                                    index_mb=round(sum(p.stat().st_size for p in folder.iterdir()) / 1e6, 1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("provider", READ_PROVIDERS)
def test_read_pairs(benchmark, speedups, read_store, provider):
    results = []
    benchmark.pedantic(lambda: results.append(read_round(read_store, provider, len(results))), rounds=5,
                       warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(provider=provider, pairs=results[0]["pairs"],
                                cpu_ms_per_pair=round(min(r["cpu_ms_per_pair"] for r in results), 4),
                                us_per_pair=round(min(r["us_per_pair"] for r in results), 2))
    cache = "cold" if provider.endswith("-cold") else "warm"
    speedups.record(f"frame store: {results[0]['pairs']} pairs, {cache} page cache", provider, benchmark,
                    baseline=provider.startswith("mmap-copy"))


def _main() -> None:  # pragma: no cover - manual run: one measurement each, as a Markdown table
    import platform

    print(f"CPUs: {os.cpu_count()}; Python {platform.python_version()}; NumPy {np.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| index | frames | open s | RSS growth MB | peak RSS growth MB | index on disk MB |\n"
          "|---|---:|---:|---:|---:|---:|")
    for version, frames in OPEN_CASES:
        if version == 1 and frames >= 10_000_000 and not V1_AT_10M:
            print(f"| v{version} | {frames:,} | skipped | | | |")
            continue
        folder = Path(tempfile.mkdtemp(prefix="vito_bench_index_"))
        make_index(folder, version, frames)
        runs = [measure_open(folder) for _ in range(3)]
        best = min(runs, key=lambda run: run["open_s"])
        disk = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        print(f"| v{version} | {frames:,} | {best['open_s']:.3f} | {best['rss_mb']:.1f} | "
              f"{max(run['peak_mb'] for run in runs):.1f} | {disk:.1f} |")
        shutil.rmtree(folder, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="vito_bench_frame_store_"))
    make_read_store(folder)
    print("\n| read (random pairs) | pairs per round | CPU ms per pair | wall µs per pair |\n|---|---:|---:|---:|")
    for provider in READ_PROVIDERS:
        runs = [read_round(folder, provider, seed) for seed in range(6)][1:]
        print(f"| {provider} | {runs[0]['pairs']} | {min(r['cpu_ms_per_pair'] for r in runs):.4f} | "
              f"{min(r['us_per_pair'] for r in runs):.1f} |")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    _main()
