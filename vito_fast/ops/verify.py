"""``vito-fast bench verify``: the first-use self-check (self_check.py) of every kind, at once.

Each kind runs its check on synthetic inputs drawn from a fixed seed, on a GPU at training sizes:
InfoNCE at N = M = 1024, D = 256 (the check takes 112 rows), attention pooling on ResNet-50's
layer4 map, 4 × 2048 × 7 × 7 with hidden 512 (the check takes 2 images); the interpreter gets
small shapes. The kinds are made by the same functions that make the calls'.
"""
from __future__ import annotations

import itertools
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from vito_fast.ops import self_check
from vito_fast.ops._dispatch import TRITON_DTYPES
from vito_fast.ops.attention_pool import attention_pool
from vito_fast.ops.info_nce import info_nce
from vito_fast.ops.self_check import SKIPPED, CheckResult, Comparison, Kind

OPS = ("info_nce", "attention_pool")

# Triton 3.8's interpreter returns garbage from bf16 tl.dot (kernels/info_nce.py runs its bf16 in
# fp32 there; tests/test_attention_pool.py runs only the linear variant in bf16).
_INTERPRETER_BF16_DOT = "Triton's interpreter computes bf16 tl.dot wrongly; checked on a GPU only"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def interpreting() -> bool:
    from vito_fast.kernels._utils import interpreting as triton_interpreting

    return triton_interpreting()


def _info_nce_case(device: torch.device, dtype: torch.dtype, grads: Sequence[str], symmetric: bool,
                   deterministic: bool, backend: str, full_size: bool) -> Tuple[Kind, Callable[[], CheckResult]]:
    rows, dim = (1024, 256) if full_size else (48, 24)
    q, k = _randn(device, dtype, rows, dim), _randn(device, dtype, rows, dim, seed=1)
    q.requires_grad_("q" in grads)
    k.requires_grad_("k" in grads)
    temperature = torch.tensor(0.1, device=device, requires_grad=True) if "temperature" in grads else 0.1
    kind = self_check.info_nce_kind(q, k, temperature, symmetric, deterministic)
    triton_run = partial(info_nce, backend=backend, deterministic=deterministic)
    return kind, partial(self_check.check_info_nce, kind, triton_run, q, k, temperature, labels=None,
                         label_offset=0, symmetric=symmetric, normalize=True, reduction="mean")


def _attention_pool_case(device: torch.device, dtype: torch.dtype, mlp: bool, with_grads: bool, backend: str,
                         full_size: bool) -> Tuple[Kind, Callable[[], CheckResult]]:
    batch, channels, size, hidden = (4, 2048, (7, 7), 512) if full_size else (3, 24, (5, 7), 16)
    h = _randn(device, dtype, batch, channels, *size).to(memory_format=torch.channels_last)
    w1 = _randn(device, dtype, hidden, channels, seed=1, scale=channels ** -0.5) if mlp else None
    b1 = _randn(device, dtype, hidden, seed=2, scale=0.5) if mlp else None
    width = hidden if mlp else channels
    w2 = _randn(device, dtype, width, seed=3, scale=2 * width ** -0.5)
    for tensor in (h, w1, b1, w2):
        if tensor is not None:
            tensor.requires_grad_(with_grads)
    kind = self_check.attention_pool_kind(h, w1, b1, w2, None)
    triton_run = partial(attention_pool, backend=backend)
    return kind, partial(self_check.check_attention_pool, kind, triton_run, h, w1, b1, w2, None)


def _randn(device: torch.device, dtype: torch.dtype, *shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(device, dtype)


def every_case(device: torch.device, ops: Sequence[str] = OPS, dtypes: Sequence[torch.dtype] = TRITON_DTYPES, *,
               backend: str = "triton", full_size: Optional[bool] = None) -> List[Tuple[Kind, Callable[[], CheckResult]]]:
    """Every kind a caller can meet, with its check on synthetic inputs: each dtype; no gradients,
    the training inputs' and also τ's (InfoNCE) or the weights' (attention pooling); each variant.
    backend: the path checked ("torch" stands the reference in for the kernels, to time the check's
    own work where they cannot run); full_size (default: on a GPU) the shapes above, else small ones."""
    full_size = device.type == "cuda" if full_size is None else full_size
    cases = []
    if "info_nce" in ops:
        for dtype, grads, symmetric, deterministic in itertools.product(
                dtypes, ((), ("q", "k"), ("q", "k", "temperature")), (False, True), (True, False)):
            cases.append(_info_nce_case(device, dtype, grads, symmetric, deterministic, backend, full_size))
    if "attention_pool" in ops:
        for dtype, mlp, with_grads in itertools.product(dtypes, (False, True), (False, True)):
            cases.append(_attention_pool_case(device, dtype, mlp, with_grads, backend, full_size))
    return cases


def verify_every_kind(device: Optional[torch.device] = None, ops: Sequence[str] = OPS,
                      dtypes: Sequence[torch.dtype] = TRITON_DTYPES) -> List[CheckResult]:
    """The self-check of every kind on this device; on a GPU each runs twice and the second is
    timed (the first compiles the kernels, which the checked call compiles anyway)."""
    device = device or default_device()
    results = []
    for kind, check in every_case(device, ops, dtypes):
        if interpreting() and kind.dtype == torch.bfloat16 and kind.variant == "mlp":
            results.append(CheckResult(kind, SKIPPED, None, None, 0.0, _INTERPRETER_BF16_DOT))
            continue
        if device.type == "cuda":
            check()
        results.append(check())
    return results


def failed(results: Sequence[CheckResult]) -> List[CheckResult]:
    return [result for result in results if result.status not in (self_check.OK, SKIPPED)]


def _error(comparison: Optional[Comparison]) -> str:
    return "–" if comparison is None else f"{comparison.error:.2e} ({comparison.name})"


def _allowed(comparison: Optional[Comparison]) -> str:
    return "–" if comparison is None else f"{comparison.allowed:.2e}"


def markdown_table(results: Sequence[CheckResult]) -> str:
    """One row per kind: status, the max error of the forward and backward tensors closest to
    their limits, the errors allowed them, and the check's milliseconds."""
    lines = ["| kind | status | forward max error | backward max error | tolerance (fwd / bwd) | ms |",
             "|---|---|---|---|---|---|"]
    for result in results:
        status = result.status + (f": {result.detail}" if result.detail else "")
        lines.append(f"| {result.kind} | {status} | {_error(result.forward)} | {_error(result.backward)} | "
                     f"{_allowed(result.forward)} / {_allowed(result.backward)} | {result.milliseconds:.1f} |")
    return "\n".join(lines)


def triton_version() -> str:
    import triton

    return triton.__version__
