"""PairLoader throughput (augmented frame pairs per second) against a conventional PyTorch loader.

    pytest benches/bench_loader.py --benchmark-only --benchmark-columns=min,median,rounds -s

Corpus (generated once per session, not timed): VIDEOS VP9/WebM files at 320x256 (256p), 25 fps,
SECONDS long, GOP 16 (what ``vito-fast prepare --transcode vp9`` writes), a panning noise texture;
the manifest lists each file REPEAT times (clips = VIDEOS * REPEAT); a frame store of the same
clips at 8 fps. Every provider makes batches of BATCH pairs at 224x224 with all of the paper's
augmentations (default ViewConfig), bfloat16, Δt uniform in [0, 2.5] s. Providers (PairLoader's
device stage named by LoaderConfig(backend=...): "dali" = DALI's graph, "torch" = torchvision's
decode_jpeg and batched torch ops; DALI providers are skipped where DALI does not import):
  store-dali[cpu|gpu]         PairLoader on the frame store, DALI JPEG decoder (CPU / mixed nvJPEG)
  store-torch[cpu|gpu]        PairLoader on the frame store, torchvision decode_jpeg (CPU / nvJPEG)
  video-pyav-dali[cpu|gpu]    PairLoader on the videos, host PyAV seek-to-keyframe decoding, DALI views
  video-pyav-torch[cpu|gpu]   the same frames, torch views
  video-dali[cpu|gpu]         PairLoader on the videos, fn.decoders.video(frames=[t, t + d]) on the
                              bytes (DALI backend only)
  baseline[cpu]               torch DataLoader (WORKERS workers): PyAV seek + decode of the two frames,
                              torchvision.transforms.v2 on uint8 tensors, per sample
One round = one epoch of the loader after a warm-up epoch (pipeline build and file opening are not
timed). extra_info: pairs_per_s (fastest epoch), cpu_ms_per_pair (this process, its threads included,
and the DataLoader workers or the PairLoader's decode processes: a figure that other load on a shared
machine does not change much), load_average, and for PairLoader backend (the device stage that ran).
Env: VITO_BENCH_VIDEOS (8), VITO_BENCH_SECONDS (6), VITO_BENCH_REPEAT (8), VITO_BENCH_BATCH (32),
VITO_BENCH_WORKERS (CPU count).
"""
from __future__ import annotations

import os
import shutil
import time
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

VIDEOS = int(os.environ.get("VITO_BENCH_VIDEOS", "8"))
SECONDS = float(os.environ.get("VITO_BENCH_SECONDS", "6"))
REPEAT = int(os.environ.get("VITO_BENCH_REPEAT", "8"))
BATCH = int(os.environ.get("VITO_BENCH_BATCH", "32"))
WORKERS = int(os.environ.get("VITO_BENCH_WORKERS", str(os.cpu_count() or 1)))
WIDTH, HEIGHT, FPS, GOP, SIZE = 320, 256, 25, 16, 224


def _cuda() -> bool:
    if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidiactl"):
        return False
    import torch

    return torch.cuda.is_available()


VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}


def write_textured_video(path: Path, seed: int, *, encoder: str = "libvpx-vp9", width: int = WIDTH,
                         height: int = HEIGHT, gop: int = GOP, frames: int = int(SECONDS * FPS),
                         options: Optional[dict] = None) -> None:
    """A noise texture panned 2 px a frame (every frame differs, no scene cut), yuv420p at FPS.

    The defaults are this suite's corpus; ``benches/bench_video_path.py`` writes its formats with it.
    """
    import av

    options = dict(VP9_OPTIONS if options is None else options)
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height // 8 + 1, (width + 2 * frames) // 8 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(8, axis=0).repeat(8, axis=1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(FPS), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if encoder == "libx264":  # a keyframe every `gop` frames exactly
            stream.codec_context.options = {**options, "keyint_min": str(gop), "sc_threshold": "0"}
        for index in range(frames):
            image = np.ascontiguousarray(texture[:height, 2 * index: 2 * index + width])
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from vito_fast.prepare.frame_store_write import extract_frames
    from vito_fast.data.manifest import ClipRecord, write_manifest

    folder = tmp_path_factory.mktemp("loader_corpus")
    records = []
    for index in range(VIDEOS):
        path = folder / f"video{index}.webm"
        write_textured_video(path, index)
        records.append(ClipRecord(str(path), int(SECONDS * FPS), float(FPS), WIDTH, HEIGHT, "vp9", SECONDS,
                                  label=f"class{index % 4}"))
    manifest = write_manifest(folder / "manifest.jsonl", records * REPEAT)
    extract_frames(manifest, folder / "store", fps=8, short_side=256, quality=90, workers=WORKERS, progress=False)
    return {"store": str(folder / "store"), "video": str(manifest), "records": records * REPEAT}


def _cpu_seconds(worker_pids=()) -> float:
    """CPU time (user + system) of this process and of the given worker processes, from /proc."""
    total = sum(os.times()[:2])
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in worker_pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _timed_epochs(benchmark, make_epoch, pairs_per_epoch: int, worker_pids=lambda: ()) -> float:
    """Pairs/s of the fastest of 3 epochs, and CPU ms per pair (robust to other load on the machine)."""
    make_epoch()  # warm-up: builds the pipeline, opens the files, starts the workers
    cpu_before = _cpu_seconds(worker_pids())
    benchmark.pedantic(make_epoch, rounds=3, iterations=1)
    cpu_ms = (_cpu_seconds(worker_pids()) - cpu_before) / (3 * pairs_per_epoch) * 1e3
    rate = pairs_per_epoch / benchmark.stats.stats.min
    benchmark.extra_info.update(pairs_per_s=round(rate, 1), cpu_ms_per_pair=round(cpu_ms, 2),
                                load_average=round(os.getloadavg()[0], 2))
    print(f"\n{benchmark.name}: {rate:.1f} pairs/s, {cpu_ms:.1f} CPU ms per pair, load {os.getloadavg()[0]:.1f}")
    return rate


# provider -> (source, video decoder, backend)
LOADER_PROVIDERS = {
    "store-dali": ("store", "pyav", "dali"),
    "store-torch": ("store", "pyav", "torch"),
    "video-pyav-dali": ("video", "pyav", "dali"),
    "video-pyav-torch": ("video", "pyav", "torch"),
    "video-dali": ("video", "dali", "dali"),  # DALI decodes the file's bytes: no torch counterpart
}


def _dali_import_problem() -> Optional[str]:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as error:
        return f"DALI is not installed ({error})"
    return None


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("provider", list(LOADER_PROVIDERS))
def test_pair_loader(benchmark, corpus, provider, device):
    if device == "gpu" and not _cuda():
        pytest.skip("needs a CUDA device")
    source_kind, decoder, backend = LOADER_PROVIDERS[provider]
    if backend == "dali" and _dali_import_problem():
        pytest.skip(f"{provider}: {_dali_import_problem()}")
    from vito_fast.data import LoaderConfig, PairLoader

    config = LoaderConfig(image_size=SIZE, dtype="bfloat16", video_decoder=decoder, backend=backend)
    loader = PairLoader(corpus[source_kind], BATCH, device=device, seed=0, config=config)

    def epoch():  # the next epoch, as training goes on (the loader prepares it during this one)
        for batch in loader:
            pass
        if device == "gpu":
            import torch

            torch.cuda.synchronize()

    def decode_workers():  # the loader's decoding processes count as its CPU too
        return list(loader.host.decode_worker_pids)

    _timed_epochs(benchmark, epoch, len(loader) * BATCH, decode_workers)
    benchmark.extra_info.update(provider=provider, device=device, backend=loader.backend.name, batch=BATCH,
                                replaced=loader.stats.replaced, wait_share=round(loader.stats.wait_share, 3))
    loader.close()


@pytest.mark.cuda
@pytest.mark.parametrize("provider", ["store-dali", "store-torch", "video-pyav-dali", "video-pyav-torch"])
def test_gpu_time_taken_from_training(benchmark, corpus, provider):
    """How much the loader slows a GPU-bound stand-in for the training step (bf16 matmuls, ~50 ms).

    extra_info: step_ms alone, step_ms while the loader produces a batch per step, and slowdown.
    """
    if not _cuda():
        pytest.skip("needs a CUDA device")
    source_kind, decoder, backend = LOADER_PROVIDERS[provider]
    if backend == "dali" and _dali_import_problem():
        pytest.skip(f"{provider}: {_dali_import_problem()}")
    import torch

    from vito_fast.data import LoaderConfig, PairLoader

    weights = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    activations = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def step():
        for _ in range(45):  # ~1 PFLOP-ish / s class GPUs: tens of ms
            torch.mm(activations, weights)

    loader = PairLoader(corpus[source_kind], BATCH, device="gpu", seed=0,
                        config=LoaderConfig(image_size=SIZE, video_decoder=decoder, backend=backend))

    def timed(steps, with_loader):
        batches = iter(loader)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
            if with_loader:
                try:
                    next(batches)
                except StopIteration:
                    batches = iter(loader)  # the next epoch
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps * 1e3

    timed(3, True)
    alone = timed(10, False)
    together = benchmark.pedantic(lambda: timed(10, True), rounds=3, iterations=1)
    benchmark.extra_info.update(provider=provider, backend=loader.backend.name, step_ms_alone=round(alone, 2),
                                step_ms_with_loader=round(together, 2), slowdown=round(together / alone - 1.0, 3))
    print(f"\n{benchmark.name}: step {alone:.1f} ms alone, {together:.1f} ms with the loader")


@pytest.mark.parametrize("strategy", ["keyframe-seek", "sequential"])
def test_video_decode_only(benchmark, corpus, strategy):
    """Host decoding of the two frames alone (no augmentation), on a thread pool of WORKERS.

    keyframe-seek: VideoFrameReader (the loader's "pyav" decoder); sequential: decode every frame
    from the first frame's keyframe to the second frame, as sequence readers do.
    """
    from concurrent.futures import ThreadPoolExecutor

    from vito_fast.data.video_source import VideoFrameReader, _OpenVideo

    records, rng = corpus["records"], np.random.default_rng(0)
    deltas = np.minimum(np.rint(rng.uniform(0, 2.5, len(records)) * FPS).astype(int), int(SECONDS * FPS) - 1)
    firsts = [int(rng.integers(0, int(SECONDS * FPS) - delta)) for delta in deltas]
    reader = VideoFrameReader()

    def sequential(index):
        video = _OpenVideo(records[index].path, FPS)  # fresh decoder: never skips ahead by seeking
        try:
            first = video.read(firsts[index])
            video.keyframes = [0]  # no keyframe to jump to: decode on through every frame in between
            return first, video.read(firsts[index] + int(deltas[index])) if deltas[index] else first
        finally:
            video.close()

    def keyframe_seek(index):
        return reader.read(records[index].path, FPS, [firsts[index], firsts[index] + int(deltas[index])])

    decode = keyframe_seek if strategy == "keyframe-seek" else sequential
    with ThreadPoolExecutor(WORKERS) as pool:
        _timed_epochs(benchmark, lambda: list(pool.map(decode, range(len(records)))), len(records))
    benchmark.extra_info.update(provider=f"decode-{strategy}", device="cpu", gop=GOP)


class _PyAVPairs:
    """The conventional loader: per sample, PyAV decodes two frames and torchvision augments them."""

    def __init__(self, records):
        import torch
        from torchvision.transforms import v2

        self.records = records
        jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
        common = [v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip(), jitter,
                  v2.RandomGrayscale(0.2)]
        tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
        self.recipes = [v2.Compose(common + [v2.GaussianBlur(23, (0.1, 2.0))] + tail),
                        v2.Compose(common + [v2.RandomApply([v2.GaussianBlur(23, (0.1, 2.0))], p=0.1),
                                             v2.RandomSolarize(128, p=0.2)] + tail)]

    def __len__(self) -> int:
        return len(self.records)

    def _frame(self, container, target: int):
        stream = container.streams.video[0]
        origin = stream.start_time or 0
        container.seek(origin + int(target / FPS / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if round(float((frame.pts - origin) * stream.time_base) * FPS) >= target:
                return frame.to_ndarray(format="rgb24")
        raise RuntimeError("frame not found")

    def __getitem__(self, index: int):
        import av
        import torch

        record = self.records[index]
        rng = np.random.default_rng()
        delta = min(int(round(rng.uniform(0, 2.5) * FPS)), record.num_frames - 1)
        first = int(rng.integers(0, record.num_frames - delta))
        with av.open(record.path) as container:
            frames = [self._frame(container, first), self._frame(container, first + delta)]
        views = [recipe(torch.from_numpy(frame).permute(2, 0, 1)) for recipe, frame in zip(self.recipes, frames)]
        return views[0].to(torch.bfloat16), views[1].to(torch.bfloat16)


def test_baseline_pyav_torchvision(benchmark, corpus):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # process-wide: given back below, for whatever runs after it
    try:
        _time_baseline(benchmark, corpus)
    finally:
        torch.set_num_threads(threads)


def _time_baseline(benchmark, corpus) -> None:
    import gc

    import torch

    # PyAV frames left in reference cycles by the providers before this one hold swscale contexts with
    # slice threads; a forked worker that collects them waits forever on threads it does not have
    # (or segfaults), so they are freed here, in the process that owns the threads, before the fork
    gc.collect()
    dataset = _PyAVPairs(corpus["records"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                         drop_last=True, persistent_workers=True, prefetch_factor=2)

    def epoch():
        for view1, view2 in loader:
            view1.contiguous(memory_format=torch.channels_last), view2.contiguous(memory_format=torch.channels_last)

    def worker_pids():
        iterator = getattr(loader, "_iterator", None)
        return [worker.pid for worker in getattr(iterator, "_workers", [])]

    _timed_epochs(benchmark, epoch, len(loader) * BATCH, worker_pids)
    benchmark.extra_info.update(provider="baseline", device="cpu", batch=BATCH, workers=WORKERS)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "--benchmark-only", "-s", "--benchmark-columns=min,median,rounds"]))
