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
into the logit scale, and the statistics stay in base 2 as (max, log2-sum) pairs (``RowStats``).
Work: forward 2·N·M·D FLOPs; each gradient sweep (gq, gk) recomputes the logits, 4·N·M·D each.
Extra memory: O(N + M) floats (+ 2·cdiv(N, BLOCK_M)·M column partials when symmetric).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from vito_fast.kernels._utils import interpreting, next_power_of_2

# tl.constexpr so that @triton.jit code may read them (plain globals are rejected on GPUs).
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


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
def _info_nce_fwd_kernel(
    # inputs
    Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, Scale_ptr,
    # outputs: row max and log2-sum (N,), and per-row-block column partials (2, blocks, M)
    RowMax_ptr, RowLogSum_ptr, ColPartial_ptr,
    # sizes and strides
    N, M, D,
    stride_q_row, stride_q_col, stride_k_row, stride_k_col,
    stride_partial_stat, stride_partial_block,
    # meta
    HAS_NORM: tl.constexpr, SYMMETRIC: tl.constexpr, SINGLE_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per BLOCK_M rows of q; it sweeps all of k once (flash-attention order), with
    its q tile resident when D fits one BLOCK_D (then only k streams from L2).

    Statistics stay in base 2 and split as (max, log2 Σ 2^(s − max)) so that the backward can
    subtract the max exactly. Symmetric mode gets the column statistics from the same sweep: each
    program writes the (max, log-sum) of its own rows for every column, and the host merges those
    partials over row blocks. No atomics, so the result is deterministic.
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
    tl.store(RowMax_ptr + rows, max_i, mask=row_mask)
    tl.store(RowLogSum_ptr + rows, tl.log2(sum_i), mask=row_mask)


@triton.jit
def _softmax_grad_tile(
    s, rows, row_mask, cols, col_mask,
    RowMax_ptr, RowLogSum_ptr, RowWeight_ptr, ColMax_ptr, ColLogSum_ptr, ColWeight_ptr,
    SYMMETRIC: tl.constexpr,
):
    """dS = w_i·softmax_j(s)_ij [+ v_j·softmax_i(s)_ij], zero outside the real rows and columns."""
    row_max = tl.load(RowMax_ptr + rows, mask=row_mask, other=0.0)
    row_log_sum = tl.load(RowLogSum_ptr + rows, mask=row_mask, other=0.0)
    row_weight = tl.load(RowWeight_ptr + rows, mask=row_mask, other=0.0)
    ds = tl.exp2((s - row_max[:, None]) - row_log_sum[:, None]) * row_weight[:, None]
    if SYMMETRIC:
        col_max = tl.load(ColMax_ptr + cols, mask=col_mask, other=0.0)
        col_log_sum = tl.load(ColLogSum_ptr + cols, mask=col_mask, other=0.0)
        col_weight = tl.load(ColWeight_ptr + cols, mask=col_mask, other=0.0)
        ds += tl.exp2((s - col_max[None, :]) - col_log_sum[None, :]) * col_weight[None, :]
    # Padded rows/columns hold s = 0, whose exp2(0 − max) may be inf: drop them explicitly.
    return tl.where(row_mask[:, None] & col_mask[None, :], ds, 0.0)


@triton.jit
def _info_nce_bwd_kernel(
    # inputs
    Q_ptr, K_ptr, RowNorm_ptr, ColNorm_ptr, Scale_ptr,
    # forward statistics and upstream weights, per q row (Row*) and per k column (Col*)
    RowMax_ptr, RowLogSum_ptr, RowWeight_ptr, ColMax_ptr, ColLogSum_ptr, ColWeight_ptr,
    # output: float32 gq (N, D) when GRAD_Q, else gk (M, D)
    Grad_ptr,
    # sizes and strides
    N, M, D,
    stride_q_row, stride_q_col, stride_k_row, stride_k_col, stride_g_row, stride_g_col,
    # meta
    GRAD_Q: tl.constexpr, HAS_NORM: tl.constexpr, SYMMETRIC: tl.constexpr,
    SINGLE_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_OWN: tl.constexpr, BLOCK_OTHER: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DOUT: tl.constexpr,
):
    """gq = dS·diag(rk)·k (GRAD_Q) or gk = dSᵀ·diag(rq)·q, for BLOCK_OWN output rows × BLOCK_DOUT.

    Each program owns its output rows and sweeps the other matrix, recomputing the logit tiles
    (nothing N×M is stored), so no atomics are needed and the result is deterministic. With
    SINGLE_D (D ≤ BLOCK_D = BLOCK_DOUT, one program column) the own tile stays resident and the
    streamed tile serves both the logits and the gradient product.
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
    scale2 = tl.load(Scale_ptr) * LOG2E
    own_tile = own  # placeholder operand when SINGLE_D is off
    if SINGLE_D:
        if GRAD_Q:
            own_tile = _load_rows(Q_ptr, own, own_mask, 0, D, stride_q_row, stride_q_col, BLOCK_OWN, BLOCK_D)
        else:
            own_tile = _load_rows(K_ptr, own, own_mask, 0, D, stride_k_row, stride_k_col, BLOCK_OWN, BLOCK_D)

    acc = tl.zeros((BLOCK_OWN, BLOCK_DOUT), dtype=tl.float32)
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
                                    RowWeight_ptr, ColMax_ptr, ColLogSum_ptr, ColWeight_ptr,
                                    SYMMETRIC)
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
                                    RowWeight_ptr, ColMax_ptr, ColLogSum_ptr, ColWeight_ptr,
                                    SYMMETRIC)
            if HAS_NORM:
                ds = ds * tl.load(RowNorm_ptr + other, mask=other_mask, other=0.0)[:, None]
            acc = tl.dot(tl.trans(ds.to(b.dtype)), b, acc, input_precision=DOT_PRECISION)
    tl.store(Grad_ptr + own[:, None] * stride_g_row + out_cols[None, :] * stride_g_col,
             acc, mask=own_mask[:, None] & out_mask[None, :])


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


def _default_tiles(dtype: torch.dtype, interpreter: Optional[bool] = None) -> _Tiles:
    # The interpreter runs one numpy op per block: big blocks are much faster there.
    if interpreting() if interpreter is None else interpreter:
        return _Tiles(128, 128, 128, 128, 128, 128, 128, 4, 4)
    # sm_90, read off ptxas and the PTX by benches/bench_compile.py (tests/test_compile_report.py).
    # bf16/fp16, D = 256: fwd 128×64 with q resident, 76-112 registers. Backward: 128 q rows × 64 k
    # rows in both sweeps, 8 warps: each of the two warpgroups owns 64 rows of the logit tile (20
    # wgmma per gq tile, 24 per gk tile), 198-252 registers, no spills. 64×64 tiles with 8 warps
    # put both warpgroups on the same 64 logit rows (36 wgmma where 20 do) and spill in the
    # symmetric gk; 4 warps on 64×64 spill too. fp32 (IEEE products, no tensor cores) needs far
    # smaller tiles: D = 256 resident spills kilobytes.
    if dtype == torch.float32:
        return _Tiles(64, 64, 32, 32, 64, 32, 128, 4, 8)
    return _Tiles(128, 64, 256, 64, 128, 64, 128, 8, 8)


def _block_d(requested: Optional[int], d: int, tiles: _Tiles) -> int:
    """D tile: all of D when it fits (SINGLE_D: one operand resident), else a chunk to loop over."""
    if requested is not None:
        return max(16, next_power_of_2(requested))
    return max(16, next_power_of_2(d)) if next_power_of_2(d) <= tiles.single_d else tiles.d_chunk


class RowStats(NamedTuple):
    """Base-2 log-sum-exp statistics of one direction: lse·log2(e) = max + log_sum, each (L,)."""

    max: torch.Tensor
    log_sum: torch.Tensor

    def lse(self) -> torch.Tensor:
        """Natural-log LSE (L,), float32."""
        return (self.max.double() + self.log_sum.double()).mul_(LN2.value).float()


def info_nce_fwd(
    q: torch.Tensor, k: torch.Tensor, q_inv_norm: Optional[torch.Tensor],
    k_inv_norm: Optional[torch.Tensor], scale: torch.Tensor, symmetric: bool,
    block_m: Optional[int] = None, block_n: Optional[int] = None, block_d: Optional[int] = None,
) -> Tuple[RowStats, Optional[RowStats]]:
    """Row statistics (N,) and, if symmetric, column statistics (M,) of s = scale·q̂·k̂ᵀ.

    q (N, D), k (M, D); q_inv_norm (N,) / k_inv_norm (M,) float32 or both None (no normalisation,
    q̂ = q); scale a 1-element float32 tensor holding 1/τ (read on the device: no host sync).
    Extra memory: O(N + M), plus 2·cdiv(N, block_m)·M floats of column partials when symmetric.
    """
    n, d = q.shape
    m = k.shape[0]
    tiles = _default_tiles(q.dtype)
    block_m, block_n = _block(block_m, n, tiles.fwd_rows), _block(block_n, m, tiles.fwd_cols)
    block_d = _block_d(block_d, d, tiles)
    num_row_blocks = triton.cdiv(n, block_m)
    row_max = torch.empty(n, device=q.device, dtype=torch.float32)
    row_log_sum = torch.empty(n, device=q.device, dtype=torch.float32)
    partial = (torch.empty((2, num_row_blocks, m), device=q.device, dtype=torch.float32)
               if symmetric else row_max[None, None])  # a dummy pointer when unused
    has_norm = q_inv_norm is not None
    _info_nce_fwd_kernel[(num_row_blocks,)](
        q, k, q_inv_norm if has_norm else row_max, k_inv_norm if has_norm else row_max, scale,
        row_max, row_log_sum, partial,
        n, m, d,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), partial.stride(0), partial.stride(1),
        HAS_NORM=has_norm, SYMMETRIC=symmetric, SINGLE_D=d <= block_d,
        DOT_PRECISION=_dot_precision(q.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=tiles.fwd_warps, num_stages=2,
    )
    col_stats = None
    if symmetric:
        # Merge the per-row-block partials; the max stays one of the forward's own logits.
        part_max, part_log_sum = partial[0], partial[1]
        col_max = part_max.max(dim=0).values
        col_log_sum = torch.log2(torch.exp2(part_max - col_max + part_log_sum).sum(dim=0))
        col_stats = RowStats(col_max, col_log_sum)
    return RowStats(row_max, row_log_sum), col_stats


def info_nce_bwd(
    q: torch.Tensor, k: torch.Tensor, q_inv_norm: Optional[torch.Tensor],
    k_inv_norm: Optional[torch.Tensor], scale: torch.Tensor,
    row_stats: RowStats, col_stats: Optional[RowStats],
    row_weight: torch.Tensor, col_weight: Optional[torch.Tensor],
    need_q: bool, need_k: bool,
    block_m: Optional[int] = None, block_n: Optional[int] = None, block_d: Optional[int] = None,
    block_dout: Optional[int] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """float32 gq (N, D) = dS·diag(rk)·k and gk (M, D) = dSᵀ·diag(rq)·q, each only when asked.

    dS_ij = row_weight_i·softmax_j(s)_ij + col_weight_j·softmax_i(s)_ij (the second term only
    when col_stats/col_weight are given, i.e. symmetric). Label terms are not included.
    """
    n, d = q.shape
    m = k.shape[0]
    tiles = _default_tiles(q.dtype)
    symmetric = col_stats is not None
    has_norm = q_inv_norm is not None
    dummy = row_stats.max
    block_d = _block_d(block_d, d, tiles)
    single_d = d <= block_d  # the same rule as the forward: identical logits tiles
    # Chunked D: each program column owns BLOCK_DOUT output columns (and recomputes the logits).
    block_dout = block_d if single_d else _block(block_dout, d, tiles.bwd_dout)
    # dS goes through the dot in the inputs' dtype: with weights ~1/N (mean over 64k rows), fp16
    # would flush it to zero. Dividing the weights by their max keeps |dS| ≤ 2; undone below.
    weight_scale = row_weight.abs().max()
    if symmetric:
        weight_scale = torch.maximum(weight_scale, col_weight.abs().max())
    weight_scale = weight_scale.clamp_min(torch.finfo(torch.float32).tiny)
    row_weight = row_weight / weight_scale
    col_weight = col_weight / weight_scale if symmetric else None
    grads = []
    for grad_q, needed in ((True, need_q), (False, need_k)):
        if not needed:
            grads.append(None)
            continue
        rows = n if grad_q else m
        q_rows, k_rows = _block(block_m, n, tiles.bwd_q_rows), _block(block_n, m, tiles.bwd_k_rows)
        block_own, block_other = (q_rows, k_rows) if grad_q else (k_rows, q_rows)
        grad = torch.empty((rows, d), device=q.device, dtype=torch.float32)
        # The symmetric gk holds both dS terms' statistics: with N not a multiple of 16 (no
        # divisibility hint) its two-stage pipeline spills 84 B at 255 registers; one stage fits.
        stages = 1 if symmetric and not grad_q and n % 16 else 2
        _info_nce_bwd_kernel[(triton.cdiv(rows, block_own), triton.cdiv(d, block_dout))](
            q, k, q_inv_norm if has_norm else dummy, k_inv_norm if has_norm else dummy, scale,
            row_stats.max, row_stats.log_sum, row_weight,
            col_stats.max if symmetric else dummy, col_stats.log_sum if symmetric else dummy,
            col_weight if symmetric else dummy,
            grad,
            n, m, d,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), grad.stride(0), grad.stride(1),
            GRAD_Q=grad_q, HAS_NORM=has_norm, SYMMETRIC=symmetric, SINGLE_D=single_d,
            DOT_PRECISION=_dot_precision(q.dtype),
            BLOCK_OWN=block_own, BLOCK_OTHER=block_other, BLOCK_D=block_d, BLOCK_DOUT=block_dout,
            num_warps=tiles.bwd_warps, num_stages=stages,
        )
        grads.append(grad.mul_(weight_scale))
    return grads[0], grads[1]
