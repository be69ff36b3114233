"""InfoNCE loss: input checks, the autograd Function around the Triton kernels, and dispatch."""
from __future__ import annotations

import os
from functools import partial
from typing import Optional, Tuple, Union

import torch

from vito_fast.ops import self_check
from vito_fast.ops._dispatch import BACKENDS, use_triton
from vito_fast.reference.info_nce import info_nce_reference

_REDUCTIONS = ("mean", "sum", "none")
# Two backward sweeps by default: the sm_90 roofline of benches/bench_compile.py puts the one
# sweep's dq̂ atomics (4.3 GB through L2 at 16k, D = 256) above the 2·N·M·D it saves (RESULTS.md).
DETERMINISTIC_DEFAULT = True


def debug_checks(debug: Optional[bool] = None) -> bool:
    """Whether the Triton path checks label and temperature values on the host (a host sync
    each): the argument when given, else the environment variable VITO_FAST_DEBUG=1."""
    return bool(int(os.environ.get("VITO_FAST_DEBUG", "0") or 0)) if debug is None else debug


def _check_inputs(q, k, temperature, labels, label_offset, symmetric, reduction, backend, host_checks) -> None:
    for name, tensor in (("q", q), ("k", k)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"info_nce: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2:
            raise ValueError(f"info_nce: {name} must be 2-D ({name.upper()}, D), got shape {tuple(tensor.shape)}")
        if tensor.shape[0] == 0 or tensor.shape[1] == 0:
            raise ValueError(f"info_nce: {name} is empty (shape {tuple(tensor.shape)})")
        if not tensor.is_floating_point():
            raise TypeError(f"info_nce: {name} must be floating point, got {tensor.dtype}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"info_nce: q has {q.shape[1]} columns but k has {k.shape[1]}")
    if q.dtype != k.dtype:
        raise TypeError(f"info_nce: q is {q.dtype} but k is {k.dtype}; cast one of them")
    if q.device != k.device:
        raise ValueError(f"info_nce: q is on {q.device} but k is on {k.device}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"info_nce: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if backend not in BACKENDS:
        raise ValueError(f"info_nce: backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"info_nce: temperature must be a scalar, got shape {tuple(temperature.shape)}")
        if not temperature.is_floating_point():
            raise TypeError(f"info_nce: temperature must be floating point, got {temperature.dtype}")
        # The value costs a host sync: checked on the host path (CPU tensors) or in debug mode;
        # the kernels turn τ ≤ 0 into a NaN loss instead.
        value = float(temperature.detach().reshape(())) if host_checks else None
    else:
        value = float(temperature)
    if value is not None and not value > 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {value}")
    n, m = q.shape[0], k.shape[0]
    if symmetric and (n != m or labels is not None or label_offset):
        raise ValueError(f"info_nce: symmetric needs N == M and diagonal positives (no labels, no "
                         f"label_offset); got N={n}, M={m}, labels {'given' if labels is not None else 'None'}")
    if labels is None:
        if not isinstance(label_offset, int) or label_offset < 0 or label_offset + n > m:
            raise ValueError(f"info_nce: default labels label_offset + arange(N) need 0 <= label_offset "
                             f"and label_offset + N <= M; got label_offset={label_offset}, N={n}, M={m} "
                             f"(M >= N)")
        return
    if label_offset:
        raise ValueError("info_nce: give labels or label_offset, not both")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise TypeError(f"info_nce: labels must be an int64 tensor, got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"info_nce: labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.device != q.device:
        raise ValueError(f"info_nce: labels are on {labels.device} but q is on {q.device}")
    if host_checks and bool(((labels < 0) | (labels >= m)).any()):  # else NaN rows, in-kernel
        raise ValueError(f"info_nce: labels must lie in [0, {m}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


class InfoNCEFunction(torch.autograd.Function):
    """Triton InfoNCE; saves q, k and O(N + M) statistics, recomputes logit tiles in backward."""

    @staticmethod
    def forward(ctx, q, k, temperature, labels, label_offset, options):
        from vito_fast.kernels.info_nce import info_nce_fwd

        symmetric, normalize, reduction, deterministic, blocks = options
        loss, state = info_nce_fwd(q, k, temperature, labels=labels, label_offset=label_offset,
                                   normalize=normalize, symmetric=symmetric, reduction=reduction,
                                   deterministic=deterministic, **blocks)
        ctx.save_for_backward(q, k, labels, *state)
        # dτ's shape and dtype (only a tensor τ can need a gradient; its 1/τ is state.scale).
        ctx.temperature = (temperature.shape, temperature.dtype) if isinstance(temperature, torch.Tensor) else None
        ctx.label_offset, ctx.options = label_offset, options
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        from vito_fast.kernels.info_nce import ForwardState, info_nce_bwd

        q, k, labels, *state = ctx.saved_tensors
        state = ForwardState(*state)
        symmetric, normalize, reduction, deterministic, blocks = ctx.options
        need_tau = ctx.needs_input_grad[2]
        dq, dk, tau_partial = info_nce_bwd(
            q, k, state, grad_out.float().contiguous(), labels=labels, label_offset=ctx.label_offset,
            reduction=reduction, need_q=ctx.needs_input_grad[0] or need_tau,  # dτ is read off dq's sweep
            need_k=ctx.needs_input_grad[1], deterministic=deterministic, **blocks)
        dtemperature = None
        if need_tau:
            # dL/dτ = −(1/τ)·Σ_ij dL/ds_ij·s_ij, the kernels' per-program partials of that sum.
            shape, dtype = ctx.temperature
            dtemperature = (-(state.scale * tau_partial.sum())).reshape(shape).to(dtype)
        return (dq if ctx.needs_input_grad[0] else None), dk, dtemperature, None, None, None


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: Union[float, torch.Tensor] = 0.1,
    *,
    labels: Optional[torch.Tensor] = None,
    label_offset: int = 0,
    symmetric: bool = False,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    deterministic: bool = DETERMINISTIC_DEFAULT,
    debug: Optional[bool] = None,
    block_sizes: Optional[Tuple[Optional[int], Optional[int], Optional[int]]] = None,
) -> torch.Tensor:
    """InfoNCE of queries q (N, D) against keys k (M, D): float32 scalar, or (N,) if reduction="none".

    ``info_nce(q, k) == cross_entropy(normalize(q) @ normalize(k).T / τ, labels)``, labels
    defaulting to label_offset + arange(N); symmetric=True (N == M) averages that with the k→q
    direction. temperature is a float or a 1-element tensor (it gets a gradient when it requires
    grad). backend: "auto" (Triton for CUDA tensors once each kind of call passes its first-use
    check, vito_fast/ops/self_check.py; the PyTorch reference otherwise), "triton"
    (also on CPU tensors under TRITON_INTERPRET=1), "torch". The Triton path never forms the N×M
    logits and never synchronises with the host: labels outside [0, M) and a tensor τ ≤ 0 give a
    NaN loss (and NaN gradients) instead of an error, unless debug (default: VITO_FAST_DEBUG=1)
    asks for the host checks, which raise ValueError at the price of a sync.
    deterministic=True (default): bitwise reproducible (loss summed by torch, a dq and a dk sweep
    without atomics: 10·N·M·D FLOPs with the forward); False: the loss summed with atomic adds
    and, when q and k both need gradients (bf16, N a multiple of 16, not symmetric: where it
    compiles without spills), one backward sweep accumulating dq with float32 atomics (8·N·M·D).
    block_sizes (rows, columns, D chunk) forces Triton tile sizes, for tests and tuning.
    """
    triton_path = isinstance(q, torch.Tensor) and backend in BACKENDS and use_triton("info_nce", q, backend)
    _check_inputs(q, k, temperature, labels, label_offset, symmetric, reduction, backend,
                  host_checks=not triton_path or debug_checks(debug))
    if triton_path and backend == "auto":
        triton_path = self_check.triton_trusted(
            self_check.info_nce_kind(q, k, temperature, symmetric, deterministic),
            lambda kind: self_check.check_info_nce(
                kind, partial(info_nce, backend="triton", deterministic=deterministic, block_sizes=block_sizes),
                q, k, temperature, labels=labels, label_offset=label_offset, symmetric=symmetric,
                normalize=normalize, reduction=reduction))
    if not triton_path:
        return info_nce_reference(q, k, temperature, labels=labels, label_offset=label_offset,
                                  symmetric=symmetric, normalize=normalize, reduction=reduction)
    if not q.is_cuda and q.dtype == torch.bfloat16:
        # Triton 3.8's interpreter returns garbage from bf16 tl.dot (fp32/fp16 are right):
        # run the kernels in fp32 there; autograd casts the gradients back to bf16.
        q, k = q.float(), k.float()
    if isinstance(temperature, torch.Tensor) and temperature.device != q.device:
        temperature = temperature.to(q.device)
    block_m, block_n, block_d = block_sizes if block_sizes is not None else (None, None, None)
    options = (symmetric, normalize, reduction, deterministic,
               dict(block_m=block_m, block_n=block_n, block_d=block_d))
    return InfoNCEFunction.apply(q, k, temperature, None if labels is None else labels.contiguous(),
                                 label_offset, options)
