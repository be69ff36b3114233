"""Attention pooling: torch eager (the reference), torch.compile of it, and ours (Triton).

    pytest benches/bench_attention_pool.py --benchmark-only --benchmark-columns=median,rounds

Shapes: B × (C, H×W) ∈ {(2048, 7×7), (1024, 14×14)}, hidden ∈ {0, 512}; modes fwd (training
forward), bwd (backward of pooled only) and full (both). Each result carries in extra_info:
ms (median), GB/s of compulsory traffic and TFLOP/s of compulsory FLOPs, both counted by
`compulsory_bytes` / `compulsory_flops` below (never the recomputation). Triton is skipped
without a GPU. Env: VITO_BENCH_BATCH (default 512 on GPU, 32 on CPU), VITO_BENCH_DTYPE
(bfloat16 on GPU, float32 on CPU), VITO_BENCH_BLOCKS="4,128,64" (Triton tiles: the pooling
kernels' positions (they hold all channels) and the dh GEMM's rows (at least 16), channels and hidden
step; default: the launcher's choice) for tuning sweeps.
"""
from __future__ import annotations

import os

import pytest
import torch

from vito_fast.ops.attention_pool import attention_pool
from vito_fast.reference.attention_pool import attention_pool_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BATCH = int(os.environ.get("VITO_BENCH_BATCH", 512 if CUDA else 32))
DTYPE = getattr(torch, os.environ.get("VITO_BENCH_DTYPE", "bfloat16" if CUDA else "float32"))
BLOCKS = tuple(int(b) for b in os.environ["VITO_BENCH_BLOCKS"].split(",")) if os.environ.get("VITO_BENCH_BLOCKS") else None
SHAPES = [(2048, 7, 7), (1024, 14, 14)]
HIDDENS = [0, 512]
MODES = ["fwd", "bwd", "full"]
PROVIDERS = ["eager", "compile", "triton"]

_compiled = {}
_eager_seconds = {}  # (C, H, W, hidden, mode) -> eager median, for the speed-up column


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def compulsory_bytes(mode: str, batch: int, channels: int, n_pos: int, hidden: int, size: int) -> int:
    """fwd: read h, weights; write pooled, attn (fp32). bwd: read h, gy, weights; write dh and
    weight grads. full = fwd + bwd (h read twice: nothing can keep 100+ MB on chip between)."""
    weights = (hidden * channels + 2 * hidden if hidden else channels) * size
    feature = batch * channels * n_pos * size
    fwd = feature + weights + batch * channels * size + batch * n_pos * 4
    bwd = 2 * feature + batch * channels * size + 2 * weights
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


def compulsory_flops(mode: str, batch: int, channels: int, n_pos: int, hidden: int) -> int:
    """Multiply-adds × 2 of the math, no recomputation. fwd: logits (C·hidden or C per position)
    and the weighted sum (C per position); bwd: dh and dW1 (twice the logits' GEMM) + h·gy."""
    per_pos = channels * hidden if hidden else channels
    fwd = 2 * batch * n_pos * (per_pos + channels)
    bwd = 2 * batch * n_pos * (2 * per_pos + 2 * channels)
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


def _pool_fn(provider: str):
    if provider == "eager":
        return attention_pool_reference
    if provider == "compile":
        if "fn" not in _compiled:
            _compiled["fn"] = torch.compile(attention_pool_reference)
        return _compiled["fn"]
    return lambda *args: attention_pool(*args, backend="triton", block_sizes=BLOCKS)


def _inputs(channels: int, height: int, width: int, hidden: int):
    h = torch.randn(BATCH, channels, height, width, device=DEVICE, dtype=DTYPE)
    h = h.to(memory_format=torch.channels_last).requires_grad_(True)  # what the trunk produces

    def param(*shape, scale):
        return (scale * torch.randn(shape, device=DEVICE, dtype=DTYPE)).requires_grad_(True)

    w1 = param(hidden, channels, scale=channels**-0.5) if hidden else None
    b1 = param(hidden, scale=0.1) if hidden else None
    w2 = param(hidden or channels, scale=(hidden or channels) ** -0.5)
    b2 = param(scale=0.1)
    return h, w1, b1, w2, b2


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hidden", HIDDENS)
@pytest.mark.parametrize("channels,height,width", SHAPES, ids=[f"{c}x{h}x{w}" for c, h, w in SHAPES])
def test_attention_pool(benchmark, speedups, provider, mode, hidden, channels, height, width):
    if provider == "triton" and not CUDA:
        pytest.skip("Triton runs through the interpreter off-GPU: not a benchmark")
    fn = _pool_fn(provider)
    inputs = _inputs(channels, height, width, hidden)
    grad_pooled = torch.randn(BATCH, channels, device=DEVICE, dtype=DTYPE)

    def forward():
        return fn(*inputs)[0]

    def backward(pooled):
        pooled.backward(grad_pooled)
        _sync()

    def full():
        backward(forward())

    for _ in range(3):  # compile, autotune and allocator warm-up stay out of the timings
        full()
    rounds = 50 if CUDA else 10
    if mode == "fwd":
        benchmark.pedantic(lambda: (forward(), _sync()), rounds=rounds, warmup_rounds=1)
    elif mode == "bwd":
        def setup():
            pooled = forward()
            _sync()
            return (pooled,), {}

        benchmark.pedantic(backward, setup=setup, rounds=rounds, warmup_rounds=1)
    else:
        benchmark.pedantic(full, rounds=rounds, warmup_rounds=1)

    group = f"attention_pool {mode} B={BATCH} C={channels} HW={height}x{width} hidden={hidden} {DTYPE}"
    speedups.record(group, provider, benchmark, baseline=provider == "eager")  # benches/conftest.py
    seconds = benchmark.stats.stats.median
    size = torch.finfo(DTYPE).bits // 8
    n_pos = height * width
    info = dict(
        device=torch.cuda.get_device_name() if CUDA else "cpu", dtype=str(DTYPE), batch=BATCH,
        ms=seconds * 1e3,
        gb_per_s=compulsory_bytes(mode, BATCH, channels, n_pos, hidden, size) / seconds / 1e9,
        tflop_per_s=compulsory_flops(mode, BATCH, channels, n_pos, hidden) / seconds / 1e12,
    )
    key = (channels, height, width, hidden, mode)
    if provider == "eager":
        _eager_seconds[key] = seconds
    if key in _eager_seconds:  # eager runs first for each key (provider varies fastest)
        info["speedup_vs_eager"] = _eager_seconds[key] / seconds
    benchmark.extra_info.update(info)
    print(f"\n{provider:8s} {mode:4s} B={BATCH} C={channels} HW={height}x{width} hidden={hidden}: "
          f"{info['ms']:.3f} ms  {info['gb_per_s']:.1f} GB/s  {info['tflop_per_s']:.4f} TFLOP/s  "
          f"x{info.get('speedup_vs_eager', float('nan')):.2f} vs eager")
