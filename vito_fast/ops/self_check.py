"""The first-use self-check of the Triton kernels under ``backend="auto"``.

The kernels meet GPUs and Triton versions they never ran on. The first call of each Kind (op,
device, dtype, the inputs that need gradients, the op's variant) also runs the reference, in
float64 and in the call's dtype, on a small slice of the same inputs, and holds the Triton path on
that slice, forward and backward under a fixed random upstream gradient, to the tests' rule
(vito_fast/ops/tolerance.py). A kind that fails (an error over the tolerance, NaN/Inf where the
reference is finite, an exception) warns once and runs the reference from then on; that first
call's result already comes from the reference. Verdicts are per process: every later call pays a
dict lookup, no host sync. The check uses its own detached copies under its own autograd, and
draws its upstream gradient from its own generator (the caller's RNG stream is untouched).

It is skipped, leaving the kind unchecked, while torch.compile traces, while a CUDA graph is
captured, and when the reference is not finite on the slice; it runs no collective, so ranks
check independently. ``VITO_FAST_VERIFY=0`` turns it off (for the kinds not judged yet).
``vito-fast bench verify`` (vito_fast/ops/verify.py) checks every kind at once.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from vito_fast.ops.tolerance import ATTENTION_POOL_ATOL, INFO_NCE_ATOL, allowed_error
from vito_fast.reference.attention_pool import attention_pool_reference
from vito_fast.reference.info_nce import info_nce_reference

OK, MISMATCH, ERROR, SKIPPED = "ok", "MISMATCH", "error", "skipped"

# InfoNCE slice: at most 127 rows, as many as the call modulo 16 (the same edge masks and the same
# one-sweep rule, kernels/info_nce.py) and, above 128 rows, a next power of 2 of 128, at least
# every default tile cap: the slice launches the very kernels the call compiles.
_SLICE_ROWS = 112
_SLICE_IMAGES = 2  # attention pooling: the tiles depend on C, H·W and hidden, not on the batch
_UPSTREAM_SEED = 0


class Kind(NamedTuple):
    """What selects a compiled variant of an op's kernels, checked once per process."""

    op: str
    device: torch.device
    dtype: torch.dtype
    grads: Tuple[str, ...]  # the inputs that need gradients
    variant: str  # info_nce: "symmetric" or "one-way", "deterministic" or "atomic"; attention_pool: "linear" or "mlp"

    def __str__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.op}[{self.device}, {dtype}, grads {','.join(self.grads) or 'none'}, {self.variant}]"


@dataclass(frozen=True)
class Comparison:
    """The tensor of one pass (forward or backward) closest to its limit: its max error and the
    error the rule allows it."""

    name: str
    error: float
    allowed: float

    @property
    def ok(self) -> bool:
        return self.error <= self.allowed  # False for NaN


@dataclass(frozen=True)
class CheckResult:
    kind: Kind
    status: str  # OK, MISMATCH, ERROR or SKIPPED
    forward: Optional[Comparison]
    backward: Optional[Comparison]  # None when no input needs a gradient
    milliseconds: float
    detail: str = ""  # the exception (ERROR) or why the check could not judge (SKIPPED)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def describe(self) -> str:
        """What differed, e.g. 'backward dq max error 0.31 > tolerance 0.0012'."""
        if self.status in (ERROR, SKIPPED):
            return self.detail
        parts = [f"{label} {c.name} max error {c.error:.3g} {'<=' if c.ok else '>'} tolerance {c.allowed:.3g}"
                 for label, c in (("forward", self.forward), ("backward", self.backward))
                 if c is not None and (self.ok or not c.ok)]
        return "; ".join(parts)


_VERDICTS: Dict[Kind, CheckResult] = {}


def enabled() -> bool:
    """False when the environment variable VITO_FAST_VERIFY=0 turns the check off."""
    return os.environ.get("VITO_FAST_VERIFY", "1").strip() != "0"


def verdicts() -> Dict[Kind, CheckResult]:
    """The checks this process has judged, by kind."""
    return dict(_VERDICTS)


def forget_verdicts() -> None:
    """Check every kind again on its next call (tests, or after changing the Triton install)."""
    _VERDICTS.clear()


def triton_trusted(kind: Kind, check: Callable[[Kind], CheckResult]) -> bool:
    """Whether ``backend="auto"`` may run kind's Triton kernels: its verdict, judged by
    ``check(kind)`` on the kind's first call (a failure warns once, RuntimeWarning)."""
    verdict = _VERDICTS.get(kind)  # all that a later call pays: no device work, no host sync
    if verdict is not None:
        return verdict.ok
    if torch.compiler.is_compiling() or not enabled() or (
            kind.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return True  # unchecked: no check inside a traced or captured graph
    result = check(kind)
    if result.status == SKIPPED:
        return True
    _VERDICTS[kind] = result
    if not result.ok:
        warnings.warn(failure_message(result), RuntimeWarning, stacklevel=3)
    return result.ok


def failure_message(result: CheckResult) -> str:
    return (f"vito_fast: the Triton kernels of {result.kind} failed their first-use check against the "
            f"PyTorch reference ({result.status}: {result.describe()}); this kind runs the reference "
            f"from now on in this process. `vito-fast bench verify` checks every kind on this machine; "
            f"VITO_FAST_VERIFY=0 turns the check off.")


def _needing_grad(named: Sequence[Tuple[str, object]]) -> Tuple[str, ...]:
    if not torch.is_grad_enabled():
        return ()
    return tuple([name for name, value in named if isinstance(value, torch.Tensor) and value.requires_grad])


_INFO_NCE_VARIANTS = {(symmetric, deterministic): f"{'symmetric' if symmetric else 'one-way'}, "
                                                  f"{'deterministic' if deterministic else 'atomic'}"
                      for symmetric in (False, True) for deterministic in (False, True)}


def info_nce_kind(q: torch.Tensor, k: torch.Tensor, temperature, symmetric: bool, deterministic: bool) -> Kind:
    grads = _needing_grad((("q", q), ("k", k), ("temperature", temperature)))
    return Kind("info_nce", q.device, q.dtype, grads, _INFO_NCE_VARIANTS[bool(symmetric), bool(deterministic)])


def attention_pool_kind(h: torch.Tensor, w1, b1, w2, b2) -> Kind:
    grads = _needing_grad((("h", h), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)))
    return Kind("attention_pool", h.device, h.dtype, grads, "linear" if w1 is None else "mlp")


class _Inconclusive(Exception):
    """The reference cannot judge this slice (it failed, or it is not finite there)."""


def _outputs_and_grads(fn: Callable, inputs: Dict[str, object], grads: Sequence[str],
                       upstreams: Sequence[torch.Tensor], float64: bool = False) -> List[torch.Tensor]:
    """fn's outputs, then the gradients of the inputs named in grads under the upstream gradients;
    inputs are fresh leaves (floating ones cast to float64 when asked), never the caller's tensors."""
    leaves = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            dtype = torch.float64 if float64 and value.is_floating_point() else value.dtype
            value = value.detach().to(dtype, copy=True).requires_grad_(name in grads)
        leaves[name] = value
    outputs = fn(**leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    results = [out.detach() for out in outputs]
    if grads:
        total = sum((out.double() * upstream).sum() for out, upstream in zip(outputs, upstreams))
        results += [g.detach() for g in torch.autograd.grad(total, [leaves[name] for name in grads])]
    return results


def _reference_runs(fn: Callable, inputs: Dict[str, object], grads: Sequence[str],
                    upstreams: Sequence[torch.Tensor]):
    """The reference in float64 and in the call's dtypes; _Inconclusive where it cannot judge."""
    try:
        ref64 = _outputs_and_grads(fn, inputs, grads, upstreams, float64=True)
        same_dtype = _outputs_and_grads(fn, inputs, grads, upstreams)
    except Exception as error:  # e.g. out of memory: the user's own call will tell
        raise _Inconclusive(f"the reference failed: {type(error).__name__}: {error}") from error
    if not bool(torch.stack([t.isfinite().all() for t in ref64]).all()):
        raise _Inconclusive("the reference is not finite on the slice")
    return ref64, same_dtype


def _worst(names: Sequence[str], ours, same_dtype, ref64, atols) -> Optional[Comparison]:
    """The comparison with the largest error / allowed ratio, read back in one host transfer."""
    if not names:
        return None
    measured = []
    for mine, theirs, truth in zip(ours, same_dtype, ref64):
        mine_error = (mine.double() - truth).abs().max()
        measured += [torch.where(mine.isfinite().all(), mine_error, math.inf),
                     (theirs.double() - truth).abs().max().nan_to_num(math.inf)]
    values = torch.stack(measured + [torch.as_tensor(a, dtype=torch.float64, device=ref64[0].device)
                                     for a in atols]).tolist()
    errors, atol_values = values[:2 * len(names)], values[2 * len(names):]
    comparisons = [Comparison(name, errors[2 * i], allowed_error(errors[2 * i + 1], atol_values[i]))
                   for i, name in enumerate(names)]

    def closeness(c: Comparison) -> Tuple[bool, float]:
        ratio = c.error / c.allowed if c.allowed > 0 else (0.0 if c.error == 0 else math.inf)
        return not c.ok, ratio if ratio == ratio else math.inf  # inf / inf: ours and torch's not finite

    return max(comparisons, key=closeness)


def _run_check(kind: Kind, body: Callable[[], Tuple[Comparison, Optional[Comparison]]]) -> CheckResult:
    start = time.perf_counter()
    try:
        with torch.autocast(kind.device.type, enabled=False), torch.enable_grad():
            forward, backward = body()
        status = OK if forward.ok and (backward is None or backward.ok) else MISMATCH
        detail = ""
    except _Inconclusive as reason:
        forward = backward = None
        status, detail = SKIPPED, str(reason)
    except Exception as error:  # anything the Triton path raises means: do not trust it
        forward = backward = None
        first_line = str(error).strip().split("\n")[0]
        status, detail = ERROR, type(error).__name__ + (f": {first_line}" if first_line else "")
    return CheckResult(kind, status, forward, backward, (time.perf_counter() - start) * 1e3, detail)


def _upstream(shape, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_UPSTREAM_SEED)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device)


def check_info_nce(kind: Kind, triton_info_nce: Callable, q: torch.Tensor, k: torch.Tensor, temperature, *,
                   labels: Optional[torch.Tensor], label_offset: int, symmetric: bool, normalize: bool,
                   reduction: str) -> CheckResult:
    """Check ``triton_info_nce`` (info_nce with backend="triton" and the call's other options) on
    the first rows of q and their positives in k (labels given: arange over the first keys)."""

    def body():
        n, m = q.shape[0], k.shape[0]
        rows = min(n, _SLICE_ROWS + n % 16)
        if labels is None:
            q_s, k_s, labels_s = q[:rows], k[label_offset:label_offset + rows], None
        else:
            keys = min(m, rows)
            q_s, k_s = q[:rows], k[:keys]
            labels_s = torch.arange(rows, device=q.device) % keys
        inputs = dict(q=q_s, k=k_s, temperature=temperature)
        options = dict(labels=labels_s, symmetric=symmetric, normalize=normalize, reduction=reduction)
        upstream = _upstream((rows,) if reduction == "none" else (), q.device)

        def reference(**leaves):
            return info_nce_reference(**leaves, **options)

        ref64, same_dtype = _reference_runs(reference, inputs, kind.grads, [upstream])
        ours = _outputs_and_grads(lambda **leaves: triton_info_nce(**leaves, **options), inputs, kind.grads,
                                  [upstream])
        # atol relative to the size of each result, or of the terms that cancel in it (tests/test_info_nce.py).
        q64, k64 = q_s.detach().double(), k_s.detach().double()
        if normalize:
            q64, k64 = F.normalize(q64, dim=-1), F.normalize(k64, dim=-1)
        tau = temperature.detach().double().reshape(()) if isinstance(temperature, torch.Tensor) else temperature
        max_logit = (q64 @ k64.T).abs().max() / tau
        mass = upstream.abs().sum() * (1.0 if reduction == "mean" else 1.0 / rows)
        floors = {"loss": max_logit * (rows if reduction == "sum" else 1.0), "q": 0.0, "k": 0.0,
                  "temperature": max_logit / tau * mass * rows}
        names = ["loss"] + list(kind.grads)
        atols = [INFO_NCE_ATOL[kind.dtype] * torch.clamp(torch.maximum(truth.abs().max(), torch.as_tensor(
            floors[name], dtype=torch.float64, device=truth.device)), min=1e-3) for name, truth in zip(names, ref64)]
        forward = _worst(names[:1], ours[:1], same_dtype[:1], ref64[:1], atols[:1])
        backward = _worst(names[1:], ours[1:], same_dtype[1:], ref64[1:], atols[1:])
        return forward, backward

    return _run_check(kind, body)


def check_attention_pool(kind: Kind, triton_attention_pool: Callable, h: torch.Tensor, w1, b1, w2, b2) -> CheckResult:
    """Check ``triton_attention_pool`` (attention_pool with backend="triton") on the first images
    of h with the call's weights; atol scaled by max(1, |result|) for features larger than O(1)."""

    def body():
        h_s = h[:_SLICE_IMAGES]
        inputs = dict(h=h_s, w1=w1, b1=b1, w2=w2, b2=b2)
        batch, channels, height, width = h_s.shape
        upstreams = [_upstream((batch, channels), h.device), _upstream((batch, height, width), h.device)]
        ref64, same_dtype = _reference_runs(attention_pool_reference, inputs, kind.grads, upstreams)
        ours = _outputs_and_grads(triton_attention_pool, inputs, kind.grads, upstreams)
        names = ["pooled", "attn"] + list(kind.grads)
        atols = [ATTENTION_POOL_ATOL[kind.dtype] * torch.clamp(truth.abs().max(), min=1.0) for truth in ref64]
        forward = _worst(names[:2], ours[:2], same_dtype[:2], ref64[:2], atols[:2])
        backward = _worst(names[2:], ours[2:], same_dtype[2:], ref64[2:], atols[2:])
        return forward, backward

    return _run_check(kind, body)
