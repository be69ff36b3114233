"""`vito-fast prepare`: scan throughput (files/s) and frame-store extraction throughput (frames/s).

    pytest benches/bench_prepare.py --benchmark-only --benchmark-columns=median,rounds
    python benches/bench_prepare.py             # one timed run of each, printed as a Markdown table

Corpus (generated once per session, not timed): VIDEOS files at 640x360, 30 fps, SECONDS long, half
H.264/MP4 (libx264 veryfast, GOP 60) and half VP9/WebM (libvpx-vp9 realtime), showing a textured
noise pattern panning 3 px per frame so the decoders do real work. Providers:
  scan[none|tail|full] scan_videos(workers=CPU count): demux only, + first frame and last GOP
                       decoded ("tail", the default), or every frame decoded ("full")
  frames[cpu]          extract_frames(fps=8, short_side=256, quality=90) with PyAV, CPU-count processes
  frames[dali-cpu]     the same with DALI's CPU decoder (VP9 files only: it cannot read H.264)
  frames[gpu]          the same with DALI + NVDEC (skipped without CUDA)
extra_info: files_per_s or frames_per_s (stored frames; decoded source frames in source_frames_per_s).
Env: VITO_BENCH_VIDEOS (default 8), VITO_BENCH_SECONDS (default 4).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vito_fast.prepare import extract_frames, scan_videos

VIDEOS = int(os.environ.get("VITO_BENCH_VIDEOS", "8"))
SECONDS = float(os.environ.get("VITO_BENCH_SECONDS", "4"))
WIDTH, HEIGHT, FPS = 640, 360, 30
STORE_FPS, SHORT_SIDE, QUALITY = 8, 256, 90


def _cuda() -> bool:
    if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidiactl"):
        return False
    import torch

    return torch.cuda.is_available()


def write_textured_video(path: Path, codec: str, seed: int) -> None:
    """A panning low-frequency noise texture: compresses like real footage, unlike flat test cards."""
    import av

    frames = int(SECONDS * FPS)
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(HEIGHT // 4 + 1, (WIDTH + 3 * frames) // 4 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(4, axis=0).repeat(4, axis=1)
    encoder, options = {"h264": ("libx264", {"preset": "veryfast", "crf": "23"}),
                        "vp9": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0",
                                               "row-mt": "1"})}[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(FPS), options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = 2 * FPS
        for index in range(frames):
            rgb = np.ascontiguousarray(texture[:HEIGHT, 3 * index: 3 * index + WIDTH])
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def make_corpus(folder: Path) -> list:
    """Write the corpus into ``folder`` and return its manifest records."""
    for index in range(VIDEOS):
        codec = "h264" if index % 2 == 0 else "vp9"
        write_textured_video(folder / f"clip{index:03d}.{'mp4' if codec == 'h264' else 'webm'}", codec, index)
    records, rejected = scan_videos([folder], workers=0, progress=False)
    assert not rejected and len(records) == VIDEOS, rejected
    return records


@pytest.fixture(scope="module")
def corpus():
    folder = Path(tempfile.mkdtemp(prefix="vito_bench_prepare_"))
    yield folder, make_corpus(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("decode_check", ["none", "tail", "full"])
def test_scan(benchmark, corpus, decode_check):
    folder, _ = corpus
    benchmark.pedantic(lambda: scan_videos([folder], progress=False, decode_check=decode_check),
                       rounds=3, warmup_rounds=1)
    benchmark.extra_info["files_per_s"] = round(VIDEOS / benchmark.stats.stats.median, 2)


@pytest.mark.parametrize("device", ["cpu", "dali-cpu", "gpu"])
def test_extract_frames(benchmark, corpus, device):
    _, records = corpus
    if device == "dali-cpu":
        pytest.importorskip("nvidia.dali")
        records = [record for record in records if record.codec == "vp9"]
    if device == "gpu" and not _cuda():
        pytest.skip("needs a CUDA GPU")
    stored = sum(int(np.ceil(record.duration * STORE_FPS - 1e-6)) for record in records)
    decoded = sum(record.num_frames for record in records)
    out_dirs = []

    def setup():
        out_dirs.append(Path(tempfile.mkdtemp(prefix="vito_bench_store_")))
        return (out_dirs[-1],), {}

    def run(out_dir):
        extract_frames(records, out_dir, fps=STORE_FPS, short_side=SHORT_SIDE, quality=QUALITY, device=device,
                       progress=False)

    benchmark.pedantic(run, setup=setup, rounds=3, warmup_rounds=0)
    for out_dir in out_dirs:
        shutil.rmtree(out_dir, ignore_errors=True)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(frames_per_s=round(stored / seconds, 1), source_frames_per_s=round(decoded / seconds, 1),
                                clips=len(records))


def _main() -> None:  # pragma: no cover - manual run: one timed run each, as a Markdown table
    import platform

    import av

    folder = Path(tempfile.mkdtemp(prefix="vito_bench_prepare_"))
    records = make_corpus(folder)
    print(f"corpus: {VIDEOS} videos, {WIDTH}x{HEIGHT} {FPS} fps, {SECONDS:g} s; CPUs: {os.cpu_count()}; "
          f"PyAV {av.__version__}; Python {platform.python_version()}")
    print("| what | figure |\n|---|---|")
    for decode_check in ("none", "tail", "full"):
        started = time.perf_counter()
        scan_videos([folder], progress=False, decode_check=decode_check)
        print(f"| scan, decode check {decode_check} | {VIDEOS / (time.perf_counter() - started):.1f} files/s |")
    devices = ["cpu"] + (["dali-cpu"] if _has_dali() else []) + (["gpu"] if _cuda() else [])
    for device in devices:
        chosen = [r for r in records if device != "dali-cpu" or r.codec == "vp9"]
        out_dir = Path(tempfile.mkdtemp(prefix="vito_bench_store_"))
        started = time.perf_counter()
        extract_frames(chosen, out_dir, fps=STORE_FPS, short_side=SHORT_SIDE, quality=QUALITY, device=device,
                       progress=False)
        seconds = time.perf_counter() - started
        stored = sum(int(np.ceil(r.duration * STORE_FPS - 1e-6)) for r in chosen)
        print(f"| frames, {device}, {len(chosen)} clips -> {STORE_FPS} fps, short side {SHORT_SIDE}, q{QUALITY} "
              f"| {stored / seconds:.1f} stored frames/s ({sum(r.num_frames for r in chosen) / seconds:.0f} "
              f"source frames/s decoded) |")
        shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":  # pragma: no cover
    _main()
