"""A large manifest opened by the loader's source: read from JSON, against the kept index mapped.

    python -m pytest benches/bench_manifest.py --benchmark-only -s        # 1,000,000 clips (VITO_BENCH_CLIPS)

The manifest is generated (10 clips per file, 16 keyframes each with byte offsets, 400 labels), then
opened by ``VideoFileSource`` in fresh processes: "json" with no cache to keep an index in (every
rank and run of the tree before the index), "first" building and keeping the index (the first rank
of the first run), "kept" mapping it (every later open). Each figure is one process: seconds to
open and the resident memory it added (and its peak), printed as a table; the kept index's
pages are shared by the ranks of a node, so its resident memory is counted once per node.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLIPS = int(os.environ.get("VITO_BENCH_CLIPS", "1000000"))
OPEN = """
import json, resource, sys, time
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
import numpy  # noqa: F401  (imports outside the timing)
from vito_fast.data.pair_sources import VideoFileSource
base, started = rss(), time.perf_counter()
source = VideoFileSource(sys.argv[1])
seconds = time.perf_counter() - started
touched = int(source.num_frames.sum())  # every clip read once
print(json.dumps({"clips": len(source), "seconds": seconds, "rss_mb": (rss() - base) / 1e6,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3 - base / 1e6}))
"""


def write_big_manifest(path: Path, clips: int) -> None:
    with open(path, "w") as out:
        for index in range(clips):
            keyframes = list(range(0, 240, 15))
            record = {"path": f"videos/{index // 10:07d}.mp4", "num_frames": 50, "fps": 25.0, "width": 456,
                      "height": 256, "codec": "h264", "duration": 2.0, "clip_start": 2.0 * (index % 10),
                      "clip_end": 2.0 * (index % 10) + 2.0, "label": f"class{index % 400}", "keyframes": keyframes,
                      "keyframe_pts": [k * 512 for k in keyframes],
                      "keyframe_bytes": [k * 4000 for k in keyframes] + [960_000], "file_bytes": 1_000_000}
            out.write(json.dumps(record) + "\n")


def open_in_process(manifest: Path, cache: str) -> dict:
    environment = dict(os.environ, VITO_FAST_CACHE_DIR=cache)
    run = subprocess.run([sys.executable, "-c", OPEN, str(manifest)], env=environment, capture_output=True, text=True,
                         check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="manifest open")
def test_open_a_large_manifest_from_json_and_from_the_kept_index(benchmark, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    started = time.perf_counter()
    write_big_manifest(manifest, CLIPS)
    print(f"\nmanifest: {CLIPS:,} clips, {manifest.stat().st_size / 1e6:.0f} MB, written in "
          f"{time.perf_counter() - started:.0f} s")
    (tmp_path / "blocked").write_text("")  # a cache folder that cannot be made: nothing kept
    rows = {"json": open_in_process(manifest, str(tmp_path / "blocked" / "x")),
            "first": open_in_process(manifest, str(tmp_path / "cache"))}
    rows["kept"] = benchmark.pedantic(open_in_process, args=(manifest, str(tmp_path / "cache")), rounds=3,
                                      iterations=1)
    print("| open | clips | seconds | + resident MB | + peak MB |\n|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['clips']:,} | {row['seconds']:.2f} | {row['rss_mb']:.0f} | {row['peak_mb']:.0f} |")
    assert rows["kept"]["clips"] == rows["json"]["clips"] == CLIPS
