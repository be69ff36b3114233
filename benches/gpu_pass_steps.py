"""The steps of the GPU pass (benches/gpu_pass.py); each runs in a process of its own.

A step is ``step(ctx)``: it calls ``ctx.row(...)`` once per figure as soon as the figure exists (a
step stopped at its time limit keeps what it measured) and raises ``Skip(reason)`` when it cannot
run here. ``ctx.sizes`` is ``GPU`` or, for ``--dry-run``, ``TOY`` (CPU, reference paths). The
measuring code of the suites is imported from them (bench_info_nce, bench_attention_pool,
bench_video_path, bench_train), not repeated here.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Optional parts: (label, module, how to get it on an offline GPU host).
OPTIONAL = [
    ("DALI", "nvidia.dali", "staged in parts by benches/gpu_stage.py: `python benches/gpu_pass.py --plan --calls`"),
    ("PyAV", "av", "staged with DALI by benches/gpu_stage.py (`--plan --calls`)"),
    ("PyNvVideoCodec", "PyNvVideoCodec", "`python benches/gpu_stage.py pack --extra pynvvideocodec==2.2.4` "
                                         "(one more part); NVDEC only"),
    ("Inf-CL", "inf_cl", "carried with the plan's first call (.gpu/call1, made by `gpu_stage.py pack`)"),
]
# Nominal HBM bandwidth (GB/s) by device-name fragment, most specific first.
HBM_GBPS = [("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("A100-SXM4-80GB", 2039),
            ("A100", 1555)]


class Skip(Exception):
    """The step cannot run here; the message says why and what would make it run."""


@dataclass(frozen=True)
class Sizes:
    info_nce: Dict[str, int]  # step label -> N = M
    info_nce_dim: int
    dtype: str
    pool_batch: int
    pool_shapes: Dict[str, Tuple[int, int, int]]  # step label -> (C, H, W)
    pool_hiddens: Tuple[int, ...]
    image_size: int
    store_clips: int
    store_frames: int  # stored frames per clip (8 fps)
    store_hw: Tuple[int, int]
    loader_batch: int
    loader_batches: int
    video_format: str  # a key of bench_video_path.FORMATS
    video_files: int
    video_seconds: float
    video_repeat: int  # times each file is listed in the loaders' manifest
    video_batch: int
    video_batches: int
    reader_deltas: Tuple[int, ...]  # frames between the two frames of a DALI reader "pair"
    train_arch: str
    train_size: int
    train_batch: int
    train_steps: int
    train_window: int


GPU = Sizes(info_nce={"4k": 4096, "16k": 16384, "64k": 65536}, info_nce_dim=256, dtype="bfloat16", pool_batch=512,
            pool_shapes={"7x7": (2048, 7, 7), "14x14": (1024, 14, 14)}, pool_hiddens=(0, 512), image_size=224,
            store_clips=512, store_frames=24, store_hw=(256, 341), loader_batch=256, loader_batches=16,
            video_format="h264-256p-gop16", video_files=16, video_seconds=10.0, video_repeat=16, video_batch=64,
            video_batches=16, reader_deltas=(8, 32), train_arch="resnet50", train_size=224, train_batch=256,
            train_steps=30, train_window=10)
# Dry run: DALI's CPU video decoders read VP9, not H.264, so the toy corpus is VP9.
TOY = Sizes(info_nce={"4k": 64, "16k": 128, "64k": 256}, info_nce_dim=32, dtype="float32", pool_batch=4,
            pool_shapes={"7x7": (64, 7, 7), "14x14": (32, 14, 14)}, pool_hiddens=(0, 16), image_size=32,
            store_clips=8, store_frames=24, store_hw=(64, 86), loader_batch=4, loader_batches=2,
            video_format="vp9-256p-gop16", video_files=2, video_seconds=2.0, video_repeat=4, video_batch=4,
            video_batches=2, reader_deltas=(8,), train_arch="resnet18", train_size=32, train_batch=4,
            train_steps=4, train_window=2)


class Context:
    """What a step sees: sizes, the work folder (shared by the steps of one pass) and ``row``."""

    def __init__(self, dry_run: bool, work: Path, rows_path: Optional[Path] = None):
        self.dry_run, self.work, self.rows_path = dry_run, Path(work), rows_path
        self.sizes = TOY if dry_run else GPU
        self.store = self.work / "store"
        self.videos = self.work / "videos"
        self.manifest = self.work / "videos.jsonl"  # each file once
        self.manifest_repeat = self.work / "videos-repeat.jsonl"  # each file video_repeat times

    @property
    def cuda(self) -> bool:
        import torch

        return not self.dry_run and torch.cuda.is_available()

    def row(self, **fields) -> None:
        clean = {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                 for key, value in fields.items()}
        print("row:", json.dumps(clean), flush=True)
        if self.rows_path is not None:
            with open(self.rows_path, "a") as handle:
                handle.write(json.dumps({"row": clean}) + "\n")

    def device_info(self) -> dict:
        path = self.work / "device.json"
        return json.loads(path.read_text()) if path.is_file() else {}


# ----------------------------------------------------------------------------- helpers


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def time_ms(step: Callable[[], None], cuda: bool, grads=()) -> float:
    """Median ms of ``step`` (which need not synchronise): CUDA events through Triton's do_bench
    (warm-up and compilation excluded, L2 flushed between calls), or 3 host-timed calls on a CPU."""
    if cuda:
        from triton.testing import do_bench

        return float(do_bench(step, warmup=25, rep=250, grad_to_none=list(grads), return_mode="median"))
    step()  # compilation / first-call work stays out
    times = []
    for _ in range(3):
        for tensor in grads:
            tensor.grad = None
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1e3)
    return sorted(times)[1]


def peak_extra_gb(step: Callable[[], None], cuda: bool) -> Optional[float]:
    """GPU memory allocated above what was held before one call of ``step`` (None on a CPU)."""
    if not cuda:
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def _free(cuda: bool) -> None:
    import gc

    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def require(label: str) -> None:
    """Skip unless the optional part ``label`` (see OPTIONAL) imports."""
    module, hint = next((module, hint) for name, module, hint in OPTIONAL if name == label)
    try:
        importlib.import_module(module)
    except Exception as error:  # ImportError, or a library that fails to load
        raise Skip(f"{label} not importable ({type(error).__name__}: {str(error)[:120]}); {hint}") from None


def require_file(path: Path, made_by: str) -> None:
    if not path.exists():
        raise Skip(f"{path.name} is missing: step {made_by} did not write it")


def _forever(loader):
    while True:  # epoch after epoch, as training iterates
        yield from loader


def loader_pairs_per_s(loader, batches: int, cuda: bool, warmup: int = 2, max_seconds: float = 6.0,
                       stream=None) -> float:
    """Pairs/s over ``batches`` batches (fewer once ``max_seconds`` have passed, at least 2) after
    ``warmup`` batches (pipeline build, workers, file opening); ``stream``: batches of ``loader``
    to go on taking afterwards (``_forever(loader)``), else a new one."""
    stream = _forever(loader) if stream is None else stream
    for _ in range(warmup):
        next(stream)
    _sync(cuda)
    started, pairs = time.perf_counter(), 0
    for index in range(batches):
        pairs += len(next(stream)["sample_ids"])
        if index >= 1 and time.perf_counter() - started > max_seconds:
            break
    _sync(cuda)
    return pairs / (time.perf_counter() - started)


# The GPU's own work in a trace: vito_fast.decoders.trial.gpu_work_spans (kernels, copies, memsets).
# The hardware JPEG and video decoders (NVJPG, NVDEC) are neither: their own time does not appear,
# the SM work around them (colour conversion, copies) does.


def busy_us(spans: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
    """(Σ of the spans' lengths, length of their union) of (start, end) intervals: the work summed
    over every stream, and the time anything ran."""
    total = union = 0.0
    reach = -math.inf
    for start, end in sorted(spans):
        total += end - start
        union += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total, union


def loader_gpu_time(stream, batches: int, cuda: bool,
                    max_seconds: float = 3.0) -> Tuple[Optional[float], Optional[float]]:
    """(GPU ms per pair, GPU busy % of the wall time) while the loader runs alone and warm, over
    ``batches`` batches taken from ``stream`` (fewer once ``max_seconds`` have passed, at least 2).

    The profiler's CUPTI trace records every kernel, copy and memset of the process (nvJPEG's, DALI's
    and the stage's, on whatever stream or thread; see ``gpu_work_spans``). GPU ms per pair: their
    durations summed, over the pairs taken (what the loader takes from a training step's GPU). Busy
    %: the union of those intervals over the window's wall time (near 100 %: the GPU bounds the
    loader; less: the host does). The trace costs some speed, so the window's pairs/s is not
    reported. (None, None) on a CPU, where the same window runs with a CPU-only trace."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(cuda)
    with profile(activities=activities) as trace:
        started, pairs, taken = time.perf_counter(), 0, 0
        while taken < batches and (taken < 2 or time.perf_counter() - started < max_seconds):
            pairs += len(next(stream)["sample_ids"])
            taken += 1
        _sync(cuda)
        window_us = (time.perf_counter() - started) * 1e6
    if not cuda:
        return None, None
    from vito_fast.decoders.trial import gpu_work_spans

    spans = gpu_work_spans(trace)
    if not spans:
        raise RuntimeError("the profiler recorded no GPU activity (is CUPTI available?)")
    total, union = busy_us(spans)
    return total / 1e3 / pairs, 100 * min(1.0, union / window_us)


def random_pairs(records, count: int, seed: int) -> List[Tuple[object, List[int]]]:
    """(record, [t, t + d]) with Δt uniform in [0, 2.5] s, the default of ViewConfig."""
    rng = np.random.default_rng(seed)
    pairs = []
    for index in rng.integers(0, len(records), count):
        record = records[int(index)]
        delta = min(int(round(rng.uniform(0, 2.5) * record.fps)), record.num_frames - 1)
        first = int(rng.integers(0, record.num_frames - delta))
        pairs.append((record, [first, first + delta]))
    return pairs


# ----------------------------------------------------------------------------- 0. the card


def device(ctx: Context) -> None:
    """Card, versions and optional parts (written to device.json for the other steps), the copy
    bandwidth (baseline of attention pooling's GB/s) and the bf16 matrix-product rate."""
    import platform

    import torch
    import torchvision
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(), "optional": {}}
    for label, module, hint in OPTIONAL:
        try:
            info["optional"][label] = {"available": True,
                                       "version": str(getattr(importlib.import_module(module), "__version__", "?"))}
        except Exception as error:
            info["optional"][label] = {"available": False,
                                       "reason": f"{module} not importable ({type(error).__name__}); {hint}"}
    info["optional"]["torch.compile"] = (
        {"available": True, "version": "backend='eager' (dry run: no Inductor code generation)"} if ctx.dry_run
        else {"available": True, "version": f"Inductor, torch {torch.__version__}"})
    dev = "cuda" if ctx.cuda else "cpu"
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gb=round(props.total_memory / 1e9, 1), sms=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}", uuid=str(getattr(props, "uuid", "")) or None,
                    hbm_nominal_gbps=next((gbps for key, gbps in HBM_GBPS if key in props.name), None))
    else:
        info.update(name=f"CPU, {os.cpu_count()} cores (dry run)", hbm_nominal_gbps=None)
    size = (1 << 30) if ctx.cuda else (64 << 20)
    source = torch.empty(size, dtype=torch.uint8, device=dev).random_(0, 255)
    target = torch.empty_like(source)
    info["copy_gbps"] = 2 * size / (time_ms(lambda: target.copy_(source), ctx.cuda) * 1e-3) / 1e9
    del source, target
    n = 8192 if ctx.cuda else 512
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    info["matmul_tflops"] = 2 * n**3 / (time_ms(lambda: a @ b, ctx.cuda) * 1e-3) / 1e12
    (ctx.work / "device.json").write_text(json.dumps(info, indent=1))
    ctx.row(what="device-to-device copy", value=float(f"{info['copy_gbps']:.4g}"), unit="GB/s (read + write)")
    ctx.row(what=f"{n}³ matrix product, {dtype}", value=float(f"{info['matmul_tflops']:.4g}"), unit="TFLOP/s")


# ----------------------------------------------------------------------------- 1. tests


def _pytest(ctx: Context, suite: str, args: Sequence[str]) -> int:
    """Run pytest with its output in logs/<suite>.log; one row with the counts."""
    log = ctx.work / "logs" / f"pytest-{suite}.log"
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *args]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    print(text[-6000:], flush=True)
    summary = next((line for line in reversed(text.splitlines()) if re.search(r"\bin [\d.]+s\b", line)), "")
    counts = {word: 0 for word in ("passed", "failed", "skipped", "deselected", "errors")}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)\b", summary):
        counts["errors" if word.startswith("error") else word] += int(number)
    failures = [line[:160] for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))][:8]
    ctx.row(suite=suite, **counts, seconds=round(time.perf_counter() - started, 1), exit_code=code,
            failures="; ".join(failures))
    return code


# (test_torch_augment: the torch device stage's graph on the chip; it needs nothing staged either)
KERNEL_TESTS = ("tests/test_info_nce.py", "tests/test_attention_pool.py", "tests/test_verify.py",
                "tests/test_torch_augment.py")
# The training test whose model runs on the chip (fused kernels against the reference ops); the
# other training tests pin the CPU (CI runs them).
TRAIN_TESTS = ("test_fused_and_reference_ops_give_the_same_losses",)
LOADER_TESTS = ("tests/test_loader.py", "tests/test_loader_faults.py", "tests/test_prepare.py",
                "tests/test_video_decoders.py")


def _parallel() -> List[str]:
    """pytest-xdist over the host's cores (two left for the main process and the GPU's driver)."""
    if importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(max(1, min(12, (os.cpu_count() or 1) - 2)))]


def tests_kernels(ctx: Context) -> None:
    """Every kernel test file in full on the chip (odd sizes, small tiles, bf16: CUDA-only tests too)
    and the training tests whose model runs there; the dry run collects them only (CI runs them)."""
    files = [name for name in KERNEL_TESTS if (ROOT / name).is_file()]
    nodes = files + [f"tests/test_train.py::{name}" for name in TRAIN_TESTS]
    code = _pytest(ctx, "kernels+train", nodes + (["--co"] if ctx.dry_run else _parallel()))
    if code not in (0, 5):
        raise RuntimeError(f"kernel and training tests: pytest exit {code} (see the failures column)")


def tests_loader(ctx: Context) -> None:
    """The CUDA-only loader and extraction tests (they write their clips with PyAV and decode with DALI)."""
    require("DALI")
    require("PyAV")
    code = _pytest(ctx, "loader", ["-m", "cuda", "--continue-on-collection-errors", *LOADER_TESTS]
                   + (["--co"] if ctx.dry_run else []))
    if code not in (0, 5):
        raise RuntimeError(f"loader tests: pytest exit {code} (see the failures column)")


# ----------------------------------------------------------------------------- 2. InfoNCE


def _inf_cl_loss(tau: float):
    """Inf-CL on one GPU: cal_flash_loss (its cal_inf_loss is the ring over torch.distributed ranks and
    needs a process group), on normalised features with the logit scale 1/τ."""
    import torch.nn.functional as F
    from inf_cl import cal_flash_loss

    return lambda q, k: cal_flash_loss(F.normalize(q, dim=-1), F.normalize(k, dim=-1), scale=1.0 / tau).mean()


def info_nce(ctx: Context, label: str) -> None:
    """fwd+bwd of N = M, D, τ = 0.1: eager, ours, ours with k needing no grad, Inf-CL (torch.compile:
    step compile_kernels, late in the pass, one shape)."""
    import torch

    import bench_info_nce as suite
    from vito_fast.ops.info_nce import info_nce as ours

    n, d, cuda = ctx.sizes.info_nce[label], ctx.sizes.info_nce_dim, ctx.cuda
    dtype, dev = getattr(torch, ctx.sizes.dtype), "cuda" if cuda else "cpu"
    backend = "triton" if cuda else "auto"  # auto = the PyTorch reference on a CPU
    tau = suite.TEMPERATURE
    providers = [("eager", "eager", True), ("ours", "ours", True), ("ours, k without grad", "ours", False),
                 ("Inf-CL", "inf_cl", True)]
    for name, kind, k_grad in providers:
        reason = "" if kind == "ours" else suite.skip_reason(kind, n)
        if reason:
            ctx.row(N=n, D=d, provider=name, status="skipped", note=reason)
            continue
        q = torch.randn(n, d, device=dev, dtype=dtype, requires_grad=True)
        k = torch.randn(n, d, device=dev, dtype=dtype, requires_grad=k_grad)
        grads = [q, k] if k_grad else [q]
        try:
            fn = (lambda q, k: ours(q, k, tau, backend=backend)) if kind == "ours" else \
                _inf_cl_loss(tau) if kind == "inf_cl" else suite._loss_fn(kind, f"{n}-{d}")
            ms = time_ms(lambda: fn(q, k).backward(), cuda, grads)
            q.grad = k.grad = None  # the gradients count in the extra memory, as in bench_info_nce
            peak = peak_extra_gb(lambda: fn(q, k).backward(), cuda)
        except Exception as error:  # OOM, an Inf-CL API change, a compile failure: the next provider goes on
            ctx.row(N=n, D=d, provider=name, status="failed", note=f"{type(error).__name__}: {str(error)[:150]}")
        else:
            ctx.row(N=n, D=d, provider=name, status="ok", ms=ms, peak_extra_gb=peak,
                    tflops=suite.flops("full", n, n, d) / (ms * 1e-3) / 1e12)
        del q, k
        _free(cuda)


# ----------------------------------------------------------------------------- 3. attention pooling


def _pool_suite(ctx: Context):
    """bench_attention_pool set to this pass's batch, dtype and device (it reads its environment
    once, at import, and the pass's parent may have imported it already)."""
    import torch

    import bench_attention_pool as suite

    suite.BATCH, suite.DTYPE = ctx.sizes.pool_batch, getattr(torch, ctx.sizes.dtype)
    suite.DEVICE = "cuda" if ctx.cuda else "cpu"
    return suite


def attention_pool(ctx: Context, label: str) -> None:
    """fwd+bwd at B × (C, H, W), hidden 0 and 512: eager, ours (torch.compile: step compile_kernels);
    GB/s of compulsory traffic and the share of the roofline."""
    channels, height, width = ctx.sizes.pool_shapes[label]
    import torch

    suite = _pool_suite(ctx)
    from vito_fast.ops.attention_pool import attention_pool as ours
    from vito_fast.reference.attention_pool import attention_pool_reference as reference

    cuda, batch = ctx.cuda, ctx.sizes.pool_batch
    dtype, dev = getattr(torch, ctx.sizes.dtype), "cuda" if cuda else "cpu"
    backend = "triton" if cuda else "auto"
    info = ctx.device_info()
    for hidden in ctx.sizes.pool_hiddens:
        inputs = suite._inputs(channels, height, width, hidden)
        grad = torch.randn(batch, channels, device=dev, dtype=dtype)
        traffic = suite.compulsory_bytes("full", batch, channels, height * width, hidden, torch.finfo(dtype).bits // 8)
        flops = suite.compulsory_flops("full", batch, channels, height * width, hidden)
        providers = [("eager", reference), ("ours", lambda *a: ours(*a, backend=backend))]
        for name, fn in providers:
            fields = dict(shape=f"{batch}x{channels}x{height}x{width}", hidden=hidden, provider=name)
            try:
                ms = time_ms(lambda: fn(*inputs)[0].backward(grad), cuda, [t for t in inputs if t is not None])
            except Exception as error:
                ctx.row(**fields, status="failed", note=f"{type(error).__name__}: {str(error)[:150]}")
                continue
            ctx.row(**fields, status="ok", ms=ms, **pool_figures(info, ms, traffic, flops))
        del inputs, grad, providers
        _free(cuda)


def pool_figures(info: dict, ms: float, traffic: int, flops: int) -> dict:
    """GB/s of compulsory traffic and its share of the copy bandwidth and nominal HBM (the verdict
    of the linear pools, which only move bytes), and the share of the roofline reached: the larger
    of FLOPs at the measured matrix rate and bytes at the copy bandwidth, over ms (the verdict of
    the MLP pools, whose GEMMs make them tensor-bound)."""
    gbps = traffic / (ms * 1e-3) / 1e9
    floors = [flops / (info["matmul_tflops"] * 1e12) if info.get("matmul_tflops") else 0.0,
              traffic / (info["copy_gbps"] * 1e9) if info.get("copy_gbps") else 0.0]
    return dict(gb_per_s=gbps, tflops=flops / (ms * 1e-3) / 1e12,
                pct_of_copy=100 * gbps / info["copy_gbps"] if info.get("copy_gbps") else None,
                pct_of_hbm=100 * gbps / info["hbm_nominal_gbps"] if info.get("hbm_nominal_gbps") else None,
                pct_of_roofline=100 * max(floors) * 1e3 / ms if max(floors) > 0 else None)


def _compiled_time(step: Callable[[], None], cuda: bool, grads) -> Tuple[float, float]:
    """(seconds of the first call, which compiles; median ms of the compiled step after it)."""
    started = time.perf_counter()
    step()
    _sync(cuda)
    return time.perf_counter() - started, time_ms(step, cuda, grads)


def compile_kernels(ctx: Context) -> None:
    """torch.compile of the references, one shape per op (late in the pass: each compiles first):
    InfoNCE at N = M = 16k, attention pooling at 7×7 with training's MLP (hidden 512)."""
    import torch

    import bench_info_nce as suite

    pool_suite = _pool_suite(ctx)
    from vito_fast.reference.attention_pool import attention_pool_reference

    cuda, dev = ctx.cuda, "cuda" if ctx.cuda else "cpu"
    dtype = getattr(torch, ctx.sizes.dtype)
    n, d = ctx.sizes.info_nce["16k"], ctx.sizes.info_nce_dim
    reason = suite.skip_reason("compile", n)
    if reason:
        ctx.row(op="info_nce", N=n, D=d, provider="torch.compile", status="skipped", note=reason)
    else:
        q = torch.randn(n, d, device=dev, dtype=dtype, requires_grad=True)
        k = torch.randn(n, d, device=dev, dtype=dtype, requires_grad=True)
        fn = suite._loss_fn("compile", f"full-{n}-{d}")
        compile_s, ms = _compiled_time(lambda: fn(q, k).backward(), cuda, [q, k])
        ctx.row(op="info_nce", N=n, D=d, provider="torch.compile", status="ok", ms=ms, compile_s=compile_s,
                tflops=suite.flops("full", n, n, d) / (ms * 1e-3) / 1e12)
        del q, k, fn
        _free(cuda)
    channels, height, width = ctx.sizes.pool_shapes["7x7"]
    hidden, batch = max(ctx.sizes.pool_hiddens), ctx.sizes.pool_batch
    inputs = pool_suite._inputs(channels, height, width, hidden)
    grad = torch.randn(batch, channels, device=dev, dtype=dtype)
    fn = torch.compile(attention_pool_reference, dynamic=False)
    compile_s, ms = _compiled_time(lambda: fn(*inputs)[0].backward(grad), cuda, [t for t in inputs if t is not None])
    size = torch.finfo(dtype).bits // 8
    traffic = pool_suite.compulsory_bytes("full", batch, channels, height * width, hidden, size)
    flops = pool_suite.compulsory_flops("full", batch, channels, height * width, hidden)
    ctx.row(op="attention_pool", shape=f"{batch}x{channels}x{height}x{width}", hidden=hidden,
            provider="torch.compile", status="ok", ms=ms, compile_s=compile_s,
            **pool_figures(ctx.device_info(), ms, traffic, flops))


# ----------------------------------------------------------------------------- 4. loader


def _clip_jpegs(clip: int, frames: int, height: int, width: int) -> List[bytes]:
    """JPEGs (quality 90) of a panning blocky-noise texture: real-sized payloads, never constant."""
    import io

    from PIL import Image

    rng = np.random.default_rng(clip)
    shift = 6  # pixels per stored frame
    texture = rng.integers(0, 256, size=(height // 8 + 1, (width + shift * frames) // 8 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(8, axis=0).repeat(8, axis=1)
    payloads = []
    for frame in range(frames):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(texture[:height, shift * frame: shift * frame + width])).save(
            buffer, format="JPEG", quality=90)
        payloads.append(buffer.getvalue())
    return payloads


def frame_store(ctx: Context) -> None:
    """A 256p frame store written with PIL (no PyAV needed): store_clips clips of store_frames JPEGs."""
    from concurrent.futures import ThreadPoolExecutor

    from vito_fast.prepare.frame_store_write import ShardWriter
    from vito_fast.data.frame_store_index import arrays_from_clips, write_index

    sizes, started = ctx.sizes, time.perf_counter()
    (height, width), frames, fps = sizes.store_hw, sizes.store_frames, 8
    ctx.store.mkdir(parents=True, exist_ok=True)
    writer, clips = ShardWriter(ctx.store, "shard-00000.tar"), []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # PIL releases the GIL while encoding
        jobs = pool.map(lambda clip: _clip_jpegs(clip, frames, height, width), range(sizes.store_clips))
        for clip, jpegs in enumerate(jobs):
            ranges = [writer.add_frame(f"{clip:08d}/{k:06d}.jpg", jpeg) for k, jpeg in enumerate(jpegs)]
            times = [k / fps for k in range(frames)]
            clips.append({"manifest_index": clip, "shard": 0, "source": f"generated/{clip:05d}.mp4",
                          "label": f"class{clip % 8}", "clip_start": 0.0, "clip_end": frames / fps, "source_fps": 25.0,
                          "width": width, "height": height, "frame_offsets": [offset for offset, _ in ranges],
                          "frame_sizes": [size for _, size in ranges], "source_times": times,
                          "source_frames": [int(t * 25) for t in times]})
    shard_bytes = writer.finish()
    arrays, labels = arrays_from_clips(clips)
    header = {"fps": fps, "short_side": height, "quality": 90, "device": "cpu", "settings_digest": "gpu_pass",
              "shards": [{"name": "shard-00000.tar", "bytes": shard_bytes}], "skipped": []}
    write_index(ctx.store, header, arrays, labels)
    ctx.row(clips=sizes.store_clips, frames=sizes.store_clips * frames, size=f"{width}x{height}",
            mean_jpeg_kb=round(float(np.mean(arrays["frame_sizes"])) / 1e3, 1),
            seconds=round(time.perf_counter() - started, 1))


STORE_DECODERS = {("dali", "gpu"): "DALI: nvJPEG (mixed, hw_decoder_load=0.9)",
                  ("dali", "cpu"): "DALI: libjpeg-turbo (CPU)",
                  ("torch", "gpu"): "torch: torchvision decode_jpeg (nvJPEG, hardware decoder), batched ops",
                  ("torch", "cpu"): "torch: torchvision decode_jpeg (libjpeg), batched ops"}


def _store_loader(ctx: Context, backend: str, device: str) -> None:
    """PairLoader(backend=...) on the frame store with every augmentation: pairs/s (warm-up, then at
    most 4 s) and, on a GPU, the GPU time per pair in a profiled window after it (``loader_gpu_time``)."""
    require_file(ctx.store / "index.json", "frame_store")
    from vito_fast.data import LoaderConfig, PairLoader

    sizes, on_gpu = ctx.sizes, device == "gpu"
    config = LoaderConfig(image_size=sizes.image_size, dtype="bfloat16", hw_decoder_load=0.9, backend=backend)
    batches = sizes.loader_batches if on_gpu else max(2, sizes.loader_batches // 2)
    note = "" if on_gpu else "GPU time: none on a CPU"
    with PairLoader(str(ctx.store), sizes.loader_batch, device=device, seed=0, config=config) as loader:
        stream = _forever(loader)
        rate = loader_pairs_per_s(loader, batches, on_gpu, max_seconds=4.0, stream=stream)
        try:
            gpu_ms, busy = loader_gpu_time(stream, batches // 2 if on_gpu else 2, on_gpu)
        except Exception as error:  # the profiler, not the loader: keep the pairs/s
            gpu_ms, busy, note = None, None, f"GPU time not measured: {type(error).__name__}: {str(error)[:120]}"
    ctx.row(candidate=f"frame store, {STORE_DECODERS[backend, device]}", backend=backend, device=device,
            status="ok", pairs_per_s=rate, gpu_ms_per_pair=gpu_ms, gpu_busy_pct=busy, batch=sizes.loader_batch,
            includes=f"read + decode + every augmentation, {sizes.image_size} px", note=note)


def loader_store(ctx: Context) -> None:
    """DALI's graph on the frame store: nvJPEG (hardware decoder first) on the GPU; the dry run's CPU."""
    require("DALI")
    _store_loader(ctx, "dali", "gpu" if ctx.cuda else "cpu")


def loader_store_cpu(ctx: Context) -> None:
    """DALI's graph on the frame store on the host's cores (libjpeg-turbo): the CPU path."""
    require("DALI")
    _store_loader(ctx, "dali", "cpu")


def loader_store_torch(ctx: Context) -> None:
    """The torch stage on the frame store: one batched nvJPEG decode_jpeg, then batched torch ops
    (needs nothing but torch and torchvision)."""
    _store_loader(ctx, "torch", "gpu" if ctx.cuda else "cpu")


def write_corpus(ctx: Context, paths: Sequence[Path], write: Callable, once: Path, repeat: Path) -> list:
    """``write(path, seed)`` for each of ``paths`` in parallel (forked processes), then the scan: the
    records, in ``once`` and, each ``sizes.video_repeat`` times, in ``repeat``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from vito_fast.data.manifest import write_manifest
    from vito_fast.prepare.scan import scan_videos

    folder = Path(paths[0]).parent
    folder.mkdir(parents=True, exist_ok=True)
    workers = min(len(paths), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(write, paths, range(len(paths))))
    records, rejected = scan_videos([str(folder)], workers=workers, progress=False)
    if rejected or not records:
        raise RuntimeError(f"video corpus {folder.name}: the scan rejected {rejected[:2]}")
    write_manifest(once, records)
    write_manifest(repeat, records * ctx.sizes.video_repeat)
    return records


def _write_format(path: Path, seed: int, fmt: str, seconds: float) -> None:
    import bench_video_path as suite

    suite.write_video(path, fmt, seconds, seed)


def video_corpus(ctx: Context) -> None:
    """256p GOP-16 H.264 files (VP9 in the dry run), written by bench_video_path and scanned."""
    require("PyAV")
    from functools import partial

    import bench_video_path as suite

    sizes, started = ctx.sizes, time.perf_counter()
    suffix = suite.FORMATS[sizes.video_format][1]
    paths = [ctx.videos / f"{index:03d}{suffix}" for index in range(sizes.video_files)]
    write = partial(_write_format, fmt=sizes.video_format, seconds=sizes.video_seconds)
    records = write_corpus(ctx, paths, write, ctx.manifest, ctx.manifest_repeat)
    ctx.row(format=sizes.video_format, files=len(records), codec=records[0].codec,
            size=f"{records[0].width}x{records[0].height}", seconds_each=sizes.video_seconds,
            write_seconds=round(time.perf_counter() - started, 1))


def _video_loader(ctx: Context, decoder: str, candidate: str) -> None:
    require("DALI")
    require_file(ctx.manifest_repeat, "video_corpus")
    from vito_fast.data import LoaderConfig, PairLoader
    from vito_fast.data.config import decode_workers

    sizes, device = ctx.sizes, "gpu" if ctx.cuda else "cpu"
    workers = decode_workers(None if ctx.cuda else 1)  # the loader's own rule on a GPU host
    config = LoaderConfig(image_size=sizes.image_size, dtype="bfloat16", decode_workers=workers,
                          video_decoder=decoder)
    with PairLoader(str(ctx.manifest_repeat), sizes.video_batch, device=device, seed=0, config=config) as loader:
        rate = loader_pairs_per_s(loader, sizes.video_batches, ctx.cuda)
        replaced = loader.stats.replaced
    ctx.row(candidate=candidate, device=device, status="ok", pairs_per_s=rate, batch=sizes.video_batch,
            includes=f"decode + every augmentation, {sizes.image_size} px; {workers} decode worker(s)",
            note=f"{replaced} samples replaced" if replaced else "")


def video_pyav(ctx: Context) -> None:
    """PairLoader on the videos: PyAV seek-to-keyframe decoding in worker processes (the default)."""
    require("PyAV")
    _video_loader(ctx, "pyav", "PairLoader, PyAV decode workers")


def video_dali_decoder(ctx: Context) -> None:
    """PairLoader with video_decoder="dali": fn.decoders.video(frames=[t, t+d]) on each file's bytes."""
    _video_loader(ctx, "dali", "PairLoader, DALI fn.decoders.video")


def video_dali_reader(ctx: Context) -> None:
    """DALI's sequence reader: two frames `delta` apart (it decodes every frame in between), decode only."""
    require("DALI")
    require_file(ctx.manifest, "video_corpus")
    from nvidia.dali import fn, pipeline_def

    from vito_fast.data.manifest import read_manifest

    sizes, gpu = ctx.sizes, ctx.cuda
    files = [record.path for record in read_manifest(ctx.manifest)]
    # fn.readers.video is GPU-only; the dry run drives the same graph through the experimental CPU reader.
    reader = fn.readers.video if gpu else fn.experimental.readers.video
    name = "DALI fn.readers.video" if gpu else "DALI fn.experimental.readers.video (CPU, dry run)"
    for delta in sizes.reader_deltas:
        @pipeline_def(batch_size=sizes.video_batch, num_threads=min(4, os.cpu_count() or 1),
                      device_id=0 if gpu else None, prefetch_queue_depth=2)
        def pairs():
            return reader(device="gpu" if gpu else "cpu", filenames=files, sequence_length=2, stride=delta,
                          random_shuffle=True, initial_fill=2 * sizes.video_batch, name="reader")

        pipe = pairs()
        pipe.build()
        for _ in range(2):
            pipe.run()
        started, runs = time.perf_counter(), 0
        while runs < sizes.video_batches and (runs < 2 or time.perf_counter() - started < 6.0):
            pipe.run()  # outputs() waits until the iteration's GPU work is done
            runs += 1
        rate = sizes.video_batch * runs / (time.perf_counter() - started)
        ctx.row(candidate=f"{name}, Δ={delta} frames", device="gpu" if gpu else "cpu", status="ok",
                pairs_per_s=rate, batch=sizes.video_batch, includes="decode only (every frame between the two)")
        del pipe


def _as_tensor(frame):
    """A decoded frame as a CUDA tensor, through DLPack or else the CUDA array interface."""
    import torch

    try:
        return torch.from_dlpack(frame)
    except (TypeError, AttributeError, RuntimeError):
        return torch.as_tensor(frame, device="cuda")


def video_pynvc(ctx: Context) -> None:
    """PyNvVideoCodec SimpleDecoder: the two frames of a pair by index, RGB on the GPU, decode only."""
    if not ctx.cuda:
        raise Skip("PyNvVideoCodec decodes on NVDEC only: needs a GPU")
    require("PyNvVideoCodec")
    require_file(ctx.manifest, "video_corpus")
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import PyNvVideoCodec as nvc
    import torch

    from vito_fast.data.manifest import read_manifest

    records = read_manifest(ctx.manifest)
    local = threading.local()  # one decoder per file and thread

    def decode(record, frames):
        decoders = local.__dict__.setdefault("decoders", {})
        if record.path not in decoders:
            decoders[record.path] = nvc.SimpleDecoder(record.path, gpu_id=0, use_device_memory=True,
                                                      output_color_type=nvc.OutputColorType.RGB)
        return [_as_tensor(frame) for frame in decoders[record.path].get_batch_frames_by_index(frames)]

    shape = tuple(decode(records[0], [0, 1])[0].shape)
    for threads in (1, 4):
        pairs = random_pairs(records, 64 * threads, seed=threads)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda job: decode(job[0], [0]), [(r, None) for r in records] * threads))  # open files
            torch.cuda.synchronize()
            started = time.perf_counter()
            list(pool.map(lambda job: decode(*job), pairs))
            torch.cuda.synchronize()
        ctx.row(candidate=f"PyNvVideoCodec SimpleDecoder, {threads} thread(s)", device="gpu", status="ok",
                pairs_per_s=len(pairs) / (time.perf_counter() - started), batch=1,
                includes=f"decode only, RGB {shape} on the GPU; Δt uniform 0-2.5 s")


def decoders(ctx: Context) -> None:
    """vito_fast.decoders.choice on the corpus: every decoder's trial (verified against PyAV or why
    not; pairs/s, CPU ms per pair) and the choice, as `vito-fast bench decoders` prints it."""
    require("PyAV")
    require_file(ctx.manifest, "video_corpus")
    from vito_fast.decoders.choice import choose_decoder
    from vito_fast.data.manifest import read_manifest

    device = "gpu" if ctx.cuda else "cpu"
    choice = choose_decoder(read_manifest(ctx.manifest), device=device, samples=ctx.sizes.video_batch,
                            timeout=60, cache_path=ctx.work / "video_decoders.json", refresh=True)
    for trial in choice.trials:
        ctx.row(candidate=f"{trial.decoder} ({choice.codec} {choice.size})", device=device, status=trial.status,
                pairs_per_s=trial.pairs_per_s, cpu_ms_per_pair=trial.cpu_ms_per_pair, min_luma_psnr_db=trial.min_psnr_db,
                chosen=trial.decoder == choice.decoder, note=trial.reason)


# ----------------------------------------------------------------------------- 5. training


def train(ctx: Context, provider: str, backend: Optional[str] = None) -> None:
    """bench_train.measure: the whole VITO step as the loop runs it (synthetic pairs, or the frame
    store through the PairLoader with ``backend``: "dali" or "torch")."""
    import bench_train

    sizes, data = ctx.sizes, None
    if provider.startswith("loader"):
        if backend == "dali":
            require("DALI")
        require_file(ctx.store / "index.json", "frame_store")
        data = str(ctx.store)
    result = bench_train.measure(provider, sizes.train_arch, sizes.train_size, sizes.train_batch, sizes.train_steps,
                                 sizes.train_window, data, [f"data.backend={backend}"] if backend else [])
    ctx.row(provider=provider, **({"backend": backend} if backend else {}), arch=sizes.train_arch,
            size=sizes.train_size, batch=sizes.train_batch, status="ok", pairs_per_s=result["pairs_per_s"],
            data_wait_pct=100 * result["data_wait"], peak_gb=result["peak_gb"])


# ----------------------------------------------------------------------------- 6. compile report


def _plain(value):
    """A JSON-ready copy of a report value (lists of plain values stay lists)."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str, bool)) for v in value):
        return list(value)
    return str(value)


def compile_report(ctx: Context) -> None:
    """benches/bench_compile.py: the roofline of the goal shapes (lower-bound ms on H100/H200), then
    compile_report()'s sm_90 variants (registers, spills, smem, wgmma), one row each."""
    try:
        import bench_compile
    except ImportError as error:
        raise Skip(f"compile report not available (benches/bench_compile.py: {error})") from None
    if not hasattr(bench_compile, "compile_report"):
        raise Skip("compile report not available (benches/bench_compile.py has no compile_report())")
    for row in getattr(bench_compile, "roofline", list)():
        ctx.row(kind="roofline", **{key: _plain(value) for key, value in row.items()})
    for row in bench_compile.compile_report():
        ctx.row(kind="variant", **{key: _plain(value) for key, value in dict(row).items()})


def injected_slow(ctx: Context) -> None:
    """Test only (--inject-slow-step): starts a child that sleeps, names both processes, and overruns
    its limit, so the runner must stop it with its child and go on."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    ctx.row(note="sleeping past the limit", pids=[os.getpid(), child.pid])
    time.sleep(3600)
