"""The first-use self-check of backend="auto" (vito_fast/ops/self_check.py): what it costs.

    pytest benches/bench_self_check.py --benchmark-only --benchmark-columns=median,rounds
    python benches/bench_self_check.py          # every kind as a Markdown table

Per kind, the check at training sizes (InfoNCE 1024 × 256, the check on 112 rows; attention
pooling 4 × 2048 × 7 × 7, hidden 512, the check on 2 images), timed after one warm-up check that
compiles the kernels (the checked call compiles them anyway). On a GPU the check runs the Triton
kernels; without one the reference stands in for them (backend="torch"): the figure is then the
check's own work on the CPU, the references in float64 and in the call's dtype plus the
comparison, with a third reference run in place of the kernels. Also the cost of every later call:
making its kind and looking its verdict up (no device work, no host sync).
"""
from __future__ import annotations

import statistics
import time
import timeit

import pytest
import torch

from vito_fast.ops import self_check, verify

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BACKEND = "triton" if CUDA else "torch"
# Representative kinds for pytest-benchmark: bf16 training with gradients, both ops and variants.
DTYPES = (torch.bfloat16,)


def _cases(dtypes=verify.TRITON_DTYPES):
    return verify.every_case(DEVICE, dtypes=dtypes, backend=BACKEND, full_size=True)


def _check_ms(check, rounds: int = 5) -> float:
    check()  # compiles the kernels on a GPU
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = check()
        times.append((time.perf_counter() - start) * 1e3)
        assert result.ok, result.describe()
    return statistics.median(times)


def _judged_call():
    """What a call pays once its kind is judged: making its kind and looking its verdict up."""
    q = torch.randn(8, 4, device=DEVICE, requires_grad=True)
    kind = self_check.info_nce_kind(q, q, 0.1, False, True)
    self_check.triton_trusted(kind, lambda kind: self_check.CheckResult(kind, self_check.OK, None, None, 0.0))
    return lambda: self_check.triton_trusted(self_check.info_nce_kind(q, q, 0.1, False, True), None)


@pytest.mark.parametrize("index", range(len(_cases(DTYPES))))
def test_self_check(benchmark, index):
    kind, check = _cases(DTYPES)[index]
    benchmark.group = "self-check"
    benchmark.extra_info["kind"] = str(kind)
    check()
    result = benchmark.pedantic(check, rounds=5, iterations=1)
    assert result.ok, result.describe()


def test_later_call(benchmark):
    benchmark.group = "later call"
    assert benchmark(_judged_call())
    self_check.forget_verdicts()


def main() -> None:
    if not CUDA:  # one intra-op thread: on a shared 2-core machine a second one mostly waits
        torch.set_num_threads(1)
    where = torch.cuda.get_device_name() if CUDA else "CPU, one thread, the reference standing in for the kernels"
    print(f"self-check cost per kind ({where}; median of 5 after a warm-up)\n")
    print("| kind | ms |\n|---|---:|")
    for kind, check in _cases():
        print(f"| {kind} | {_check_ms(check):.2f} |")
    number = 20000
    seconds = timeit.timeit(_judged_call(), number=number)
    self_check.forget_verdicts()
    print(f"\nlater calls: {seconds / number * 1e6:.2f} µs each (kind + verdict lookup)")


if __name__ == "__main__":
    main()
