"""Fused InfoNCE: tiled logits with an online log-sum-exp, never the N×M matrix.

Shapes: q (N, D), k (M, D) in float32 / float16 / bfloat16 with any strides; per-row and
per-column statistics are float32 vectors. With ``s_ij = scale · rq_i · rk_j · (q_i · k_j)``
(``scale = 1/τ``, ``rq``/``rk`` the inverse L2 norms, or 1 without normalisation):

    forward   row_lse_i = logsumexp_j s_ij          (and col_lse_j = logsumexp_i s_ij if symmetric)
    backward  gq_i = Σ_j dS_ij · rk_j · k_j,   gk_j = Σ_i dS_ij · rq_i · q_i
              with dS_ij = w_i · exp(s_ij − row_lse_i) + v_j · exp(s_ij − col_lse_j)

The positive-logit terms (one per row, O(N·D)) and the chain rule through the L2 normalisation
are left to the autograd wrapper, which keeps these kernels free of label logic.

Every kernel works in base 2 (``exp2``/``log2``, one hardware instruction each): log2(e) is folded
into the per-row scale, and statistics are converted back to natural units when stored.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from vito_fast.kernels._utils import interpreting, next_power_of_2

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _dot_tile(
    A_ptr, B_ptr,  # a (rows, D) and b (rows, D) matrices
    a_idx, a_mask, b_idx, b_mask,  # int64 row indices of the tile and their masks
    D, stride_a_row, stride_a_col, stride_b_row, stride_b_col,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """(BLOCK_A, BLOCK_B) float32 tile of a[a_idx] @ b[b_idx].T, looping over D in BLOCK_D chunks."""
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for d_start in range(0, D, BLOCK_D):
        cols = d_start + tl.arange(0, BLOCK_D)
        col_mask = cols < D
        a = tl.load(A_ptr + a_idx[:, None] * stride_a_row + cols[None, :] * stride_a_col,
                    mask=a_mask[:, None] & col_mask[None, :], other=0.0)
        b = tl.load(B_ptr + b_idx[:, None] * stride_b_row + cols[None, :] * stride_b_col,
                    mask=b_mask[:, None] & col_mask[None, :], other=0.0)
        # Native-dtype operands: tensor cores for fp16/bf16, fp32 accumulation always.
        acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _info_nce_fwd_kernel(
    # inputs
    Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, Scale_ptr,
    # outputs: row LSE (N,), and per-row-block column LSE partials (cdiv(N, BLOCK_M), M)
    RowLse_ptr, ColLsePartial_ptr,
    # sizes and strides
    N, M, D,
    stride_q_row, stride_q_col, stride_k_row, stride_k_col, stride_partial_block,
    # meta
    HAS_NORM: tl.constexpr, SYMMETRIC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per BLOCK_M rows of q; it sweeps all of k once (flash-attention order).

    Symmetric mode gets the column LSE from the same sweep: each program writes the LSE of its
    own rows for every column (one float per column), and the host reduces those partials with a
    logsumexp over row blocks. No atomics, so the result is deterministic.
    """
    block_m = tl.program_id(0).to(tl.int64)
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    row_scale = tl.load(Scale_ptr) * LOG2E + tl.zeros((BLOCK_M,), dtype=tl.float32)
    if HAS_NORM:
        row_scale = row_scale * tl.load(RowNorm_ptr + rows, mask=row_mask, other=0.0)

    max_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    sum_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for col_start in range(0, M, BLOCK_N):
        cols = col_start + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < M
        s = _dot_tile(Q_ptr, K_ptr, rows, row_mask, cols, col_mask, D,
                      stride_q_row, stride_q_col, stride_k_row, stride_k_col,
                      BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION)
        s = s * row_scale[:, None]
        if HAS_NORM:
            s = s * tl.load(ColNorm_ptr + cols, mask=col_mask, other=0.0)[None, :]
        s_row = tl.where(col_mask[None, :], s, float("-inf"))
        # Every column block holds at least one real column, so new_max is finite.
        new_max = tl.maximum(max_i, tl.max(s_row, 1))
        sum_i = sum_i * tl.exp2(max_i - new_max) + tl.sum(tl.exp2(s_row - new_max[:, None]), 1)
        max_i = new_max
        if SYMMETRIC:
            s_col = tl.where(row_mask[:, None], s, float("-inf"))
            col_max = tl.max(s_col, 0)
            col_sum = tl.sum(tl.exp2(s_col - col_max[None, :]), 0)
            tl.store(ColLsePartial_ptr + block_m * stride_partial_block + cols,
                     (col_max + tl.log2(col_sum)) * LN2, mask=col_mask)
    tl.store(RowLse_ptr + rows, (max_i + tl.log2(sum_i)) * LN2, mask=row_mask)


@triton.jit
def _info_nce_bwd_kernel(
    # inputs: A is the matrix whose gradient this launch computes, B the other one
    A_ptr, B_ptr, ANorm_ptr, BNorm_ptr, Scale_ptr,
    # statistics and upstream weights, indexed by q row (Row*) and k column (Col*)
    RowLse_ptr, ColLse_ptr, RowWeight_ptr, ColWeight_ptr,
    # output: float32 (rows of A, D)
    GradA_ptr,
    # sizes and strides
    NUM_A, NUM_B, D,
    stride_a_row, stride_a_col, stride_b_row, stride_b_col, stride_g_row, stride_g_col,
    # meta
    A_IS_Q: tl.constexpr, HAS_NORM: tl.constexpr, SYMMETRIC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DOUT: tl.constexpr,
):
    """gradA[a] = Σ_b dS[a, b] · bnorm_b · B[b] for one (BLOCK_A rows, BLOCK_DOUT columns) block.

    Called with (A, B) = (q, k) for dq and (k, q) for dk: the same code, the roles of the row and
    column statistics swap with A_IS_Q. Each program owns its output rows, so no atomics are needed
    (deterministic). The logits tile is recomputed from q and k instead of being stored.
    """
    block_a = tl.program_id(0).to(tl.int64)
    block_d = tl.program_id(1).to(tl.int64)
    a_idx = block_a * BLOCK_A + tl.arange(0, BLOCK_A)
    a_mask = a_idx < NUM_A
    out_cols = block_d * BLOCK_DOUT + tl.arange(0, BLOCK_DOUT)
    out_mask = out_cols < D
    scale = tl.load(Scale_ptr) * LOG2E
    a_scale = scale + tl.zeros((BLOCK_A,), dtype=tl.float32)
    if HAS_NORM:
        a_scale = a_scale * tl.load(ANorm_ptr + a_idx, mask=a_mask, other=0.0)
    # The statistics of A's rows: row stats when A is q, column stats when A is k.
    if A_IS_Q:
        a_lse = tl.load(RowLse_ptr + a_idx, mask=a_mask, other=0.0) * LOG2E
        a_weight = tl.load(RowWeight_ptr + a_idx, mask=a_mask, other=0.0)
    else:
        a_lse = tl.load(ColLse_ptr + a_idx, mask=a_mask, other=0.0) * LOG2E
        a_weight = tl.load(ColWeight_ptr + a_idx, mask=a_mask, other=0.0)

    acc = tl.zeros((BLOCK_A, BLOCK_DOUT), dtype=tl.float32)
    for b_start in range(0, NUM_B, BLOCK_B):
        b_idx = b_start + tl.arange(0, BLOCK_B).to(tl.int64)
        b_mask = b_idx < NUM_B
        s = _dot_tile(A_ptr, B_ptr, a_idx, a_mask, b_idx, b_mask, D,
                      stride_a_row, stride_a_col, stride_b_row, stride_b_col,
                      BLOCK_A, BLOCK_B, BLOCK_D, DOT_PRECISION)
        s = s * a_scale[:, None]
        if HAS_NORM:
            b_norm = tl.load(BNorm_ptr + b_idx, mask=b_mask, other=0.0)
            s = s * b_norm[None, :]
        if A_IS_Q:
            b_lse = tl.load(ColLse_ptr + b_idx, mask=b_mask, other=0.0) * LOG2E
            b_weight = tl.load(ColWeight_ptr + b_idx, mask=b_mask, other=0.0)
        else:
            b_lse = tl.load(RowLse_ptr + b_idx, mask=b_mask, other=0.0) * LOG2E
            b_weight = tl.load(RowWeight_ptr + b_idx, mask=b_mask, other=0.0)
        # Softmax along q's rows uses the row LSE; along k's columns the column LSE.
        if A_IS_Q:
            ds = tl.exp2(s - a_lse[:, None]) * a_weight[:, None]
            if SYMMETRIC:
                ds += tl.exp2(s - b_lse[None, :]) * b_weight[None, :]
        else:
            ds = tl.exp2(s - b_lse[None, :]) * b_weight[None, :]
            if SYMMETRIC:
                ds += tl.exp2(s - a_lse[:, None]) * a_weight[:, None]
        # Padded rows of B would otherwise add exp(0 − lse) terms (possibly inf) to real rows.
        ds = tl.where(b_mask[None, :] & a_mask[:, None], ds, 0.0)
        if HAS_NORM:
            ds = ds * b_norm[None, :]
        b_out = tl.load(B_ptr + b_idx[:, None] * stride_b_row + out_cols[None, :] * stride_b_col,
                        mask=b_mask[:, None] & out_mask[None, :], other=0.0)
        acc = tl.dot(ds.to(b_out.dtype), b_out, acc, input_precision=DOT_PRECISION)
    tl.store(GradA_ptr + a_idx[:, None] * stride_g_row + out_cols[None, :] * stride_g_col,
             acc, mask=a_mask[:, None] & out_mask[None, :])


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (torch's default matmul precision), not TF32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _block(requested: Optional[int], size: int, cap: int) -> int:
    """Power-of-2 block ≥ 16 (tl.dot's minimum), ≤ cap unless a launcher caller forces one."""
    if requested is not None:
        return max(16, next_power_of_2(requested))
    return max(16, min(next_power_of_2(size), cap))


def _default_caps() -> Tuple[int, int, int, int]:
    # The interpreter runs one numpy op per block: big blocks are much faster there.
    if interpreting():
        return 128, 128, 128, 256
    return 128, 64, 64, 256  # (rows, columns, D chunk of the dot, D chunk of the output)


def info_nce_fwd(
    q: torch.Tensor, k: torch.Tensor, q_inv_norm: Optional[torch.Tensor],
    k_inv_norm: Optional[torch.Tensor], scale: torch.Tensor, symmetric: bool,
    block_m: Optional[int] = None, block_n: Optional[int] = None, block_d: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Row LSE (N,) and, if symmetric, column LSE (M,) of s = scale·diag(rq)·q·kᵀ·diag(rk).

    q (N, D), k (M, D); q_inv_norm (N,) / k_inv_norm (M,) float32 or both None (no normalisation);
    scale a 1-element float32 tensor holding 1/τ (read on the device: no host sync).
    Extra memory: O(N + M), plus cdiv(N, block_m)·M floats of column partials when symmetric.
    """
    n, d = q.shape
    m = k.shape[0]
    cap_m, cap_n, cap_d, _ = _default_caps()
    block_m, block_n, block_d = _block(block_m, n, cap_m), _block(block_n, m, cap_n), _block(block_d, d, cap_d)
    num_row_blocks = triton.cdiv(n, block_m)
    row_lse = torch.empty(n, device=q.device, dtype=torch.float32)
    partial = (torch.empty((num_row_blocks, m), device=q.device, dtype=torch.float32)
               if symmetric else row_lse)  # a dummy pointer when unused
    has_norm = q_inv_norm is not None
    _info_nce_fwd_kernel[(num_row_blocks,)](
        q, k, q_inv_norm if has_norm else row_lse, k_inv_norm if has_norm else row_lse, scale,
        row_lse, partial,
        n, m, d,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), partial.stride(0),
        HAS_NORM=has_norm, SYMMETRIC=symmetric, DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=8 if block_m * block_n >= 128 * 64 else 4, num_stages=2,
    )
    col_lse = torch.logsumexp(partial, dim=0) if symmetric else None
    return row_lse, col_lse


def info_nce_bwd(
    q: torch.Tensor, k: torch.Tensor, q_inv_norm: Optional[torch.Tensor],
    k_inv_norm: Optional[torch.Tensor], scale: torch.Tensor,
    row_lse: torch.Tensor, col_lse: Optional[torch.Tensor],
    row_weight: torch.Tensor, col_weight: Optional[torch.Tensor],
    need_q: bool, need_k: bool,
    block_m: Optional[int] = None, block_n: Optional[int] = None, block_d: Optional[int] = None,
    block_dout: Optional[int] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """float32 gq (N, D) = dS·diag(rk)·k and gk (M, D) = dSᵀ·diag(rq)·q, each only when asked.

    dS_ij = row_weight_i·softmax_j(s)_ij + col_weight_j·softmax_i(s)_ij (the second term only
    when col_lse/col_weight are given, i.e. symmetric). Label terms are not included.
    """
    n, d = q.shape
    m = k.shape[0]
    cap_m, cap_n, cap_d, cap_dout = _default_caps()
    symmetric = col_lse is not None
    has_norm = q_inv_norm is not None
    dummy = row_lse
    common = dict(HAS_NORM=has_norm, SYMMETRIC=symmetric, DOT_PRECISION=_dot_precision(q.dtype),
                  BLOCK_D=_block(block_d, d, cap_d), BLOCK_DOUT=_block(block_dout, d, cap_dout))
    stats = (row_lse, col_lse if symmetric else dummy, row_weight,
             col_weight if symmetric else dummy)
    num_d_blocks = triton.cdiv(d, common["BLOCK_DOUT"])
    grad_q = grad_k = None
    # The bwd accumulator is (BLOCK_A, BLOCK_DOUT) fp32 in registers: keep BLOCK_A at 64 on GPUs.
    cap_a = cap_m if interpreting() else 64
    for is_q, needed in ((True, need_q), (False, need_k)):
        if not needed:
            continue
        a, b = (q, k) if is_q else (k, q)
        a_norm, b_norm = (q_inv_norm, k_inv_norm) if is_q else (k_inv_norm, q_inv_norm)
        block_a = _block(block_m if is_q else block_n, a.shape[0], cap_a)
        block_b = _block(block_n if is_q else block_m, b.shape[0], cap_n)
        grad = torch.empty(a.shape, device=a.device, dtype=torch.float32)
        _info_nce_bwd_kernel[(triton.cdiv(a.shape[0], block_a), num_d_blocks)](
            a, b, a_norm if has_norm else dummy, b_norm if has_norm else dummy, scale,
            *stats, grad,
            a.shape[0], b.shape[0], d,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), grad.stride(0), grad.stride(1),
            A_IS_Q=is_q, BLOCK_A=block_a, BLOCK_B=block_b, **common,
            num_warps=8, num_stages=2,
        )
        if is_q:
            grad_q = grad
        else:
            grad_k = grad
    return grad_q, grad_k
