"""The video path: CPU cost and throughput of frame pairs straight from video files, against a baseline tree.

    python benches/bench_video_path.py                     # this tree against git ref 2682c66 (the loader before v2)
    python benches/bench_video_path.py --baseline none --files 8 --pairs 60
    pytest benches/bench_video_path.py --benchmark-only -s # the same, one pytest-benchmark entry

Corpus (generated once, not timed): FILES videos per format, SECONDS long at 25 fps, a panning
texture: 448x256 H.264 GOP 16, 448x256 VP9 GOP 16 (448: the baseline loader fails on rows that are not 32-byte multiples, e.g. 456), 640x360 H.264 GOP 60, scanned with
``prepare scan`` (so the manifest holds the keyframe index). Measured, each tree in a fresh process:

1. decode: the two frames of a pair (Δt uniform in [0, 2.5] s), one process, no augmentation, CPU
   ms per pair: *warm* (the file already open in the reader) and *cold* (every pair opens its file:
   a random order over a corpus much larger than the open-file cache), and what opening costs:
   ``av.open`` alone and open + the first frame;
2. loader: ``PairLoader`` (224 px, every augmentation, DALI on the CPU, batch 32) on the 256p H.264
   files (each listed 16 times) with 1 and 2 decode workers (the baseline: 1 and 2 threads): pairs/s of the fastest of 3
   epochs after a warm-up epoch, and CPU ms per pair of the trainer process plus its workers;
3. decoding alone with 1 and 2 decode processes (baseline: threads), the trainer's Python idle or busy
   (one more thread spinning, as a training loop holds the GIL);
4. the cores one GPU needs at 2,500 pairs/s: 2.5 x the loader's CPU ms per pair.

The baseline tree is a ``git worktree`` of ``--baseline`` with this tree's compiled extension.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {  # name -> (encoder, suffix, width, height, gop, options)
    "h264-256p-gop16": ("libx264", ".mp4", 448, 256, 16, {"preset": "veryfast", "crf": "23"}),
    "vp9-256p-gop16": ("libvpx-vp9", ".webm", 448, 256, 16, {"deadline": "realtime", "cpu-used": "8", "crf": "32",
                                                             "b": "0"}),
    "h264-360p-gop60": ("libx264", ".mp4", 640, 360, 60, {"preset": "veryfast", "crf": "23"}),
}
FPS, GPU_PAIRS_PER_S = 25, 2500


def write_video(path: Path, fmt: str, seconds: float, seed: int) -> None:
    from bench_loader import write_textured_video

    encoder, _, width, height, gop, options = FORMATS[fmt]
    write_textured_video(path, seed, encoder=encoder, width=width, height=height, gop=gop,
                         frames=int(seconds * FPS), options=options)


def make_corpus(folder: Path, files: int, seconds: float) -> dict:
    from vito_fast.prepare.scan import scan_videos
    from vito_fast.data.manifest import write_manifest

    manifests = {}
    for fmt, (_, suffix, *_) in FORMATS.items():
        (folder / fmt).mkdir(parents=True, exist_ok=True)
        for index in range(files):
            write_video(folder / fmt / f"{index:03d}{suffix}", fmt, seconds, index)
        records, rejected = scan_videos([str(folder / fmt)], workers=2, progress=False)
        assert not rejected, rejected
        manifests[fmt] = str(write_manifest(folder / f"{fmt}.jsonl", records))
        # the loader's manifest lists each file 16 times: epochs of several batches from a small corpus
        manifests[fmt + "-x16"] = str(write_manifest(folder / f"{fmt}-x16.jsonl", records * 16))
    return manifests


# ----------------------------------------------------------------------------- measured in a child process


def _process_cpu(pids=()) -> float:
    total = sum(os.times()[:2])
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except FileNotFoundError:
            pass
    return total


def measure_decode(manifest: str, pairs: int) -> dict:
    """CPU ms per pair of the tree's VideoFrameReader, warm and cold (see the module docstring)."""
    import inspect

    from vito_fast.data.manifest import read_manifest
    from vito_fast.data.video_source import VideoFrameReader

    records = read_manifest(manifest)
    takes_index = "keyframes" in inspect.signature(VideoFrameReader.read).parameters
    rng = np.random.default_rng(0)

    def pair(record):
        delta = min(int(round(rng.uniform(0, 2.5) * record.fps)), record.num_frames - 1)
        first = int(rng.integers(0, record.num_frames - delta))
        index = {"keyframes": record.keyframes, "keyframe_pts": record.keyframe_pts} if takes_index else {}
        return record.path, record.fps, [first, first + delta], index

    def run(reader, order):
        jobs = [pair(records[i]) for i in order]
        started = _process_cpu()
        for path, fps, frames, index in jobs:
            reader.read(path, fps, frames, **index)
        return (_process_cpu() - started) / len(jobs) * 1e3

    warm_reader = VideoFrameReader(max_open=len(records))
    run(warm_reader, range(len(records)))  # opens every file
    warm = run(warm_reader, rng.integers(0, len(records), pairs))
    cold = run(VideoFrameReader(max_open=1), np.arange(pairs) % len(records))  # never the file just open
    return {"warm_cpu_ms": warm, "cold_cpu_ms": cold}


class _BusyPython:
    """A thread that holds the GIL as a training loop's Python does (``busy=False``: does nothing)."""

    def __init__(self, busy: bool):
        import threading

        self.busy, self.stop = busy, threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self):
        count = 0
        while not self.stop.is_set():
            count += 1

    def __enter__(self):
        if self.busy:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.busy:
            self.thread.join()


def measure_open(manifest: str, opens: int = 100) -> dict:
    """Wall ms of what every cold pair pays before decoding: ``av.open`` alone, and open + the first frame."""
    import av

    from vito_fast.data.manifest import read_manifest

    paths = [record.path for record in read_manifest(manifest)]
    started = time.perf_counter()
    for index in range(opens):
        with av.open(paths[index % len(paths)], "r", metadata_errors="ignore") as container:
            container.streams.video[0]
    open_ms = (time.perf_counter() - started) / opens * 1e3
    started = time.perf_counter()
    for index in range(opens):
        with av.open(paths[index % len(paths)], "r", metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"
            next(container.decode(stream))
    return {"open_ms": open_ms, "open_and_first_frame_ms": (time.perf_counter() - started) / opens * 1e3}


def measure_decode_scaling(manifest: str, workers: int, pairs: int, busy: bool = False) -> dict:
    """Pairs/s of decoding alone (no augmentation) with ``workers`` decode processes (this tree:
    DecodePool, frames back through shared memory) or threads (a tree without one), files warm;
    ``busy``: while one more Python thread of the process spins, as the trainer's loop does."""
    import inspect
    from concurrent.futures import ThreadPoolExecutor

    from vito_fast.data.manifest import read_manifest
    from vito_fast.data.video_source import VideoFrameReader

    records = read_manifest(manifest)
    rng = np.random.default_rng(1)
    takes_index = "keyframes" in inspect.signature(VideoFrameReader.read).parameters
    samples = []
    for index in list(range(len(records))) + list(rng.integers(0, len(records), pairs)):
        record = records[index]
        delta = min(int(round(rng.uniform(0, 2.5) * record.fps)), record.num_frames - 1)
        first = int(rng.integers(0, record.num_frames - delta))
        samples.append((record, [first, first + delta]))
    warm_up, timed = samples[:len(records) * workers], samples[len(records):]
    try:
        from vito_fast.data.decode_pool import Arena, DecodePool
    except ImportError:
        reader = VideoFrameReader(max_open=len(records))
        read = lambda sample: reader.read(sample[0].path, sample[0].fps, sample[1])  # noqa: E731
        with ThreadPoolExecutor(workers) as threads:
            list(threads.map(read, warm_up))
            with _BusyPython(busy):
                started = time.perf_counter()
                list(threads.map(read, timed))
                return {"pairs_per_s": len(timed) / (time.perf_counter() - started)}
    pool = DecodePool(workers, max_open=len(records))
    arena = Arena(len(timed) * 2 * 3 * max(r.width * r.height for r in records) + (1 << 20))

    def tasks(chunk):
        arena.reset()
        jobs = []
        for record, frames in chunk:
            size = 2 * (-(-(record.width * record.height * 3) // 64) * 64)
            index = {"keyframes": record.keyframes, "keyframe_pts": record.keyframe_pts} if takes_index else {}
            jobs.append((("video_frames", record.path, record.fps, frames, index, (record.height, record.width)),
                         arena.reserve(size), size))
        return jobs

    try:
        pool.run(tasks(warm_up), arena)  # starts the workers, opens the files in each
        pool.run(tasks(timed), arena)  # every arena page touched once, as in a loader's steady state
        with _BusyPython(busy):
            started = time.perf_counter()
            results = pool.run(tasks(timed), arena)
            elapsed = time.perf_counter() - started
        assert not any(isinstance(result, Exception) for result in results)
        del results
        return {"pairs_per_s": len(timed) / elapsed}
    finally:
        pool.close()
        arena.close()


def measure_loader(manifest: str, workers: int, batch: int) -> dict:
    import dataclasses

    from vito_fast.data import LoaderConfig, PairLoader

    fields = {field.name for field in dataclasses.fields(LoaderConfig)}
    settings = dict(image_size=224, dtype="bfloat16", num_threads=workers)
    if "decode_workers" in fields:
        settings["decode_workers"] = workers
    loader = PairLoader(manifest, batch, device="cpu", seed=0, config=LoaderConfig(**settings))
    pool = lambda: [w.process.pid for w in getattr(getattr(loader, "_pool", None), "_workers", [])]  # noqa: E731

    def epoch():  # the next epoch, as training goes on
        for _ in loader:
            pass

    epoch()  # warm-up: pipeline, workers, open files
    cpu, times = _process_cpu(pool()), []
    for _ in range(3):
        started = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - started)
    pairs = len(loader) * batch
    result = {"pairs_per_s": pairs / min(times), "cpu_ms": (_process_cpu(pool()) - cpu) / (3 * pairs) * 1e3,
              "replaced": loader.stats.replaced}
    if hasattr(loader, "close"):
        loader.close()
    return result


# ----------------------------------------------------------------------------- the parent


def baseline_tree(ref: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(into), ref], check=True,
                   capture_output=True)
    for built in (ROOT / "vito_fast").glob("_C*.so"):  # the C++ sampler did not change: reuse this build
        shutil.copy2(built, into / "vito_fast" / built.name)
    kernels = into / "vito_fast" / "kernels"
    if not kernels.exists():
        kernels.symlink_to(into / "kernels")
    return into


def in_tree(tree: Path, function: str, *args) -> dict:
    """Run ``function(*args)`` of this file in a fresh process that imports vito_fast from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_video_path as b; "
            f"print('RESULT' + json.dumps(b.{function}(*{args!r})))")
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT")]
    if output.returncode or not lines:
        raise RuntimeError(f"{function} in {tree} failed:\n{output.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT"):])


def run(files: int, seconds: float, pairs: int, batch: int, baseline: str) -> str:
    work = Path(tempfile.mkdtemp(prefix="vito-bench-video-"))
    try:
        manifests = make_corpus(work / "corpus", files, seconds)
        trees = {"this tree": ROOT}
        if baseline != "none":
            trees[f"baseline {baseline}"] = baseline_tree(baseline, work / "baseline")
        lines = [f"Video path, {platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), "
                 f"{datetime.date.today()}, {files} files x {seconds:g} s per format, {pairs} pairs per decode figure",
                 "", "| tree | format | decode warm CPU ms/pair | decode cold CPU ms/pair | cold / warm |",
                 "|---|---|---:|---:|---:|"]
        for name, tree in trees.items():
            for fmt in FORMATS:
                manifest = manifests[fmt]
                figure = in_tree(tree, "measure_decode", manifest, pairs)
                lines.append(f"| {name} | {fmt} | {figure['warm_cpu_ms']:.1f} | {figure['cold_cpu_ms']:.1f} | "
                             f"{figure['cold_cpu_ms'] / figure['warm_cpu_ms']:.2f} |")
        lines += ["", "| format | av.open ms | av.open + first frame ms |", "|---|---:|---:|"]
        for fmt in FORMATS:
            figure = in_tree(ROOT, "measure_open", manifests[fmt])
            lines.append(f"| {fmt} | {figure['open_ms']:.2f} | {figure['open_and_first_frame_ms']:.2f} |")
        lines += ["", "| tree | decoding alone, h264-256p-gop16, files warm | trainer's Python | pairs/s | 2 vs 1 |",
                  "|---|---|---|---:|---:|"]
        for name, tree in trees.items():
            for busy in (False, True):
                rates = [in_tree(tree, "measure_decode_scaling", manifests["h264-256p-gop16"], workers, pairs, busy)
                         ["pairs_per_s"] for workers in (1, 2)]
                unit = "decode processes" if tree == ROOT else "threads"
                for workers, rate in zip((1, 2), rates):
                    lines.append(f"| {name} | {workers} {unit} | {'busy' if busy else 'idle'} | {rate:.1f} | "
                                 f"{rate / rates[0]:.2f} |")
        lines += ["", "| tree | loader on h264-256p-gop16 | pairs/s | CPU ms/pair | 2 vs 1 | cores for 2,500 pairs/s |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, tree in trees.items():
            one = None
            for workers in (1, 2):
                figure = in_tree(tree, "measure_loader", manifests["h264-256p-gop16-x16"], workers, batch)
                one = one or figure
                unit = "decode workers" if tree == ROOT else "threads"
                lines.append(f"| {name} | {workers} {unit} | {figure['pairs_per_s']:.1f} | {figure['cpu_ms']:.1f} | "
                             f"{figure['pairs_per_s'] / one['pairs_per_s']:.2f} | "
                             f"{GPU_PAIRS_PER_S * figure['cpu_ms'] / 1e3:.0f} |")
        return "\n".join(lines)
    finally:
        if (work / "baseline").exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=int(os.environ.get("VITO_BENCH_FILES", 16)))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, default=200, help="pairs per decode figure")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--baseline", default="2682c66", help="git ref of the baseline tree, or 'none'")
    args = parser.parse_args(argv)
    print(run(args.files, args.seconds, args.pairs, args.batch, args.baseline))
    return 0


def test_video_path(benchmark):
    table = benchmark.pedantic(run, args=(8, 6.0, 60, 32, "none"), rounds=1, iterations=1)
    print("\n" + table)


if __name__ == "__main__":
    raise SystemExit(main())
