"""Fused InfoNCE: tiled logits with an online log-sum-exp, never the N×M matrix.

Shapes: q (N, D), k (M, D) in float32 / float16 / bfloat16 with any strides; per-row and
per-column statistics are float32 vectors. With ``s_ij = scale · rq_i · rk_j · (q_i · k_j)``
(``scale = 1/τ``, ``rq``/``rk`` the inverse L2 norms, or 1 without normalisation), labels l_i:

    forward   loss_i = logsumexp_j s_ij − s_{i,l_i}    (symmetric: ½(row + column LSE) − s_ii)
    backward  dS_ij = w_i·softmax_j(s)_ij + v_j·softmax_i(s)_ij − g_i·[j = l_i]
              dq̂_i = Σ_j dS_ij·k̂_j·scale,  dq_i = rq_i·(dq̂_i − q̂_i·(q̂_i·dq̂_i))  (k alike)

Launches, forward: a prologue (1/τ, inverse norms, positive logits, the label check), the sweep
(row statistics, per-row loss, the loss summed with atomic adds unless deterministic, when torch
sums it), and when symmetric the column merge. Backward, deterministic (the default): a gq and a
gk sweep, each owning its output rows and applying the chain rule through the normalisation in its
epilogue, with x̂·dx̂ = Σ dS·s read off the same tiles (or off gk's accumulator). Otherwise, where
it compiles without spills (bf16, N % 16 = 0, not symmetric): one sweep over k tiles, dk in
registers and dq̂ added to a float32 buffer with atomics, then a small dq kernel for dq's chain rule.
No kernel reads a value back to the host.

Every kernel works in base 2 (``exp2``/``log2``, one hardware instruction each): log2(e) is folded
into the logit scale, and the statistics stay in base 2 as (max, log2-sum) pairs.
Work: forward 2·N·M·D FLOPs; backward 6·N·M·D in one sweep, 8·N·M·D in two (each recomputes the
logits; gk 6·N·M·D instead of 4 where it loops over D chunks, see info_nce_bwd). Extra
memory: O(N + M) floats (+ 2·cdiv(N, BLOCK_M)·M column partials when symmetric, + an N×D float32
dq̂ buffer in the one-sweep backward).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from vito_fast.kernels._utils import interpreting, next_power_of_2

# tl.constexpr so that @triton.jit code may read them (plain globals are rejected on GPUs).
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
NORM_EPS = tl.constexpr(1e-12)  # F.normalize's default
TINY = tl.constexpr(1.1754943508222875e-38)  # smallest normal float32


@triton.jit
def _load_rows(
    X_ptr, idx, mask, d_start, D, stride_row, stride_col,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """(BLOCK_R, BLOCK_D) tile x[idx, d_start : d_start + BLOCK_D], zeros outside (rows, D)."""
    cols = d_start + tl.arange(0, BLOCK_D)
    return tl.load(X_ptr + idx[:, None] * stride_row + cols[None, :] * stride_col,
                   mask=mask[:, None] & (cols < D)[None, :], other=0.0)


@triton.jit
def _dot_tile(
    A_ptr, B_ptr,  # a (rows, D) and b (rows, D) matrices
    a_idx, a_mask, b_idx, b_mask,  # int64 row indices of the tile and their masks
    D, stride_a_row, stride_a_col, stride_b_row, stride_b_col,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """(BLOCK_A, BLOCK_B) float32 tile of a[a_idx] @ b[b_idx].T, looping over D in BLOCK_D chunks
    (the path for D > BLOCK_D; smaller D keeps one operand resident instead, see SINGLE_D)."""
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for d_start in range(0, D, BLOCK_D):
        a = _load_rows(A_ptr, a_idx, a_mask, d_start, D, stride_a_row, stride_a_col, BLOCK_A, BLOCK_D)
        b = _load_rows(B_ptr, b_idx, b_mask, d_start, D, stride_b_row, stride_b_col, BLOCK_B, BLOCK_D)
        # Native-dtype operands: tensor cores for fp16/bf16, fp32 accumulation always.
        acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _logits_tile(
    Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, scale2,
    rows, row_mask, cols, col_mask, q_tile, k_tile,
    D, stride_q_row, stride_q_col, stride_k_row, stride_k_col,
    HAS_NORM: tl.constexpr, SINGLE_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) base-2 logits s·log2(e) of q[rows] against k[cols].

    SINGLE_D (D ≤ BLOCK_D): q_tile and k_tile are the caller's full-D tiles (one of them stays
    resident across the sweep); otherwise they are ignored and the product loops over D.
    Every kernel builds its tiles here, in the same orientation and operation order, so that the
    backward recomputes the forward's logits bit for bit and exp2(s − row_max) is exact at the
    row maximum: with large unnormalised logits (|s| ~ 1e5, fp32 ulp ~ 0.01) an inconsistent
    recompute would otherwise skew the softmax by a percent.
    """
    if SINGLE_D:
        s = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PRECISION)
    else:
        s = _dot_tile(Q_ptr, K_ptr, rows, row_mask, cols, col_mask, D,
                      stride_q_row, stride_q_col, stride_k_row, stride_k_col,
                      BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION)
    s = s * scale2
    if HAS_NORM:
        s = s * tl.load(RowNorm_ptr + rows, mask=row_mask, other=0.0)[:, None]
        s = s * tl.load(ColNorm_ptr + cols, mask=col_mask, other=0.0)[None, :]
    return s


@triton.jit
def _labels_of(Labels_ptr, rows, row_mask, label_offset, M, HAS_LABELS: tl.constexpr):
    """Labels of q rows and whether each lies in [0, M) (read on the device: no host check)."""
    if HAS_LABELS:
        labels = tl.load(Labels_ptr + rows, mask=row_mask, other=0)
        return labels, (labels >= 0) & (labels < M)
    return rows + label_offset, rows >= 0  # the launcher checked label_offset + N ≤ M


@triton.jit
def _info_nce_prologue_kernel(
    # inputs
    Q_ptr, K_ptr, Labels_ptr, Temperature_ptr,
    # outputs: 1/τ (1,), inverse norms (N,) and (M,), positive logits (N,), the loss accumulator
    Scale_ptr, RowNorm_ptr, ColNorm_ptr, Positive_ptr, Loss_ptr,
    # sizes, default labels, temperature when it is a Python float
    N, M, D, label_offset, inv_temperature,
    stride_q_row, stride_q_col, stride_k_row, stride_k_col,
    # meta
    HAS_NORM: tl.constexpr, HAS_LABELS: tl.constexpr, TEMPERATURE_TENSOR: tl.constexpr,
    ZERO_LOSS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """O((N + M)·D) work before the sweep, one program per BLOCK_R rows of q and of k.

    Positive logit s_{i,l_i} = scale·rq_i·rk_{l_i}·(q_i·k_{l_i}), the norm of k_{l_i} taken from
    the gathered row itself. A label outside [0, M) (or τ ≤ 0 given as a tensor) makes that
    positive NaN, hence that row's loss and the reduced loss: the check costs no host sync.
    """
    block = tl.program_id(0).to(tl.int64)
    rows = block * BLOCK_R + tl.arange(0, BLOCK_R)
    if TEMPERATURE_TENSOR:
        tau = tl.load(Temperature_ptr).to(tl.float32)
        scale = tl.where(tau > 0, tl.div_rn(1.0, tau), float("nan"))
    else:
        scale = tl.cast(inv_temperature, tl.float32)
    if block == 0:
        tl.store(Scale_ptr, scale)
        if ZERO_LOSS:
            tl.store(Loss_ptr, 0.0)
    q_mask = rows < N
    k_mask = rows < M
    labels, valid = _labels_of(Labels_ptr, rows, q_mask, label_offset, M, HAS_LABELS)
    positive_mask = q_mask & valid
    dot = tl.zeros((BLOCK_R,), dtype=tl.float32)
    q_sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
    positive_sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
    k_sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d_start in range(0, D, BLOCK_D):
        q = _load_rows(Q_ptr, rows, q_mask, d_start, D, stride_q_row, stride_q_col, BLOCK_R, BLOCK_D).to(tl.float32)
        k_pos = _load_rows(K_ptr, labels, positive_mask, d_start, D, stride_k_row, stride_k_col,
                           BLOCK_R, BLOCK_D).to(tl.float32)
        dot += tl.sum(q * k_pos, 1)
        if HAS_NORM:
            k = _load_rows(K_ptr, rows, k_mask, d_start, D, stride_k_row, stride_k_col, BLOCK_R, BLOCK_D).to(tl.float32)
            q_sq += tl.sum(q * q, 1)
            positive_sq += tl.sum(k_pos * k_pos, 1)
            k_sq += tl.sum(k * k, 1)
    positive = dot * scale
    if HAS_NORM:
        q_inv = tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(q_sq), NORM_EPS))
        positive = positive * q_inv * tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(positive_sq), NORM_EPS))
        tl.store(RowNorm_ptr + rows, q_inv, mask=q_mask)
        tl.store(ColNorm_ptr + rows, tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(k_sq), NORM_EPS)), mask=k_mask)
    tl.store(Positive_ptr + rows, tl.where(valid, positive, float("nan")), mask=q_mask)


@triton.jit
def _info_nce_fwd_kernel(
    # inputs
    Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, Scale_ptr, Positive_ptr,
    # outputs: row max and log2-sum (N,), per-row-block column partials (2, blocks, M),
    # per-row loss (N,) and the reduced loss (1,)
    RowMax_ptr, RowLogSum_ptr, ColPartial_ptr, PerRow_ptr, Loss_ptr,
    # sizes, strides, the reduction's weight (1/N for a mean)
    N, M, D, loss_weight,
    stride_q_row, stride_q_col, stride_k_row, stride_k_col,
    stride_partial_stat, stride_partial_block,
    # meta
    HAS_NORM: tl.constexpr, SYMMETRIC: tl.constexpr, ATOMIC_LOSS: tl.constexpr,
    SINGLE_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per BLOCK_M rows of q; it sweeps all of k once (flash-attention order), with
    its q tile resident when D fits one BLOCK_D (then only k streams from L2).

    Statistics stay in base 2 and split as (max, log2 Σ 2^(s − max)) so that the backward can
    subtract the max exactly. Non-symmetric: the program also writes its rows' loss and, with
    ATOMIC_LOSS, adds their weighted sum to the loss (order of the adds: not deterministic).
    Symmetric: each program writes the (max, log-sum) of its own rows for every column, merged
    over row blocks by _info_nce_col_merge_kernel, which then writes the loss.
    """
    block_m = tl.program_id(0).to(tl.int64)
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    scale2 = tl.load(Scale_ptr) * LOG2E
    q_tile = rows  # placeholder operand when SINGLE_D is off
    if SINGLE_D:
        q_tile = _load_rows(Q_ptr, rows, row_mask, 0, D, stride_q_row, stride_q_col, BLOCK_M, BLOCK_D)

    max_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    sum_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for col_start in range(0, M, BLOCK_N):
        cols = col_start + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < M
        k_tile = cols
        if SINGLE_D:
            k_tile = _load_rows(K_ptr, cols, col_mask, 0, D, stride_k_row, stride_k_col, BLOCK_N, BLOCK_D)
        s = _logits_tile(Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, scale2, rows, row_mask, cols,
                         col_mask, q_tile, k_tile, D, stride_q_row, stride_q_col, stride_k_row,
                         stride_k_col, HAS_NORM, SINGLE_D, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION)
        s_row = tl.where(col_mask[None, :], s, float("-inf"))
        # Every column block holds at least one real column, so new_max is finite.
        new_max = tl.maximum(max_i, tl.max(s_row, 1))
        sum_i = sum_i * tl.exp2(max_i - new_max) + tl.sum(tl.exp2(s_row - new_max[:, None]), 1)
        max_i = new_max
        if SYMMETRIC:
            s_col = tl.where(row_mask[:, None], s, float("-inf"))
            col_max = tl.max(s_col, 0)
            col_sum = tl.sum(tl.exp2(s_col - col_max[None, :]), 0)
            partial = ColPartial_ptr + block_m * stride_partial_block + cols
            tl.store(partial, col_max, mask=col_mask)
            tl.store(partial + stride_partial_stat, tl.log2(col_sum), mask=col_mask)
    log_sum = tl.log2(sum_i)
    tl.store(RowMax_ptr + rows, max_i, mask=row_mask)
    tl.store(RowLogSum_ptr + rows, log_sum, mask=row_mask)
    if not SYMMETRIC:
        loss = (max_i + log_sum) * LN2 - tl.load(Positive_ptr + rows, mask=row_mask, other=0.0)
        tl.store(PerRow_ptr + rows, loss, mask=row_mask)
        if ATOMIC_LOSS:
            tl.atomic_add(Loss_ptr, tl.sum(tl.where(row_mask, loss, 0.0), 0) * loss_weight, sem="relaxed")


@triton.jit
def _info_nce_col_merge_kernel(
    ColPartial_ptr, RowMax_ptr, RowLogSum_ptr, Positive_ptr,  # inputs
    ColMax_ptr, ColLogSum_ptr, PerRow_ptr, Loss_ptr,  # outputs
    M, num_row_blocks, loss_weight, stride_partial_stat, stride_partial_block,
    ATOMIC_LOSS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Symmetric (N = M): merge the sweep's per-row-block column partials into column statistics,
    then loss_i = ½(row LSE_i + column LSE_i) − s_ii for the rows i of this program's columns."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < M
    col_max = tl.full((BLOCK_C,), float("-inf"), dtype=tl.float32)
    col_sum = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for block in range(0, num_row_blocks):
        partial = ColPartial_ptr + block * stride_partial_block + cols
        part_max = tl.load(partial, mask=col_mask, other=0.0)
        part_log_sum = tl.load(partial + stride_partial_stat, mask=col_mask, other=0.0)
        # Every row block holds a real row, so part_max and new_max are finite.
        new_max = tl.maximum(col_max, part_max)
        col_sum = col_sum * tl.exp2(col_max - new_max) + tl.exp2(part_max - new_max + part_log_sum)
        col_max = new_max
    col_log_sum = tl.log2(col_sum)
    tl.store(ColMax_ptr + cols, col_max, mask=col_mask)
    tl.store(ColLogSum_ptr + cols, col_log_sum, mask=col_mask)
    row_lse = tl.load(RowMax_ptr + cols, mask=col_mask, other=0.0) + tl.load(RowLogSum_ptr + cols, mask=col_mask, other=0.0)
    loss = 0.5 * (row_lse + col_max + col_log_sum) * LN2 - tl.load(Positive_ptr + cols, mask=col_mask, other=0.0)
    tl.store(PerRow_ptr + cols, loss, mask=col_mask)
    if ATOMIC_LOSS:
        tl.atomic_add(Loss_ptr, tl.sum(tl.where(col_mask, loss, 0.0), 0) * loss_weight, sem="relaxed")


@triton.jit
def _weight_scale(Grad_ptr, N, grad_weight, GRAD_PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    """max_i |g_i·grad_weight| (≥ TINY): dS is divided by it on its way through the dot, in the
    inputs' dtype (weights ~1/N, a mean over 64k rows, would flush to zero in fp16), and the
    gradients multiplied back. Per-row upstream gradients are scanned by every program (N floats
    from L2, small beside the sweep's reads of the other matrix)."""
    if GRAD_PER_ROW:
        largest = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, N, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            largest = tl.maximum(largest, tl.abs(tl.load(Grad_ptr + offsets, mask=offsets < N, other=0.0)))
        largest = tl.max(largest, 0)
    else:
        largest = tl.abs(tl.load(Grad_ptr))
    return tl.maximum(largest * tl.abs(grad_weight), TINY)


@triton.jit
def _softmax_grad_tile(
    s, rows, row_mask, cols, col_mask,
    RowMax_ptr, RowLogSum_ptr, ColMax_ptr, ColLogSum_ptr, Grad_ptr, Labels_ptr,
    label_offset, M, grad_weight,
    SYMMETRIC: tl.constexpr, GRAD_PER_ROW: tl.constexpr, HAS_LABELS: tl.constexpr,
):
    """dL/ds of the tile, divided by the weight scale: u_i = g_i·grad_weight (already divided),

        dS_ij = w_i·softmax_j(s)_ij [+ v_j·softmax_i(s)_ij] − u_i·[j = l_i],

    w = u (½u and v = ½u when symmetric); zero outside the real rows and columns, NaN on the rows
    of labels outside [0, M)."""
    row_max = tl.load(RowMax_ptr + rows, mask=row_mask, other=0.0)
    row_log_sum = tl.load(RowLogSum_ptr + rows, mask=row_mask, other=0.0)
    p_row = tl.exp2((s - row_max[:, None]) - row_log_sum[:, None])
    if SYMMETRIC:
        col_max = tl.load(ColMax_ptr + cols, mask=col_mask, other=0.0)
        col_log_sum = tl.load(ColLogSum_ptr + cols, mask=col_mask, other=0.0)
        p_col = tl.exp2((s - col_max[None, :]) - col_log_sum[None, :])
    # Per-row upstream gradients as vectors; a reduced loss's one gradient stays a scalar.
    if GRAD_PER_ROW:
        row_grad = (tl.load(Grad_ptr + rows, mask=row_mask, other=0.0) * grad_weight)[:, None]
        ds = p_row * (0.5 * row_grad if SYMMETRIC else row_grad)
        if SYMMETRIC:
            ds += p_col * (0.5 * grad_weight * tl.load(Grad_ptr + cols, mask=col_mask, other=0.0))[None, :]
    else:
        row_grad = tl.load(Grad_ptr) * grad_weight
        if SYMMETRIC:
            ds = (p_row + p_col) * (0.5 * row_grad)
        else:
            ds = p_row * row_grad
    labels, valid = _labels_of(Labels_ptr, rows, row_mask, label_offset, M, HAS_LABELS)
    ds -= tl.where(labels[:, None] == cols[None, :], row_grad, 0.0)
    if HAS_LABELS:
        ds = tl.where(valid[:, None], ds, float("nan"))
    # Padded rows/columns hold s = 0, whose exp2(0 − max) may be inf: drop them explicitly.
    return tl.where(row_mask[:, None] & col_mask[None, :], ds, 0.0)


@triton.jit
def _minus_projection(acc, x, beta, own, DOT_PRECISION: tl.constexpr):
    """acc − diag(β)·x as one more MMA into the accumulator: dx = r·scale·(acc − (x̂·dx̂ / scale)·r·x).

    Written elementwise, x converted to float32 beside the float32 accumulator (both BLOCK_OWN × D)
    spills on sm_90; the diagonal operand costs one BLOCK_OWN² tile. β is rounded to x's dtype
    (bf16: 2⁻⁹ relative on the projection term, as the dS operands of the sweep's dots); fp16
    saturates |β| at 65504 (β ≈ 3·r at most: rows with norm < ~5e-5, subnormal in fp16 anyway).
    """
    if x.dtype == tl.float16:
        beta = tl.minimum(tl.maximum(beta, -65504.0), 65504.0)
    diagonal = tl.where(own[:, None] == own[None, :], -beta[:, None], 0.0).to(x.dtype)
    return tl.dot(diagonal, x, acc, input_precision=DOT_PRECISION)


@triton.jit
def _info_nce_bwd_kernel(
    # inputs
    Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, Scale_ptr, Labels_ptr,
    # forward statistics per q row (Row*) and per k column (Col*), the upstream gradient
    RowMax_ptr, RowLogSum_ptr, ColMax_ptr, ColLogSum_ptr, Grad_ptr,
    # outputs: dq (N, D) when GRAD_Q, else dk (M, D), in the inputs' dtype; Σ_i q̂_i·dq̂_i per
    # program (for dτ, GRAD_Q); ATOMIC_DQ: the float32 dq̂ accumulator (N, D) and the weight scale
    Out_ptr, TauPartial_ptr, DqAcc_ptr, WeightScale_ptr,
    # sizes and strides
    N, M, D, label_offset, grad_weight,
    stride_q_row, stride_q_col, stride_k_row, stride_k_col, stride_out_row, stride_out_col,
    stride_acc_row, stride_acc_col,
    # meta
    GRAD_Q: tl.constexpr, ATOMIC_DQ: tl.constexpr, HAS_NORM: tl.constexpr,
    SYMMETRIC: tl.constexpr, GRAD_PER_ROW: tl.constexpr, HAS_LABELS: tl.constexpr,
    SINGLE_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_OWN: tl.constexpr, BLOCK_OTHER: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DOUT: tl.constexpr, BLOCK_DQ: tl.constexpr,
):
    """dq (GRAD_Q) or dk for BLOCK_OWN output rows × BLOCK_DOUT columns, with the chain rule
    through the normalisation in the epilogue: dx = rx·(scale·acc − (x̂·dx̂)·x̂), acc = Σ dS·(r·y)
    over the other matrix, x̂·dx̂ = Σ dS·s accumulated from the same tiles (so a program column
    that owns a D chunk needs no other column's output).

    Each program owns its output rows and sweeps the other matrix, recomputing the logit tiles
    (nothing N×M is stored). With ATOMIC_DQ (the one-sweep backward, GRAD_Q off) the program also
    adds dS·diag(rk)·k_own, in BLOCK_DQ-column chunks, to the float32 dq̂ accumulator of the q
    rows it streams: one sweep for both gradients, at the price of atomics. With SINGLE_D
    (D ≤ BLOCK_D = BLOCK_DOUT, one program column) the own tile stays resident and the streamed
    tile serves both the logits and the gradient product.
    """
    block_own = tl.program_id(0).to(tl.int64)
    block_d = tl.program_id(1).to(tl.int64)
    if GRAD_Q:
        num_own = N
        num_other = M
    else:
        num_own = M
        num_other = N
    own = block_own * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
    own_mask = own < num_own
    out_cols = block_d * BLOCK_DOUT + tl.arange(0, BLOCK_DOUT)
    out_mask = out_cols < D
    scale = tl.load(Scale_ptr)
    scale2 = scale * LOG2E
    weight_scale = _weight_scale(Grad_ptr, N, grad_weight, GRAD_PER_ROW, 1024)
    grad_weight = grad_weight / weight_scale
    if ATOMIC_DQ:
        if (block_own == 0) & (block_d == 0):
            tl.store(WeightScale_ptr, weight_scale)
    own_tile = own  # placeholder operand when SINGLE_D is off
    if SINGLE_D:
        if GRAD_Q:
            own_tile = _load_rows(Q_ptr, own, own_mask, 0, D, stride_q_row, stride_q_col, BLOCK_OWN, BLOCK_D)
        else:
            own_tile = _load_rows(K_ptr, own, own_mask, 0, D, stride_k_row, stride_k_col, BLOCK_OWN, BLOCK_D)
    if HAS_NORM:
        if GRAD_Q:
            own_norm = tl.load(RowNorm_ptr + own, mask=own_mask, other=1.0)
        else:
            own_norm = tl.load(ColNorm_ptr + own, mask=own_mask, other=1.0)

    acc = tl.zeros((BLOCK_OWN, BLOCK_DOUT), dtype=tl.float32)
    projection = tl.zeros((BLOCK_OWN,), dtype=tl.float32)  # x̂·dx̂ = Σ dS·s (natural log)
    for other_start in range(0, num_other, BLOCK_OTHER):
        other = other_start + tl.arange(0, BLOCK_OTHER).to(tl.int64)
        other_mask = other < num_other
        if GRAD_Q:
            if SINGLE_D:
                b = _load_rows(K_ptr, other, other_mask, 0, D, stride_k_row, stride_k_col, BLOCK_OTHER, BLOCK_D)
            else:
                b = _load_rows(K_ptr, other, other_mask, block_d * BLOCK_DOUT, D, stride_k_row,
                               stride_k_col, BLOCK_OTHER, BLOCK_DOUT)
            s = _logits_tile(Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, scale2, own, own_mask, other,
                             other_mask, own_tile, b, D, stride_q_row, stride_q_col, stride_k_row,
                             stride_k_col, HAS_NORM, SINGLE_D, BLOCK_OWN, BLOCK_OTHER, BLOCK_D,
                             DOT_PRECISION)
            ds = _softmax_grad_tile(s, own, own_mask, other, other_mask, RowMax_ptr, RowLogSum_ptr,
                                    ColMax_ptr, ColLogSum_ptr, Grad_ptr, Labels_ptr, label_offset,
                                    M, grad_weight, SYMMETRIC, GRAD_PER_ROW, HAS_LABELS)
            projection += tl.sum(ds * s, 1)
            if HAS_NORM:
                ds = ds * tl.load(ColNorm_ptr + other, mask=other_mask, other=0.0)[None, :]
            acc = tl.dot(ds.to(b.dtype), b, acc, input_precision=DOT_PRECISION)
        else:
            if SINGLE_D:
                b = _load_rows(Q_ptr, other, other_mask, 0, D, stride_q_row, stride_q_col, BLOCK_OTHER, BLOCK_D)
            else:
                b = _load_rows(Q_ptr, other, other_mask, block_d * BLOCK_DOUT, D, stride_q_row,
                               stride_q_col, BLOCK_OTHER, BLOCK_DOUT)
            # The tile stays (q rows × k columns), as in the forward, and is transposed for the dot.
            s = _logits_tile(Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, scale2, other, other_mask, own,
                             own_mask, b, own_tile, D, stride_q_row, stride_q_col, stride_k_row,
                             stride_k_col, HAS_NORM, SINGLE_D, BLOCK_OTHER, BLOCK_OWN, BLOCK_D,
                             DOT_PRECISION)
            ds = _softmax_grad_tile(s, other, other_mask, own, own_mask, RowMax_ptr, RowLogSum_ptr,
                                    ColMax_ptr, ColLogSum_ptr, Grad_ptr, Labels_ptr, label_offset,
                                    M, grad_weight, SYMMETRIC, GRAD_PER_ROW, HAS_LABELS)
            if not SINGLE_D:  # else read off the accumulator in the epilogue
                projection += tl.sum(ds * s, 0)
            # The dot operand dS·diag(rq) (dk = Σ_i dS_ij·rq_i·q_i). With ATOMIC_DQ it is dS·rq·rk,
            # shared by the dq̂ dot: dk's accumulator then holds rk·acc and dq̂'s rq·acc, divided
            # out in the epilogues (a second scaled copy of dS spills on sm_90).
            ds_k = ds
            if HAS_NORM:
                ds_k = ds * tl.load(RowNorm_ptr + other, mask=other_mask, other=0.0)[:, None]
                if ATOMIC_DQ:
                    ds_k = ds_k * own_norm[None, :]
            ds_k = ds_k.to(b.dtype)
            acc = tl.dot(tl.trans(ds_k), b, acc, input_precision=DOT_PRECISION)
            if ATOMIC_DQ:
                # dq̂ of the streamed q rows += dS·diag(rk)·k_own, BLOCK_DQ columns at a time
                # (the own k tile is re-read from L2: Triton cannot slice the resident one).
                for chunk in range(0, BLOCK_DOUT // BLOCK_DQ):
                    d_start = block_d * BLOCK_DOUT + chunk * BLOCK_DQ
                    k_chunk = _load_rows(K_ptr, own, own_mask, d_start, D, stride_k_row, stride_k_col,
                                         BLOCK_OWN, BLOCK_DQ)
                    part = tl.dot(ds_k, k_chunk, input_precision=DOT_PRECISION)
                    acc_cols = d_start + tl.arange(0, BLOCK_DQ)
                    tl.atomic_add(DqAcc_ptr + other[:, None] * stride_acc_row + acc_cols[None, :] * stride_acc_col,
                                  part, mask=other_mask[:, None] & (acc_cols < D)[None, :], sem="relaxed")
    projection *= LN2  # the tiles hold base-2 logits
    if HAS_NORM:
        if SINGLE_D:
            x = own_tile
        elif GRAD_Q:
            x = _load_rows(Q_ptr, own, own_mask, block_d * BLOCK_DOUT, D, stride_q_row, stride_q_col,
                           BLOCK_OWN, BLOCK_DOUT)
        else:
            x = _load_rows(K_ptr, own, own_mask, block_d * BLOCK_DOUT, D, stride_k_row, stride_k_col,
                           BLOCK_OWN, BLOCK_DOUT)
        # dx = r·scale·(acc − β·x), β = (x̂·dx̂)·r / scale. ATOMIC_DQ's accumulator holds r·acc
        # (see the sweep): then dx = scale·(that − r·β·x).
        if ATOMIC_DQ:
            acc_norm = tl.full((BLOCK_OWN,), 1.0, dtype=tl.float32)
        else:
            acc_norm = own_norm
        if SINGLE_D and not GRAD_Q:
            # k̂_j·dk̂_j = scale·rk_j·(k_j·acc_j): a row sum in the epilogue instead of a sum over the
            # streamed rows of every tile (a cross-warp reduction per tile, which spills).
            projection = tl.sum(acc * x.to(tl.float32), 1) * (acc_norm * scale)
        beta = projection * own_norm / scale
        if ATOMIC_DQ:
            beta = beta * own_norm
        acc = _minus_projection(acc, x, beta, own, DOT_PRECISION)
        grad = acc * (acc_norm * (scale * weight_scale))[:, None]
    else:
        grad = acc * (scale * weight_scale)
    tl.store(Out_ptr + own[:, None] * stride_out_row + out_cols[None, :] * stride_out_col,
             grad.to(Out_ptr.dtype.element_ty), mask=own_mask[:, None] & out_mask[None, :])
    if GRAD_Q:
        if block_d == 0:
            tl.store(TauPartial_ptr + block_own, tl.sum(projection, 0) * weight_scale)


@triton.jit
def _info_nce_dq_kernel(
    Q_ptr, DqAcc_ptr, RowNorm_ptr, Scale_ptr, WeightScale_ptr,  # inputs
    Out_ptr, TauPartial_ptr,  # outputs: dq (N, D) in q's dtype, Σ_i q̂_i·dq̂_i per program
    N, D,
    stride_q_row, stride_q_col, stride_acc_row, stride_acc_col, stride_out_row, stride_out_col,
    HAS_NORM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The one-sweep backward's dq = rq·(dq̂ − q̂·(q̂·dq̂)) from the atomically accumulated rq·acc
    (dq̂ = scale·acc, acc = Σ_j dS_ij·rk_j·k_j)."""
    block = tl.program_id(0).to(tl.int64)
    rows = block * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    scale = tl.load(Scale_ptr)
    weight_scale = tl.load(WeightScale_ptr)
    norm = tl.full((BLOCK_R,), 1.0, dtype=tl.float32)
    if HAS_NORM:
        norm = tl.load(RowNorm_ptr + rows, mask=row_mask, other=0.0)
    dot = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d_start in range(0, D, BLOCK_D):
        q = _load_rows(Q_ptr, rows, row_mask, d_start, D, stride_q_row, stride_q_col, BLOCK_R, BLOCK_D)
        acc = _load_rows(DqAcc_ptr, rows, row_mask, d_start, D, stride_acc_row, stride_acc_col, BLOCK_R, BLOCK_D)
        dot += tl.sum(q.to(tl.float32) * acc, 1)
    # The sweep accumulated rq·acc (module docstring): q̂·dq̂ = scale·(q·that), and
    # dq = rq·(scale·acc − (q̂·dq̂)·rq·q) = scale·that − (q̂·dq̂)·rq²·q.
    projection = dot * scale
    for d_start in range(0, D, BLOCK_D):
        cols = d_start + tl.arange(0, BLOCK_D)
        acc = _load_rows(DqAcc_ptr, rows, row_mask, d_start, D, stride_acc_row, stride_acc_col, BLOCK_R, BLOCK_D)
        grad = acc * scale
        if HAS_NORM:
            q = _load_rows(Q_ptr, rows, row_mask, d_start, D, stride_q_row, stride_q_col, BLOCK_R, BLOCK_D)
            grad = grad - (projection * norm * norm)[:, None] * q.to(tl.float32)
        tl.store(Out_ptr + rows[:, None] * stride_out_row + cols[None, :] * stride_out_col,
                 (grad * weight_scale).to(Out_ptr.dtype.element_ty), mask=row_mask[:, None] & (cols < D)[None, :])
    tl.store(TauPartial_ptr + block, tl.sum(tl.where(row_mask, projection, 0.0), 0) * weight_scale)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (torch's default matmul precision), not TF32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _block(requested: Optional[int], size: int, cap: int) -> int:
    """Power-of-2 block ≥ 16 (tl.dot's minimum), ≤ cap unless a launcher caller forces one."""
    if requested is not None:
        return max(16, next_power_of_2(requested))
    return max(16, min(next_power_of_2(size), cap))


class _Tiles(NamedTuple):
    """Default tile caps of one input dtype (each block is also capped by its next_power_of_2)."""

    fwd_rows: int
    fwd_cols: int
    single_d: int  # D up to this runs SINGLE_D (one operand resident) ...
    d_chunk: int  # ... larger D loops over chunks of this size
    bwd_q_rows: int  # q rows per backward tile: gq's own rows, gk's streamed rows
    bwd_k_rows: int  # k rows per backward tile: gk's own rows, gq's streamed rows
    bwd_dout: int  # output columns per program when D is chunked
    fwd_warps: int
    bwd_warps: int
    dq_chunk: int = 64  # one-sweep backward: dq̂ columns per dot and atomic add ...
    rows_small: int = 32  # prologue / dq kernel rows per program (and their D chunk below)
    d_small: int = 64
    dq_chunk_wide: int = 16  # ... when more than 128 columns of D are resident
    gq_stages: int = 2  # software-pipeline stages of the gq sweep ...
    gk_stages: int = 1  # ... and of the gk and one-sweep dk+dq sweeps


def _default_tiles(dtype: torch.dtype, interpreter: Optional[bool] = None) -> _Tiles:
    # The interpreter runs one numpy op per block: big blocks are much faster there.
    if interpreting() if interpreter is None else interpreter:
        return _Tiles(128, 128, 128, 128, 128, 128, 128, 4, 4, 64, 128, 128, dq_chunk_wide=64)
    # sm_90, read off ptxas and the PTX by benches/bench_compile.py (tests/test_compile_report.py),
    # compiled by Triton 3.6 and 3.8. bf16/fp16, D = 256: fwd 128×64 with q resident. Backward:
    # 128 q rows × 64 k rows in both sweeps, 8 warps: each of the two warpgroups owns 64 rows of
    # the logit tile. 64×64 tiles with 8 warps put both warpgroups on the same 64 logit rows (36
    # wgmma where 20 do) and spill in the symmetric gk; 4 warps on 64×64 spill too. The k-owning
    # sweeps (their own tile is the logits' B operand) spill with 2 stages; the one sweep with D =
    # 256 resident spills with 32-column dq̂ chunks (Triton 3.6). fp32 (IEEE products, no tensor
    # cores) needs far smaller tiles (D = 256 resident spills kilobytes), and its gq sweep one
    # stage (two: 255 registers, spilling on Triton 3.6; one: ~170), its gk sweep two.
    if dtype == torch.float32:
        return _Tiles(64, 64, 32, 32, 64, 32, 128, 4, 8, 32, gq_stages=1, gk_stages=2)
    return _Tiles(128, 64, 256, 64, 128, 64, 128, 8, 8, 32)


def _block_d(requested: Optional[int], d: int, tiles: _Tiles) -> int:
    """D tile: all of D when it fits (SINGLE_D: one operand resident), else a chunk to loop over."""
    if requested is not None:
        return max(16, next_power_of_2(requested))
    return max(16, next_power_of_2(d)) if next_power_of_2(d) <= tiles.single_d else tiles.d_chunk


class ForwardState(NamedTuple):
    """What the backward needs of the forward: 1/τ (1,), inverse norms (N,) / (M,) (None without
    normalisation) and the base-2 statistics, lse·log2(e) = max + log_sum, rows (N,) and, when
    symmetric, columns (M,)."""

    scale: torch.Tensor
    q_inv_norm: Optional[torch.Tensor]
    k_inv_norm: Optional[torch.Tensor]
    row_max: torch.Tensor
    row_log_sum: torch.Tensor
    col_max: Optional[torch.Tensor]
    col_log_sum: Optional[torch.Tensor]


def _reduction_weight(reduction: str, n: int) -> float:
    return 1.0 / n if reduction == "mean" else 1.0


def info_nce_fwd(
    q: torch.Tensor, k: torch.Tensor, temperature: Union[float, torch.Tensor], *,
    labels: Optional[torch.Tensor] = None, label_offset: int = 0, normalize: bool = True,
    symmetric: bool = False, reduction: str = "mean", deterministic: bool = True,
    block_m: Optional[int] = None, block_n: Optional[int] = None, block_d: Optional[int] = None,
) -> Tuple[torch.Tensor, ForwardState]:
    """The loss (float32 scalar, or (N,) when reduction="none") and the state for the backward.

    q (N, D), k (M, D); temperature a Python float or a 1-element tensor (read on the device);
    labels (N,) int64 on q's device or None (label_offset + arange(N), label_offset + N ≤ M
    checked by the caller). Labels outside [0, M) give NaN for their rows (no host check).
    Launches: prologue + sweep (+ column merge when symmetric); deterministic adds torch's sum
    instead of the sweep's atomic adds. Extra memory O(N + M) (+ 2·cdiv(N, block_m)·M floats).
    """
    n, d = q.shape
    m = k.shape[0]
    device = q.device
    tiles = _default_tiles(q.dtype)
    block_m, block_n = _block(block_m, n, tiles.fwd_rows), _block(block_n, m, tiles.fwd_cols)
    block_d = _block_d(block_d, d, tiles)
    num_row_blocks = triton.cdiv(n, block_m)
    atomic_loss = reduction != "none" and not deterministic
    # One allocation for the O(N + M) float32 vectors: 1/τ, the loss, norms, positives, statistics.
    sizes = [1, 1, n, m, n, n, n, n] + ([m, m] if symmetric else [])
    scale, loss, q_inv, k_inv, positive, row_max, row_log_sum, per_row, *col = torch.empty(
        sum(sizes), device=device, dtype=torch.float32).split(sizes)
    temperature_tensor = isinstance(temperature, torch.Tensor)
    prologue_rows = _block(None, max(n, m), tiles.rows_small)
    _info_nce_prologue_kernel[(triton.cdiv(max(n, m), prologue_rows),)](
        q, k, labels if labels is not None else scale, temperature if temperature_tensor else scale,
        scale, q_inv, k_inv, positive, loss,
        n, m, d, label_offset, 1.0 if temperature_tensor else 1.0 / float(temperature),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        HAS_NORM=normalize, HAS_LABELS=labels is not None, TEMPERATURE_TENSOR=temperature_tensor,
        ZERO_LOSS=atomic_loss, BLOCK_R=prologue_rows, BLOCK_D=_block(None, d, tiles.d_small),
        num_warps=4, num_stages=1,
    )
    partial = (torch.empty((2, num_row_blocks, m), device=device, dtype=torch.float32)
               if symmetric else row_max[None, None])  # a dummy pointer when unused
    weight = _reduction_weight(reduction, n)
    _info_nce_fwd_kernel[(num_row_blocks,)](
        q, k, q_inv, k_inv, scale, positive,
        row_max, row_log_sum, partial, per_row, loss,
        n, m, d, weight,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), partial.stride(0), partial.stride(1),
        HAS_NORM=normalize, SYMMETRIC=symmetric, ATOMIC_LOSS=atomic_loss, SINGLE_D=d <= block_d,
        DOT_PRECISION=_dot_precision(q.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        # fp32 (FMA dots): ptxas holds the 2-stage forward at 168 registers and spills 24 B.
        num_warps=tiles.fwd_warps, num_stages=1 if q.dtype == torch.float32 else 2,
    )
    if symmetric:
        merge_cols = _block(None, m, 256)
        _info_nce_col_merge_kernel[(triton.cdiv(m, merge_cols),)](
            partial, row_max, row_log_sum, positive, col[0], col[1], per_row, loss,
            m, num_row_blocks, weight, partial.stride(0), partial.stride(1),
            ATOMIC_LOSS=atomic_loss, BLOCK_C=merge_cols, num_warps=4, num_stages=1,
        )
    if reduction == "none":
        result = per_row
    elif atomic_loss:
        result = loss.view(())
    else:  # one launch, summed in a fixed order
        result = per_row.mean() if reduction == "mean" else per_row.sum()
    state = ForwardState(scale, q_inv if normalize else None, k_inv if normalize else None,
                         row_max, row_log_sum, *(col if symmetric else (None, None)))
    return result, state


def _one_sweep_fits(dtype: torch.dtype, n: int, symmetric: bool) -> bool:
    """Where the one-sweep backward runs (else two sweeps), read off the sm_90 compile report:
    bf16 with N a multiple of 16 (without that divisibility hint its masks spill 32 B), not
    symmetric (the two column terms spill); not fp16 (dS·rq·rk, its shared dot operand, would
    leave fp16's range for large row norms) nor fp32 (its FMA path spills kilobytes). The
    interpreter also runs it on fp32, the dtype it tests the kernels in."""
    dtypes = (torch.bfloat16, torch.float32) if interpreting() else (torch.bfloat16,)
    return dtype in dtypes and n % 16 == 0 and not symmetric


def info_nce_bwd(
    q: torch.Tensor, k: torch.Tensor, state: ForwardState, grad_loss: torch.Tensor, *,
    labels: Optional[torch.Tensor] = None, label_offset: int = 0, reduction: str = "mean",
    need_q: bool = True, need_k: bool = True, deterministic: bool = True,
    block_m: Optional[int] = None, block_n: Optional[int] = None, block_d: Optional[int] = None,
    block_dout: Optional[int] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
    """dq (N, D) and dk (M, D) in the inputs' dtype (each None unless asked), and per-program
    partials of Σ_ij dL/ds_ij·s_ij (so dL/dτ = −(1/τ)·their sum; empty when dq is not computed).

    grad_loss: the upstream gradient, float32, () or (N,) for reduction="none". When both
    gradients are asked, not deterministic and _one_sweep_fits: one sweep over k tiles (dk in
    registers, dq̂ by float32 atomic adds into an N×D buffer: zeroing, sweep, dq kernel); otherwise
    one sweep per asked gradient, each owning its output rows (no atomics: bitwise reproducible).
    """
    n, d = q.shape
    m = k.shape[0]
    tiles = _default_tiles(q.dtype)
    symmetric = state.col_max is not None
    has_norm = state.q_inv_norm is not None
    dummy = state.row_max
    block_d = _block_d(block_d, d, tiles)
    single_d = d <= block_d  # the same rule as the forward: identical logits tiles
    # Chunked D: each program column owns BLOCK_DOUT output columns (and recomputes the logits).
    block_dout = block_d if single_d else _block(block_dout, d, tiles.bwd_dout)
    q_rows, k_rows = _block(block_m, n, tiles.bwd_q_rows), _block(block_n, m, tiles.bwd_k_rows)
    grad_loss = grad_loss.reshape(-1)
    one_sweep = need_q and need_k and not deterministic and _one_sweep_fits(q.dtype, n, symmetric)
    weight_scale = torch.empty(1, device=q.device, dtype=torch.float32)
    tau_partial = torch.empty(triton.cdiv(n, q_rows if not one_sweep else tiles.rows_small) if need_q else 0,
                              device=q.device, dtype=torch.float32)
    dq_acc = (torch.zeros((n, d), device=q.device, dtype=torch.float32) if one_sweep
              else weight_scale[None])  # a dummy pointer when unused
    common = dict(
        N=n, M=m, D=d, label_offset=label_offset, grad_weight=_reduction_weight(reduction, n),
        stride_q_row=q.stride(0), stride_q_col=q.stride(1), stride_k_row=k.stride(0), stride_k_col=k.stride(1),
        stride_acc_row=dq_acc.stride(0), stride_acc_col=dq_acc.stride(1),
        HAS_NORM=has_norm, SYMMETRIC=symmetric, GRAD_PER_ROW=reduction == "none",
        HAS_LABELS=labels is not None, DOT_PRECISION=_dot_precision(q.dtype),
    )
    grads = [None, None]
    for grad_q in [flag for flag, needed in ((True, need_q and not one_sweep), (False, need_k)) if needed]:
        rows = n if grad_q else m
        block_own, block_other = (q_rows, k_rows) if grad_q else (k_rows, q_rows)
        sweep_single_d, sweep_block_d, dout = single_d, block_d, block_dout
        # The sm_90 sweeps with D resident spill here: gk when symmetric (both statistics'
        # vectors) or N is not a multiple of 16 (per-row masks), gq when both (Triton 3.6: 80 B).
        resident_spills = (symmetric and n % 16) if grad_q else (symmetric or n % 16)
        if not one_sweep and single_d and resident_spills and d > tiles.d_chunk and not interpreting():
            # They loop over D chunks instead, each program column owning bwd_dout output columns,
            # and recompute the logits per column (6·N·M·D instead of 4 at D = 256). The logits
            # stay the forward's bit for bit: the chunk loop issues the same k16 MMA steps on one
            # accumulator, in the same order.
            sweep_single_d, sweep_block_d, dout = False, tiles.d_chunk, tiles.bwd_dout
        grads[0 if grad_q else 1] = grad = torch.empty((rows, d), device=q.device, dtype=q.dtype)
        _info_nce_bwd_kernel[(triton.cdiv(rows, block_own), triton.cdiv(d, dout))](
            q, k, state.q_inv_norm if has_norm else dummy, state.k_inv_norm if has_norm else dummy,
            state.scale, labels if labels is not None else dummy,
            state.row_max, state.row_log_sum, state.col_max if symmetric else dummy,
            state.col_log_sum if symmetric else dummy, grad_loss,
            grad, tau_partial, dq_acc, weight_scale,
            stride_out_row=grad.stride(0), stride_out_col=grad.stride(1),
            GRAD_Q=grad_q, ATOMIC_DQ=one_sweep and not grad_q, SINGLE_D=sweep_single_d,
            BLOCK_D=sweep_block_d, BLOCK_DOUT=dout,
            BLOCK_DQ=min(tiles.dq_chunk if dout <= 128 else tiles.dq_chunk_wide, dout),
            BLOCK_OWN=block_own, BLOCK_OTHER=block_other,
            num_stages=tiles.gq_stages if grad_q else tiles.gk_stages, num_warps=tiles.bwd_warps, **common,
        )
    if one_sweep:
        grads[0] = torch.empty((n, d), device=q.device, dtype=q.dtype)
        _info_nce_dq_kernel[(triton.cdiv(n, tiles.rows_small),)](
            q, dq_acc, state.q_inv_norm if has_norm else dummy, state.scale, weight_scale,
            grads[0], tau_partial,
            n, d, q.stride(0), q.stride(1), dq_acc.stride(0), dq_acc.stride(1),
            grads[0].stride(0), grads[0].stride(1),
            HAS_NORM=has_norm, BLOCK_R=tiles.rows_small, BLOCK_D=_block(None, d, tiles.d_small),
            num_warps=4, num_stages=1,
        )
    return grads[0], grads[1], tau_partial
