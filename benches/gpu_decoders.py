"""Issue #26's measurements on a GPU: every video decoder verified here, through the whole loader, with
host cores kept busy, on 256p GOP-16 and 720p GOP-60 H.264; steps of the GPU pass (benches/gpu_pass.py).

    python benches/gpu_pass.py --plan decoders --calls     # the one device-tool call that runs them
    python benches/gpu_decoders.py measure --manifest M --decoder nvc --busy 0,4,8,16 [--cores 4]

Step ``decoder_rates`` takes, for each corpus, the decoders that ``choose_decoders`` verified against
PyAV on it (the trial table is reported too), and measures each in a process of its own (a fresh
CUDA context; a decoder that takes its process down costs only its row):

- pairs/s of ``PairLoader`` (decode + every augmentation, as training takes batches) with 0, 4, 8
  and 16 other processes spinning on the host's cores (other ranks' loaders, a busy node);
- the same with the loader's whole process tree held to 4 cores (the goal: 2,500 pairs/s per GPU
  with at most 4 host cores), in a process started with that CPU affinity;
- host CPU ms per pair: user + system time of the loader's process tree (trainer, decode workers, the
  device stage's decoder process) over the timed window, spinners left out;
- NVDEC and SM busy % of the card over the window (NVML's decoder and GPU utilisation, sampled every
  0.2 s), and NVDEC ms per pair (busy share × window ÷ pairs: the decode engines' occupancy);
- GPU ms per pair of the trainer's process (its kernels and copies, the profiler's trace: the
  augmentation and, for PyAV, the upload), at the end of the free-running measurement.

Every rate stands beside PyAV's at the same load, measured in the same step on the same card
(``x_pyav``). The dry run does the same on the CPU with toy sizes (VP9: DALI's CPU decoder reads it).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

PINNED_CORES = 4
MEASURE_LIMIT_S = 120  # one decoder's process on one corpus


# ----------------------------------------------------------------------------- the host's load


def tree_pids(root: int) -> List[int]:
    """``root`` and its descendants (zombies aside), read from /proc."""
    children: Dict[int, List[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: Sequence[int]) -> Dict[int, float]:
    """User + system CPU seconds of each of ``pids`` still running."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return times


class Spinners:
    """``count`` processes that keep a core each busy (pure Python arithmetic) while the block runs."""

    def __init__(self, count: int):
        self.count, self.processes = count, []

    def __enter__(self) -> "Spinners":
        code = "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) % 2147483648"
        self.processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.count)]
        time.sleep(0.3 if self.count else 0)  # let them take their cores
        return self

    @property
    def pids(self) -> List[int]:
        return [process.pid for process in self.processes]

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()


class Nvml:
    """NVML's utilisation counters of one card through ctypes (no Python package needed); ``sampler()``
    averages them over a window. ``None`` fields where there is no NVML (a CPU host)."""

    def __init__(self, index: int = 0):
        self.handle = None
        try:
            self.lib = ctypes.CDLL("libnvidia-ml.so.1")
            if self.lib.nvmlInit_v2() != 0:
                return
            handle = ctypes.c_void_p()
            if self.lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) == 0:
                self.handle = handle
        except OSError:
            pass

    def read(self) -> Optional[tuple]:
        """(SM busy %, NVDEC busy %) now (NVML's own sampling period), or None."""
        if self.handle is None:
            return None
        rates = (ctypes.c_uint * 2)()  # nvmlUtilization_t: gpu, memory
        decoder, period = ctypes.c_uint(), ctypes.c_uint()
        if self.lib.nvmlDeviceGetUtilizationRates(self.handle, ctypes.byref(rates)) != 0:
            return None
        if self.lib.nvmlDeviceGetDecoderUtilization(self.handle, ctypes.byref(decoder), ctypes.byref(period)) != 0:
            return None
        return float(rates[0]), float(decoder.value)

    def sampler(self) -> "NvmlWindow":
        return NvmlWindow(self)


class NvmlWindow:
    def __init__(self, nvml: Nvml, every_s: float = 0.2):
        self.nvml, self.every_s, self.samples = nvml, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            sample = self.nvml.read()
            if sample is not None:
                self.samples.append(sample)

    def __enter__(self) -> "NvmlWindow":
        if self.nvml.handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def means(self) -> tuple:
        if not self.samples:
            return None, None
        return tuple(sum(column) / len(column) for column in zip(*self.samples))


# ----------------------------------------------------------------------------- one decoder, in its process


def window(stream, seconds: float, exclude: Sequence[int], nvml: Nvml, cuda: bool, min_batches: int = 2) -> dict:
    """Take batches from ``stream`` for about ``seconds``: pairs/s, host CPU ms per pair of this process
    tree (``exclude``: the spinners), NVDEC and SM busy %."""
    import torch

    def tree_cpu():
        pids = [pid for pid in tree_pids(os.getpid()) if pid not in set(exclude)]
        return cpu_seconds(pids)

    if cuda:
        torch.cuda.synchronize()
    before = tree_cpu()
    with nvml.sampler() as sampled:
        started, pairs, batches = time.perf_counter(), 0, 0
        while batches < min_batches or time.perf_counter() - started < seconds:
            pairs += len(next(stream)["sample_ids"])
            batches += 1
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    after = tree_cpu()
    spent = sum(after[pid] - before[pid] for pid in after if pid in before)  # processes alive throughout
    sm, nvdec = sampled.means()
    return {"pairs_per_s": pairs / wall, "cpu_ms_per_pair": 1e3 * spent / pairs, "sm_busy_pct": sm,
            "nvdec_busy_pct": nvdec, "nvdec_ms_per_pair": None if nvdec is None else 10 * nvdec * wall / pairs,
            "batches": batches}


def measure(manifest: str, decoder: str, busy: Sequence[int], image_size: int, batch: int, seconds: float,
            profile: bool) -> List[dict]:
    """``decoder``'s loader on ``manifest`` at each load of ``busy`` (rows as dicts)."""
    import torch

    from gpu_pass_steps import _forever, loader_gpu_time
    from vito_fast.data import LoaderConfig, PairLoader
    from vito_fast.data.config import decode_workers

    cuda = torch.cuda.is_available()
    backend = {"nvc": "torch", "torchcodec": "torch", "dali": "dali"}.get(decoder, "auto")
    config = LoaderConfig(image_size=image_size, dtype="bfloat16", video_decoder=decoder, backend=backend)
    cores = len(os.sched_getaffinity(0))
    nvml, rows = Nvml(), []
    started = time.perf_counter()
    with PairLoader(manifest, batch, device="gpu" if cuda else "cpu", seed=0, config=config) as loader:
        stream = _forever(loader)
        for _ in range(2):  # workers, decoder process, CUDA context, first files
            next(stream)
        first_s = time.perf_counter() - started
        for count in busy:
            with Spinners(count) as spinners:
                figures = window(stream, seconds, spinners.pids, nvml, cuda)
            rows.append({"busy_cores": count, "loader_cores": cores, **figures})
        if profile and cuda:
            try:
                gpu_ms, busy_pct = loader_gpu_time(stream, 8, cuda)
                rows[0].update(gpu_ms_per_pair=gpu_ms, trainer_gpu_busy_pct=busy_pct)
            except Exception as error:
                rows[0]["note"] = f"GPU time not measured: {type(error).__name__}: {str(error)[:120]}"
        stats = loader.stats
        for row in rows:
            row.update(start_s=first_s, fallbacks=stats.decoder_fallbacks, replaced=stats.replaced,
                       backend=loader.backend.name, decode_workers=decode_workers(None))
    return rows


def measure_in_process(manifest: str, decoder: str, busy: Sequence[int], image_size: int, batch: int,
                       seconds: float, cores: Optional[int], limit_s: float = MEASURE_LIMIT_S) -> List[dict]:
    """``measure`` in a process of its own; ``cores``: its CPU affinity (the first N cores this process
    may use; its decode workers and decoder process inherit it), None: every core, and the trainer's
    GPU time profiled. A process that dies or overruns gives a failed row with its last words."""
    command = [sys.executable, str(Path(__file__).resolve()), "measure", "--manifest", manifest, "--decoder", decoder,
               "--busy", ",".join(map(str, busy)), "--image-size", str(image_size), "--batch", str(batch),
               "--seconds", str(seconds)] + (["--profile"] if cores is None else [])
    allowed = sorted(os.sched_getaffinity(0))
    pin = None if cores is None else (lambda: os.sched_setaffinity(0, allowed[:cores]))
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, preexec_fn=pin)
    except subprocess.TimeoutExpired:
        return [{"status": "timeout", "note": f"no answer within {limit_s:.0f} s"}]
    rows = [json.loads(line[5:]) for line in run.stdout.splitlines() if line.startswith("row: ")]
    if run.returncode != 0 or not rows:
        last = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        return rows + [{"status": "failed", "note": last[:300]}]
    return rows


# ----------------------------------------------------------------------------- the pass's steps


# (label, encoder, suffix, width, height, GOP, files, seconds) of the corpora; the dry run's are VP9
CORPORA = {"gpu": [("256p GOP-16 H.264", None), ("720p GOP-60 H.264", ("libx264", ".mp4", 1280, 720, 60, 8, 10.0))],
           "toy": [("toy VP9", None), ("toy VP9 GOP-30", ("libvpx-vp9", ".webm", 160, 96, 30, 2, 2.0))]}
# measured: how many corpora get rates (the others their trials only), and decoders per corpus (PyAV first)
LOADS = {"gpu": dict(busy=(0, 4, 8, 16), seconds=3.0, batch=64, samples=16, corpora=2, decoders=4),
         "toy": dict(busy=(0, 1), seconds=0.5, batch=4, samples=4, corpora=1, decoders=2)}


def _kind(ctx) -> str:
    return "toy" if ctx.dry_run else "gpu"


def _corpora(ctx) -> List[tuple]:
    """(label, manifest with each file once, manifest with each file repeated) of the corpora written."""
    (small, _), (large, _) = CORPORA[_kind(ctx)]
    found = [(small, ctx.manifest, ctx.manifest_repeat),
             (large, ctx.work / "videos-large.jsonl", ctx.work / "videos-large-repeat.jsonl")]
    return [entry for entry in found if entry[1].is_file() and entry[2].is_file()]


def tests_decoders(ctx) -> None:
    """The decoder test files in full (the contract against PyAV, the choice, the decoder process and
    its CUDA IPC, torchcodec with PyAV's FFmpeg; CUDA-only tests too); the dry run collects them."""
    import gpu_pass_steps as steps

    steps.require("PyAV")
    files = ["tests/test_video_decoders.py", "tests/test_torchcodec.py"]
    code = steps._pytest(ctx, "decoders", files + (["--co"] if ctx.dry_run else steps._parallel()))
    if code not in (0, 5):
        raise RuntimeError(f"decoder tests: pytest exit {code} (see the failures column)")


def video_corpus_large(ctx) -> None:
    """720p GOP-60 H.264 files (a toy VP9 corpus in the dry run), written in parallel and scanned."""
    import gpu_pass_steps as steps
    from bench_loader import write_textured_video

    steps.require("PyAV")
    label, (encoder, suffix, width, height, gop, files, seconds) = CORPORA[_kind(ctx)][1]
    started = time.perf_counter()
    options = {"preset": "veryfast", "crf": "23"} if encoder == "libx264" else {"deadline": "realtime", "cpu-used": "8"}
    paths = [ctx.work / "videos-large" / f"{index:03d}{suffix}" for index in range(files)]
    write = partial(write_textured_video, encoder=encoder, width=width, height=height, gop=gop,
                    frames=int(seconds * 25), options=options)
    records = steps.write_corpus(ctx, paths, write, ctx.work / "videos-large.jsonl",
                                 ctx.work / "videos-large-repeat.jsonl")
    ctx.row(corpus=label, files=len(records), codec=records[0].codec, size=f"{records[0].width}x{records[0].height}",
            gop=gop, seconds_each=seconds, write_seconds=round(time.perf_counter() - started, 1))


def decoder_rates(ctx) -> None:
    """For each corpus: the decoders' trials against PyAV (``choose_decoder``), then each verified
    decoder's loader at every load and held to 4 cores, each in a process of its own (module docstring)."""
    import gpu_pass_steps as steps
    from vito_fast.data.manifest import read_manifest
    from vito_fast.decoders.choice import choose_decoder

    steps.require("PyAV")
    corpora = _corpora(ctx)
    if not corpora:
        raise steps.Skip("no video corpus: steps video_corpus and video_corpus_large wrote none")
    load, device = LOADS[_kind(ctx)], "gpu" if ctx.cuda else "cpu"
    cores = min(PINNED_CORES, len(os.sched_getaffinity(0)))
    for number, (label, once, repeat) in enumerate(corpora):
        choice = choose_decoder(read_manifest(once), device=device, samples=load["samples"], timeout=60,
                                cache_path=ctx.work / "video_decoders.json", refresh=True)
        for trial in choice.trials:
            psnr = trial.min_psnr_db
            ctx.row(kind="trial", corpus=label, decoder=trial.decoder, status=trial.status,
                    pairs_per_s=trial.pairs_per_s, cpu_ms_per_pair=trial.cpu_ms_per_pair,
                    min_luma_psnr_db="∞ (identical)" if psnr == math.inf else psnr,
                    chosen=trial.decoder == choice.decoder, note=trial.reason)
        verified = [trial.decoder for trial in choice.trials if trial.verified]
        measured = sorted(verified, key=lambda decoder: (decoder != "pyav", decoder != choice.decoder))
        baseline: Dict[tuple, float] = {}
        for name in measured[:load["decoders"]] if number < load["corpora"] else ():  # PyAV first: the baseline
            for pinned in (None, cores):
                busy = load["busy"] if pinned is None else (0,)
                for row in measure_in_process(str(repeat), name, busy, ctx.sizes.image_size, load["batch"],
                                              load["seconds"], pinned):
                    key = (row.get("busy_cores"), pinned)
                    if name == "pyav" and row.get("status") == "ok":
                        baseline[key] = row["pairs_per_s"]
                    rate, base = row.get("pairs_per_s"), baseline.get(key)
                    ctx.row(kind="rate", corpus=label, decoder=name, device=device,
                            host_cores="all" if pinned is None else pinned,
                            x_pyav=rate / base if rate and base else None, **row)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("measure", help="one decoder's loader at each load, rows on stdout")
    one.add_argument("--manifest", required=True)
    one.add_argument("--decoder", required=True)
    one.add_argument("--busy", default="0", help="comma-separated counts of spinning processes")
    one.add_argument("--image-size", type=int, default=224)
    one.add_argument("--batch", type=int, default=64)
    one.add_argument("--seconds", type=float, default=3.0, help="timed window per load")
    one.add_argument("--profile", action="store_true", help="also the trainer's GPU ms per pair")
    args = parser.parse_args(argv)
    rows = measure(args.manifest, args.decoder, [int(n) for n in args.busy.split(",")], args.image_size, args.batch,
                   args.seconds, args.profile)
    for row in rows:
        print("row: " + json.dumps({"status": "ok", **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
