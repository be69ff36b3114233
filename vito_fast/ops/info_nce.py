"""InfoNCE loss: input checks, the autograd Function around the Triton kernels, and dispatch."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from vito_fast.ops._dispatch import BACKENDS, use_triton
from vito_fast.reference.info_nce import info_nce_reference

_REDUCTIONS = ("mean", "sum", "none")
_NORM_EPS = 1e-12  # F.normalize's default


def _check_inputs(q, k, temperature, labels, label_offset, symmetric, reduction, backend) -> None:
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
        value = float(temperature.detach().reshape(()))  # one host sync; the price of the check
    else:
        value = float(temperature)
    if not value > 0:
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
    if bool(((labels < 0) | (labels >= m)).any()):
        raise ValueError(f"info_nce: labels must lie in [0, {m}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def _inverse_norm(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / torch.linalg.vector_norm(x.float(), dim=1).clamp_min(_NORM_EPS)


def _through_normalization(grad: torch.Tensor, x: torch.Tensor, inv_norm: torch.Tensor) -> torch.Tensor:
    """Gradient wrt x (n, D) of the gradient wrt x̂ = x·inv_norm: (g − x̂ (x̂·g)) · inv_norm."""
    x_hat = x.float() * inv_norm[:, None]
    return (grad - x_hat * (x_hat * grad).sum(1, keepdim=True)) * inv_norm[:, None]


class InfoNCEFunction(torch.autograd.Function):
    """Triton InfoNCE; saves q, k and O(N + M) statistics, recomputes logit tiles in backward."""

    @staticmethod
    def forward(ctx, q, k, temperature, labels, symmetric, normalize, reduction, blocks):
        from vito_fast.kernels.info_nce import info_nce_fwd

        scale = (1.0 / temperature.detach().float()).reshape(1)
        q_inv = _inverse_norm(q) if normalize else None
        k_inv = _inverse_norm(k) if normalize else None
        row_stats, col_stats = info_nce_fwd(q, k, q_inv, k_inv, scale, symmetric, **blocks)
        row_lse = row_stats.lse()
        # The positive logit of each row: one gathered dot product per row, O(N·D).
        positive = (q.float() * k[labels].float()).sum(1) * scale
        if normalize:
            positive = positive * q_inv * k_inv[labels]
        if symmetric:
            per_row = 0.5 * (row_lse + col_stats.lse()) - positive
        else:
            per_row = row_lse - positive
        ctx.save_for_backward(q, k, temperature, labels, scale, q_inv, k_inv, *row_stats,
                              *(col_stats if symmetric else (None, None)))
        ctx.options = (symmetric, normalize, reduction, blocks)
        if reduction == "mean":
            return per_row.mean()
        return per_row.sum() if reduction == "sum" else per_row

    @staticmethod
    def backward(ctx, grad_out):
        from vito_fast.kernels.info_nce import RowStats, info_nce_bwd

        q, k, temperature, labels, scale, q_inv, k_inv, *stats = ctx.saved_tensors
        symmetric, normalize, reduction, blocks = ctx.options
        n = q.shape[0]
        grad_out = grad_out.float()
        row_grad = grad_out.expand(n) / n if reduction == "mean" else grad_out.expand(n)
        row_grad = row_grad.contiguous()
        need_q = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]  # dτ is read off gq
        need_k = ctx.needs_input_grad[1]
        half = 0.5 * row_grad if symmetric else None
        grad_q, grad_k = info_nce_bwd(
            q, k, q_inv, k_inv, scale, RowStats(*stats[:2]), RowStats(*stats[2:]) if symmetric else None,
            half if symmetric else row_grad, half, need_q, need_k, **blocks)
        # The positive term −g_i at (i, labels_i) of dL/ds, applied outside the kernels.
        q_scaled = q.float() * q_inv[:, None] if normalize else q.float()
        k_pos = k[labels].float() * k_inv[labels][:, None] if normalize else k[labels].float()
        dq = dk = dtemperature = None
        if grad_q is not None:
            grad_q -= row_grad[:, None] * k_pos
            if ctx.needs_input_grad[2]:
                # dL/dτ = −(1/τ)·Σ_ij dS_ij·s_ij and Σ_ij dS_ij·s_ij = scale·Σ_i q̃_i·gq_i.
                dtemperature = -(scale * scale * (q_scaled * grad_q).sum()).reshape(temperature.shape)
                dtemperature = dtemperature.to(temperature.dtype)
            if ctx.needs_input_grad[0]:
                grad_q *= scale
                dq = (_through_normalization(grad_q, q, q_inv) if normalize else grad_q).to(q.dtype)
        if grad_k is not None:
            grad_k.index_add_(0, labels, -row_grad[:, None] * q_scaled)
            grad_k *= scale
            dk = (_through_normalization(grad_k, k, k_inv) if normalize else grad_k).to(k.dtype)
        return dq, dk, dtemperature, None, None, None, None, None


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
    block_sizes: Optional[Tuple[Optional[int], Optional[int], Optional[int]]] = None,
) -> torch.Tensor:
    """InfoNCE of queries q (N, D) against keys k (M, D): float32 scalar, or (N,) if reduction="none".

    ``info_nce(q, k) == cross_entropy(normalize(q) @ normalize(k).T / τ, labels)``, labels
    defaulting to label_offset + arange(N); symmetric=True (N == M) averages that with the k→q
    direction. temperature is a float or a 1-element tensor (it gets a gradient when it requires
    grad). Checking a tensor temperature, or labels, for their range costs one host sync each:
    pass a float τ and label_offset (not labels) to keep a training step asynchronous.
    backend: "auto" (Triton for CUDA tensors, the PyTorch reference otherwise), "triton" (also on
    CPU tensors under TRITON_INTERPRET=1), "torch". The Triton path never forms the N×M logits.
    block_sizes (rows, columns, D chunk) forces Triton tile sizes, for tests and tuning.
    """
    _check_inputs(q, k, temperature, labels, label_offset, symmetric, reduction, backend)
    if not use_triton("info_nce", q, backend):
        return info_nce_reference(q, k, temperature, labels=labels, label_offset=label_offset,
                                  symmetric=symmetric, normalize=normalize, reduction=reduction)
    if not q.is_cuda and q.dtype == torch.bfloat16:
        # Triton 3.8's interpreter returns garbage from bf16 tl.dot (fp32/fp16 are right):
        # run the kernels in fp32 there; autograd casts the gradients back to bf16.
        q, k = q.float(), k.float()
    if labels is None:
        labels = torch.arange(label_offset, label_offset + q.shape[0], device=q.device)
    if not isinstance(temperature, torch.Tensor):
        temperature = torch.tensor(float(temperature), device=q.device, dtype=torch.float32)
    temperature = temperature.to(q.device)
    block_m, block_n, block_d = block_sizes if block_sizes is not None else (None, None, None)
    blocks = dict(block_m=block_m, block_n=block_n, block_d=block_d)
    return InfoNCEFunction.apply(q, k, temperature, labels.contiguous(), symmetric, normalize,
                                 reduction, blocks)
