"""InfoNCE: torch eager (the reference), torch.compile of it, ours (Triton: deterministic two-sweep
backward, the default, and triton_one_sweep: deterministic=False) and Inf-CL if installed.

    pytest benches/bench_info_nce.py --benchmark-only --benchmark-columns=median,rounds
    python benches/bench_info_nce.py            # the same sweep as a Markdown table (GPU pass)
    python benches/bench_info_nce.py --tune     # full-pass time of ours for a few tile shapes

Shapes: N = M ∈ {4096, 16384, 65536}, D ∈ {128, 256}, q and k both requiring grad, τ = 0.1,
normalize=True, non-symmetric; modes fwd, bwd (backward of a retained graph) and full (both).
FLOP count (the same for every provider, so TFLOP/s compare): fwd 2·N·M·D (the logits GEMM);
bwd 6·N·M·D (one recompute of the logits + dq + dk GEMMs); full 8·N·M·D, the issue's floor.
Ours runs 10·N·M·D in full by default (the dq and dk sweeps each recompute the logits), 8·N·M·D
with triton_one_sweep (dq by float32 atomics); eager runs 6·N·M·D but stores the N×M logits and
their softmax. extra_info: ms (median), TFLOP/s and
peak_extra_mb = peak memory above the inputs during one call (CUDA only).
Without a GPU: N = 1024, D = 128 only, float32, and Triton is skipped (the interpreter is
orders of magnitude slower than anything measured here). Env: VITO_BENCH_SIZES ("4096,16384"),
VITO_BENCH_DIMS ("128,256"), VITO_BENCH_MODES, VITO_BENCH_PROVIDERS, VITO_BENCH_DTYPE (bfloat16
on GPU, float32 on CPU).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict

import pytest
import torch
import torch.nn.functional as F

from vito_fast.ops.info_nce import info_nce
from vito_fast.reference.info_nce import info_nce_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = getattr(torch, os.environ.get("VITO_BENCH_DTYPE", "bfloat16" if CUDA else "float32"))
SIZES = [int(s) for s in os.environ.get("VITO_BENCH_SIZES", "4096,16384,65536" if CUDA else "1024").split(",")]
DIMS = [int(s) for s in os.environ.get("VITO_BENCH_DIMS", "128,256" if CUDA else "128").split(",")]
MODES = os.environ.get("VITO_BENCH_MODES", "fwd,bwd,full").split(",")
PROVIDERS = os.environ.get("VITO_BENCH_PROVIDERS", "eager,compile,triton,triton_one_sweep,inf_cl").split(",")
TEMPERATURE = 0.1
# Eager at 64k needs ~50 GB (SPEC anchors): only where the card has room for it.
EAGER_MAX_BYTES = 0.8 * torch.cuda.get_device_properties(0).total_memory if CUDA else 8e9

_compiled: Dict[str, Callable] = {}


def flops(mode: str, n: int, m: int, d: int) -> int:
    return {"fwd": 2, "bwd": 6, "full": 8}[mode] * n * m * d


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _loss_fn(provider: str, shape_key: str) -> Callable:
    if provider == "eager":
        return lambda q, k: info_nce_reference(q, k, TEMPERATURE)
    if provider == "compile":
        # One static-shape compilation per shape: a shared one would turn dynamic after a recompile.
        if shape_key not in _compiled:
            _compiled[shape_key] = torch.compile(lambda q, k: info_nce_reference(q, k, TEMPERATURE), dynamic=False)
        return _compiled[shape_key]
    if provider == "triton":
        return lambda q, k: info_nce(q, k, TEMPERATURE, backend="triton")
    if provider == "triton_one_sweep":
        return lambda q, k: info_nce(q, k, TEMPERATURE, backend="triton", deterministic=False)
    from inf_cl import cal_inf_loss  # raises ImportError when not installed

    # Inf-CL takes normalised features and the logit scale; its labels default to the diagonal.
    return lambda q, k: cal_inf_loss(F.normalize(q, dim=-1), F.normalize(k, dim=-1), scale=1.0 / TEMPERATURE).mean()


def skip_reason(provider: str, n: int) -> str:
    """Why (provider, n) cannot run here, or "" when it can."""
    if provider in ("triton", "triton_one_sweep", "inf_cl") and not CUDA:
        return f"{provider} needs a GPU (the Triton interpreter is not a benchmark)"
    if provider == "inf_cl":
        try:
            import inf_cl  # noqa: F401
        except ImportError:
            return "inf_cl is not installed (pip install inf-cl)"
    if provider in ("eager", "compile") and 4 * n * n * 4 > EAGER_MAX_BYTES:
        return f"{provider} would need ~{4 * n * n * 4 / 2**30:.0f} GiB of logits and softmax"
    return ""


def make_step(provider: str, mode: str, n: int, d: int):
    """A zero-argument callable running one `mode` step, synchronised; and the inputs' bytes."""
    q = torch.randn(n, d, device=DEVICE, dtype=DTYPE, requires_grad=True)
    k = torch.randn(n, d, device=DEVICE, dtype=DTYPE, requires_grad=True)
    fn = _loss_fn(provider, f"{mode}-{n}-{d}")

    def forward():
        with torch.no_grad() if mode == "fwd" else torch.enable_grad():
            return fn(q, k)

    if mode == "fwd":
        def step():
            forward()
            _sync()
    elif mode == "full":
        def step():
            q.grad = k.grad = None
            forward().backward()
            _sync()
    else:
        loss = forward()

        def step():
            q.grad = k.grad = None
            loss.backward(retain_graph=True)
            _sync()
    return step


def peak_extra_mb(step) -> float:
    if not CUDA:
        return float("nan")
    _sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_ms(step, repeats: int = 10) -> float:
    """Median wall time of `step` (which synchronises), after two warm-up calls (compilation)."""
    step()
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_info_nce(benchmark, speedups, provider, n, d, mode):
    reason = skip_reason(provider, n)
    if reason:
        pytest.skip(reason)
    step = make_step(provider, mode, n, d)
    try:
        step()  # compile / autotune / warm caches outside the measurement
    except (TypeError, RuntimeError) as error:
        if provider != "inf_cl":
            raise
        pytest.skip(f"inf_cl call failed (API changed?): {error}")
    step()
    memory = peak_extra_mb(step)
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)
    speedups.record(f"info_nce {mode} N=M={n} D={d} {DTYPE}", provider, benchmark,
                    baseline=provider == "eager")  # the ratio table of benches/conftest.py
    median_ms = benchmark.stats.stats.median * 1e3
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if CUDA else "cpu", dtype=str(DTYPE), ms=median_ms,
        tflops=flops(mode, n, n, d) / (median_ms * 1e-3) / 1e12, peak_extra_mb=memory,
        flop_count=f"{flops(mode, 1, 1, 1)}·N·M·D")


def main() -> None:
    device = torch.cuda.get_device_name() if CUDA else "cpu"
    print(f"InfoNCE, {device}, {DTYPE}, torch {torch.__version__}, "
          f"triton {__import__('triton').__version__}, {time.strftime('%Y-%m-%d')}")
    print("| N=M | D | mode | provider | ms | TFLOP/s | peak extra MB |")
    print("|---|---|---|---|---|---|---|")
    for n in SIZES:
        for d in DIMS:
            for mode in MODES:
                for provider in PROVIDERS:
                    reason = skip_reason(provider, n)
                    if reason:
                        print(f"| {n} | {d} | {mode} | {provider} | skipped: {reason} | | |")
                        continue
                    try:
                        step = make_step(provider, mode, n, d)
                        ms = time_ms(step)
                    except (TypeError, RuntimeError) as error:
                        if provider != "inf_cl":
                            raise
                        print(f"| {n} | {d} | {mode} | {provider} | failed: {str(error)[:80]} | | |")
                        continue
                    memory = peak_extra_mb(step)
                    tflops = flops(mode, n, n, d) / (ms * 1e-3) / 1e12
                    print(f"| {n} | {d} | {mode} | {provider} | {ms:.3f} | {tflops:.3g} | {memory:.0f} |",
                          flush=True)
                    del step
                    if CUDA:
                        torch.cuda.empty_cache()


def tune(n: int = 16384, d: int = 256) -> None:
    """Full-pass time of ours for a few tile shapes (rows, columns, D chunk): a GPU session's
    first look at the launch defaults in kernels/info_nce.py."""
    print(f"| tiles (m, n, d) | full ms at N=M={n}, D={d} |")
    print("|---|---|")
    q = torch.randn(n, d, device=DEVICE, dtype=DTYPE, requires_grad=True)
    k = torch.randn(n, d, device=DEVICE, dtype=DTYPE, requires_grad=True)
    for tiles in [(128, 64, 64), (128, 128, 64), (64, 64, 64), (128, 64, 128), (64, 32, 64), (64, 64, 32)]:
        def step():
            q.grad = k.grad = None
            info_nce(q, k, TEMPERATURE, backend="triton", block_sizes=tiles).backward()
            _sync()
        try:
            print(f"| {tiles} | {time_ms(step):.3f} |", flush=True)
        except Exception as error:  # a config that does not fit (shared memory, registers)
            print(f"| {tiles} | failed: {type(error).__name__}: {str(error)[:80]} |", flush=True)


if __name__ == "__main__":
    import sys

    tune() if "--tune" in sys.argv else main()
