"""Fused contrastive attention pooling: Triton kernels and their launchers.

    logits[b, p] = w2 · relu(W1 · h[b, :, p] + b1)        (hidden = 0: w2 · h[b, :, p])
    attn[b, p]   = softmax_p(logits[b, p])
    pooled[b, c] = Σ_p attn[b, p] · h[b, c, p]

One program per batch row. Pass 1 walks the position tiles once, computes the hidden activations
of each tile with tl.dot over channel blocks, reduces them to logits and keeps an online
softmax (running max / sum per lane); only the logits (B, N) and the log-sum-exp (B,) are
written, never the (B, N, hidden) activations. Pass 2 walks the row again by channel block and
forms pooled with the final softmax weights; the row (≤ a few hundred KB) was just read, so this
second read is meant to hit L2 rather than HBM. b2 cancels in the softmax and is not used here.

The backward recomputes the activations. It writes dZ = relu'(z) ⊙ w2 · dlogit (B, N, hidden),
the one operand of dW1 = Σ dZᵀ h, which is a plain GEMM left to torch (cuBLAS; a view of h when
it is channels_last, a permuted copy when it is NCHW); dw2 and db1 are per-program partial sums,
added up by torch (deterministic, no atomics). Within a program, values that other threads
wrote (logits, scores, dZ) are read back only after tl.debug_barrier() (bar.sync).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._utils import next_power_of_2


@triton.jit
def _hidden_tile(h_row, W1_ptr, B1_ptr, offs_n, mask_n, hid_start, C, HIDDEN,
                 stride_h_chan, stride_h_pos, stride_w1_hid, stride_w1_chan,
                 BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HID: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """z = h_tileᵀ W1[hid block]ᵀ + b1: (BLOCK_N, BLOCK_HID) float32, zero where masked."""
    offs_j = hid_start + tl.arange(0, BLOCK_HID)
    mask_j = offs_j < HIDDEN
    z = tl.zeros((BLOCK_N, BLOCK_HID), dtype=tl.float32)
    for c_start in range(0, C, BLOCK_C):
        offs_c = c_start + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        h_tile = tl.load(h_row + offs_n[:, None] * stride_h_pos + offs_c[None, :] * stride_h_chan,
                         mask=mask_n[:, None] & mask_c[None, :], other=0.0,
                         eviction_policy="evict_last")
        w1_tile = tl.load(W1_ptr + offs_j[None, :] * stride_w1_hid + offs_c[:, None] * stride_w1_chan,
                          mask=mask_c[:, None] & mask_j[None, :], other=0.0)
        z = tl.dot(h_tile, w1_tile, z, input_precision=DOT_PRECISION)
    b1 = tl.load(B1_ptr + offs_j, mask=mask_j, other=0.0).to(tl.float32)
    return z + b1[None, :]


@triton.jit
def _logits_tile(h_row, W1_ptr, B1_ptr, W2_ptr, offs_n, mask_n, C, HIDDEN,
                 stride_h_chan, stride_h_pos, stride_w1_hid, stride_w1_chan,
                 HAS_MLP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                 BLOCK_HID: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """logits of one position tile without b2: (BLOCK_N,) float32."""
    if HAS_MLP:
        logits = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for hid_start in range(0, HIDDEN, BLOCK_HID):
            z = _hidden_tile(h_row, W1_ptr, B1_ptr, offs_n, mask_n, hid_start, C, HIDDEN,
                             stride_h_chan, stride_h_pos, stride_w1_hid, stride_w1_chan,
                             BLOCK_N, BLOCK_C, BLOCK_HID, DOT_PRECISION)
            offs_j = hid_start + tl.arange(0, BLOCK_HID)
            w2 = tl.load(W2_ptr + offs_j, mask=offs_j < HIDDEN, other=0.0).to(tl.float32)
            logits += tl.sum(tl.maximum(z, 0.0) * w2[None, :], axis=1)
    else:
        # A 2-D accumulator: one reduction across channels at the end instead of one per block.
        acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for c_start in range(0, C, BLOCK_C):
            offs_c = c_start + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            h_tile = tl.load(h_row + offs_n[:, None] * stride_h_pos + offs_c[None, :] * stride_h_chan,
                             mask=mask_n[:, None] & mask_c[None, :], other=0.0,
                             eviction_policy="evict_last")
            w2 = tl.load(W2_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
            acc += h_tile.to(tl.float32) * w2[None, :]
        logits = tl.sum(acc, axis=1)
    return logits


@triton.jit
def _attention_pool_fwd_kernel(
    # inputs: h (B, C, N) through its strides, W1 (HIDDEN, C), b1 (HIDDEN,), w2 (HIDDEN,) or (C,)
    H_ptr, W1_ptr, B1_ptr, W2_ptr,
    # outputs: pooled (B, C) h's dtype; attn, logits (B, N) float32 contiguous; lse (B,) float32
    Pooled_ptr, Attn_ptr, Logits_ptr, Lse_ptr,
    # sizes
    C, N, HIDDEN,
    # strides
    stride_h_batch, stride_h_chan, stride_h_pos,
    stride_w1_hid, stride_w1_chan,
    stride_pooled_batch, stride_pooled_chan,
    # meta
    HAS_MLP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HID: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    h_row = H_ptr + row * stride_h_batch
    logits_row = Logits_ptr + row * N

    # Pass 1: logits and an online softmax, one running (max, sum) per lane, merged at the end.
    m_lane = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    l_lane = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for n_start in range(0, N, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        logits = _logits_tile(h_row, W1_ptr, B1_ptr, W2_ptr, offs_n, mask_n, C, HIDDEN,
                              stride_h_chan, stride_h_pos, stride_w1_hid, stride_w1_chan,
                              HAS_MLP, BLOCK_N, BLOCK_C, BLOCK_HID, DOT_PRECISION)
        logits = tl.where(mask_n, logits, float("-inf"))
        tl.store(logits_row + offs_n, logits, mask=mask_n)
        m_new = tl.maximum(m_lane, logits)
        # Lanes that never saw a position stay at -inf; shift them by 0 so they add 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_lane = l_lane * tl.exp(m_lane - m_safe) + tl.exp(logits - m_safe)
        m_lane = m_new
    m_row = tl.max(m_lane, axis=0)
    lse = m_row + tl.log(tl.sum(l_lane * tl.exp(m_lane - m_row), axis=0))
    tl.store(Lse_ptr + row, lse)
    # Other threads of this program wrote logits that pass 2 reads back.
    tl.debug_barrier()

    for n_start in range(0, N, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        logits = tl.load(logits_row + offs_n, mask=mask_n, other=float("-inf"))
        tl.store(Attn_ptr + row * N + offs_n, tl.exp(logits - lse), mask=mask_n)

    # Pass 2: pooled, channel block by channel block, with the final weights (no rescaling).
    # Last block first: pass 1 ended there, so the most recently read lines of h are reused
    # first, while still in L2 (LRU-friendly), and each is marked evict-first once reread.
    last_c = tl.cdiv(C, BLOCK_C) * BLOCK_C - BLOCK_C
    for c_done in range(0, C, BLOCK_C):
        offs_c = (last_c - c_done) + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for n_start in range(0, N, BLOCK_N):
            offs_n = n_start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            attn = tl.exp(tl.load(logits_row + offs_n, mask=mask_n, other=float("-inf")) - lse)
            h_tile = tl.load(h_row + offs_n[:, None] * stride_h_pos + offs_c[None, :] * stride_h_chan,
                             mask=mask_n[:, None] & mask_c[None, :], other=0.0,
                             eviction_policy="evict_first")
            acc += attn[:, None] * h_tile.to(tl.float32)
        pooled = tl.sum(acc, axis=0)
        tl.store(Pooled_ptr + row * stride_pooled_batch + offs_c * stride_pooled_chan,
                 pooled.to(Pooled_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _attention_pool_bwd_kernel(
    # inputs (as in the forward) and the saved logits / lse
    H_ptr, W1_ptr, B1_ptr, W2_ptr, Logits_ptr, Lse_ptr,
    # upstream gradients: pooled (B, C); attn (B, N) float32 contiguous, read when HAS_GRAD_ATTN
    GradPooled_ptr, GradAttn_ptr,
    # outputs: dh like h; dZ (B, N, HIDDEN) h's dtype; score (B, N) float32 scratch;
    # dw2 partials (B, C) (linear) or (B, NUM_TILES, HIDDEN); db1 partials (B, NUM_TILES, HIDDEN)
    GradH_ptr, GradZ_ptr, Score_ptr, PartW2_ptr, PartB1_ptr,
    # sizes
    C, N, HIDDEN,
    # strides
    stride_h_batch, stride_h_chan, stride_h_pos,
    stride_w1_hid, stride_w1_chan,
    stride_gp_batch, stride_gp_chan,
    stride_dh_batch, stride_dh_chan, stride_dh_pos,
    # meta
    HAS_MLP: tl.constexpr, HAS_GRAD_ATTN: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HID: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    h_row = H_ptr + row * stride_h_batch
    dh_row = GradH_ptr + row * stride_dh_batch
    gp_row = GradPooled_ptr + row * stride_gp_batch
    logits_row = Logits_ptr + row * N
    score_row = Score_ptr + row * N
    lse = tl.load(Lse_ptr + row)

    # Pass A: score s = h·gy (+ g_attn) per position; dlogit = a ⊙ (s − Σ a s).
    t_lane = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for n_start in range(0, N, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for c_start in range(0, C, BLOCK_C):
            offs_c = c_start + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            h_tile = tl.load(h_row + offs_n[:, None] * stride_h_pos + offs_c[None, :] * stride_h_chan,
                             mask=mask_n[:, None] & mask_c[None, :], other=0.0,
                             eviction_policy="evict_last")
            gy = tl.load(gp_row + offs_c * stride_gp_chan, mask=mask_c, other=0.0).to(tl.float32)
            acc += h_tile.to(tl.float32) * gy[None, :]
        score = tl.sum(acc, axis=1)
        if HAS_GRAD_ATTN:
            score += tl.load(GradAttn_ptr + row * N + offs_n, mask=mask_n, other=0.0)
        attn = tl.exp(tl.load(logits_row + offs_n, mask=mask_n, other=float("-inf")) - lse)
        tl.store(score_row + offs_n, score, mask=mask_n)
        t_lane += attn * score
    total = tl.sum(t_lane, axis=0)
    tl.debug_barrier()  # scores written by other threads are read below

    if HAS_MLP:
        for n_start in range(0, N, BLOCK_N):
            offs_n = n_start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            tile = n_start // BLOCK_N
            attn = tl.exp(tl.load(logits_row + offs_n, mask=mask_n, other=float("-inf")) - lse)
            dlogit = attn * (tl.load(score_row + offs_n, mask=mask_n, other=0.0) - total)
            for hid_start in range(0, HIDDEN, BLOCK_HID):
                offs_j = hid_start + tl.arange(0, BLOCK_HID)
                mask_j = offs_j < HIDDEN
                z = _hidden_tile(h_row, W1_ptr, B1_ptr, offs_n, mask_n, hid_start, C, HIDDEN,
                                 stride_h_chan, stride_h_pos, stride_w1_hid, stride_w1_chan,
                                 BLOCK_N, BLOCK_C, BLOCK_HID, DOT_PRECISION)
                w2 = tl.load(W2_ptr + offs_j, mask=mask_j, other=0.0).to(tl.float32)
                dz = tl.where(z > 0.0, dlogit[:, None] * w2[None, :], 0.0)
                part = (row * tl.cdiv(N, BLOCK_N) + tile) * HIDDEN + offs_j
                tl.store(PartW2_ptr + part, tl.sum(dlogit[:, None] * tl.maximum(z, 0.0), axis=0),
                         mask=mask_j)
                tl.store(PartB1_ptr + part, tl.sum(dz, axis=0), mask=mask_j)
                tl.store(GradZ_ptr + (row * N + offs_n[:, None]) * HIDDEN + offs_j[None, :],
                         dz.to(GradZ_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_j[None, :])
            tl.debug_barrier()  # dZ of this tile, written above, is read back across threads
            # dh = a ⊗ gy + dZ W1, channel block by channel block.
            for c_start in range(0, C, BLOCK_C):
                offs_c = c_start + tl.arange(0, BLOCK_C)
                mask_c = offs_c < C
                gy = tl.load(gp_row + offs_c * stride_gp_chan, mask=mask_c, other=0.0).to(tl.float32)
                acc = attn[:, None] * gy[None, :]
                for hid_start in range(0, HIDDEN, BLOCK_HID):
                    offs_j = hid_start + tl.arange(0, BLOCK_HID)
                    mask_j = offs_j < HIDDEN
                    dz = tl.load(GradZ_ptr + (row * N + offs_n[:, None]) * HIDDEN + offs_j[None, :],
                                 mask=mask_n[:, None] & mask_j[None, :], other=0.0)
                    w1_tile = tl.load(W1_ptr + offs_j[:, None] * stride_w1_hid
                                      + offs_c[None, :] * stride_w1_chan,
                                      mask=mask_j[:, None] & mask_c[None, :], other=0.0)
                    acc = tl.dot(dz, w1_tile, acc, input_precision=DOT_PRECISION)
                tl.store(dh_row + offs_n[:, None] * stride_dh_pos + offs_c[None, :] * stride_dh_chan,
                         acc.to(GradH_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])
    else:
        # Linear logits: dh = a ⊗ gy + dlogit ⊗ w2 and dw2 = Σ_p dlogit · h, by channel block.
        last_c = tl.cdiv(C, BLOCK_C) * BLOCK_C - BLOCK_C  # reversed, as in the forward's pass 2
        for c_done in range(0, C, BLOCK_C):
            offs_c = (last_c - c_done) + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            gy = tl.load(gp_row + offs_c * stride_gp_chan, mask=mask_c, other=0.0).to(tl.float32)
            w2 = tl.load(W2_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
            dw2 = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
            for n_start in range(0, N, BLOCK_N):
                offs_n = n_start + tl.arange(0, BLOCK_N)
                mask_n = offs_n < N
                mask = mask_n[:, None] & mask_c[None, :]
                attn = tl.exp(tl.load(logits_row + offs_n, mask=mask_n, other=float("-inf")) - lse)
                dlogit = attn * (tl.load(score_row + offs_n, mask=mask_n, other=0.0) - total)
                h_tile = tl.load(h_row + offs_n[:, None] * stride_h_pos + offs_c[None, :] * stride_h_chan,
                                 mask=mask, other=0.0, eviction_policy="evict_first")
                dh = attn[:, None] * gy[None, :] + dlogit[:, None] * w2[None, :]
                tl.store(dh_row + offs_n[:, None] * stride_dh_pos + offs_c[None, :] * stride_dh_chan,
                         dh.to(GradH_ptr.dtype.element_ty), mask=mask)
                dw2 += dlogit[:, None] * h_tile.to(tl.float32)
            tl.store(PartW2_ptr + row * C + offs_c, tl.sum(dw2, axis=0), mask=mask_c)


def _pick_blocks(n_pos: int, channels: int, hidden: int, block_n: Optional[int],
                 block_c: Optional[int], block_hid: Optional[int],
                 channels_contiguous: bool = False, max_elements: int = 8192,
                 float32: bool = False) -> Tuple[int, int, int]:
    """Power-of-2 tiles; tl.dot needs every dimension ≥ 16, so the MLP path pads up to 16.
    max_elements caps a linear-path tile (positions × channels). float32 MLP dots run on FMAs,
    not tensor cores: 64 positions spill on sm_90 (NCHW: 88 B fwd, 24 B bwd), 32 take ≤ 185
    registers."""
    if hidden:
        block_n = block_n or min(max(next_power_of_2(n_pos), 16), 32 if float32 else 64)
        block_c = block_c or min(max(next_power_of_2(channels), 16), 64)
        block_hid = block_hid or min(max(next_power_of_2(hidden), 16), 64)
        if min(block_n, block_c, block_hid) < 16:
            raise ValueError("attention_pool: MLP tiles must be at least 16 wide (tl.dot)")
    else:
        # The linear path is elementwise + reductions: tiles of up to 8K elements, at least
        # 128 contiguous bytes along the memory-contiguous axis (C for channels_last, else H·W).
        if channels_contiguous and not block_n:
            block_c = block_c or min(next_power_of_2(channels), 128)
            block_n = min(next_power_of_2(n_pos), max(max_elements // block_c, 1))
        else:
            block_n = block_n or min(next_power_of_2(n_pos), 256)
            block_c = block_c or min(next_power_of_2(channels), max(max_elements // block_n, 1))
        block_hid = block_hid or 16
    for name, value in (("block_n", block_n), ("block_c", block_c), ("block_hid", block_hid)):
        if value & (value - 1):
            raise ValueError(f"attention_pool: {name}={value} is not a power of 2")
    return block_n, block_c, block_hid


def _num_warps(hidden: int, block_n: int, block_c: int) -> int:
    # ptxas, sm_90, 64/64/64 MLP tiles, channels_last: 70-90 registers per thread with 8 warps,
    # 105-173 with 4; the linear (64, 128) tile needs ~100-120 with 8 warps (2 programs per SM).
    return 8 if hidden or block_n * block_c > 4096 else 4


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tf32 would cost ~1e-3 relative error).
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_pool_fwd(
    h: torch.Tensor, w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: torch.Tensor,
    *, block_n: Optional[int] = None, block_c: Optional[int] = None,
    block_hid: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward. h (B, C, H, W) any strides; w1 (hidden, C) and b1 (hidden,) or both
    None; w2 (hidden,) or (C,). Returns pooled (B, C) h's dtype, attn (B, H, W) float32 and, for
    the backward, logits (B, H·W) float32 (without b2) and lse (B,) float32."""
    batch, channels, height, width = h.shape
    n_pos, hidden = height * width, (0 if w1 is None else w1.shape[0])
    h3 = h.flatten(2)  # a view for contiguous and channels_last h, a copy only for odd strides
    block_n, block_c, block_hid = _pick_blocks(n_pos, channels, hidden, block_n, block_c, block_hid,
                                               channels_contiguous=h3.stride(1) == 1,
                                               float32=h.dtype == torch.float32)
    pooled = torch.empty((batch, channels), device=h.device, dtype=h.dtype)
    attn = torch.empty((batch, n_pos), device=h.device, dtype=torch.float32)
    logits = torch.empty_like(attn)
    lse = torch.empty((batch,), device=h.device, dtype=torch.float32)
    w1_arg = w2 if w1 is None else w1  # never read on the linear path
    b1_arg = w2 if b1 is None else b1
    _attention_pool_fwd_kernel[(batch,)](
        h3, w1_arg, b1_arg, w2,
        pooled, attn, logits, lse,
        channels, n_pos, hidden,
        h3.stride(0), h3.stride(1), h3.stride(2),
        w1_arg.stride(0), w1_arg.stride(-1),
        pooled.stride(0), pooled.stride(1),
        HAS_MLP=hidden > 0, BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_HID=block_hid,
        DOT_PRECISION=_dot_precision(h.dtype), num_warps=_num_warps(hidden, block_n, block_c),
    )
    return pooled, attn.view(batch, height, width), logits, lse


def attention_pool_bwd(
    h: torch.Tensor, w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: torch.Tensor,
    logits: torch.Tensor, lse: torch.Tensor, grad_pooled: torch.Tensor,
    grad_attn: Optional[torch.Tensor],
    *, need_grad_w1: bool = True, block_n: Optional[int] = None, block_c: Optional[int] = None,
    block_hid: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
    """Launch the backward. grad_pooled (B, C); grad_attn (B, H, W) or None. Returns dh (same
    shape and memory format as h), dW1 (hidden, C) or None (also when not need_grad_w1: the
    GEMM is skipped), db1 (hidden,) or None, dw2 like w2."""
    batch, channels, height, width = h.shape
    n_pos, hidden = height * width, (0 if w1 is None else w1.shape[0])
    h3 = h.flatten(2)
    channels_contiguous = h3.stride(1) == 1
    # ptxas, sm_90 (benches/bench_compile.py): the linear backward on NCHW h (positions
    # contiguous) needs 255 registers at the forward's 8K-element tiles and spills 56-96 B with 4
    # or 8 warps; 2K-element tiles (64×32 at 7×7, 256×8 at 14×14, 4 warps) take 72-168, no spills.
    max_elements = 2048 if not (hidden or channels_contiguous) else 8192
    block_n, block_c, block_hid = _pick_blocks(n_pos, channels, hidden, block_n, block_c, block_hid,
                                               channels_contiguous=channels_contiguous,
                                               max_elements=max_elements,
                                               float32=h.dtype == torch.float32)
    num_tiles = triton.cdiv(n_pos, block_n)
    dh3 = torch.empty_like(h3)  # keeps h3's strides, so dh has h's memory format
    score = torch.empty((batch, n_pos), device=h.device, dtype=torch.float32)
    f32 = dict(device=h.device, dtype=torch.float32)
    if hidden:
        grad_z = torch.empty((batch, n_pos, hidden), device=h.device, dtype=h.dtype)
        part_w2 = torch.empty((batch, num_tiles, hidden), **f32)
        part_b1 = torch.empty((batch, num_tiles, hidden), **f32)
    else:
        grad_z, part_w2, part_b1 = score, torch.empty((batch, channels), **f32), score
    if grad_attn is not None:
        grad_attn = grad_attn.reshape(batch, n_pos).to(torch.float32).contiguous()
    w1_arg = w2 if w1 is None else w1
    b1_arg = w2 if b1 is None else b1
    _attention_pool_bwd_kernel[(batch,)](
        h3, w1_arg, b1_arg, w2, logits, lse,
        grad_pooled, score if grad_attn is None else grad_attn,
        dh3, grad_z, score, part_w2, part_b1,
        channels, n_pos, hidden,
        h3.stride(0), h3.stride(1), h3.stride(2),
        w1_arg.stride(0), w1_arg.stride(-1),
        grad_pooled.stride(0), grad_pooled.stride(1),
        dh3.stride(0), dh3.stride(1), dh3.stride(2),
        HAS_MLP=hidden > 0, HAS_GRAD_ATTN=grad_attn is not None, BLOCK_N=block_n,
        BLOCK_C=block_c, BLOCK_HID=block_hid, DOT_PRECISION=_dot_precision(h.dtype),
        num_warps=_num_warps(hidden, block_n, block_c),
    )
    dh = dh3.view(batch, channels, height, width)
    dw2 = part_w2.sum(dim=tuple(range(part_w2.dim() - 1))).to(w2.dtype)
    if not hidden:
        return dh, None, None, dw2
    # dW1 = Σ_(b,p) dZ[b, p]ᵀ h[b, :, p]: one GEMM (a view of h when it is channels_last).
    grad_w1 = torch.einsum("bnj,bcn->jc", grad_z, h3).to(w1.dtype) if need_grad_w1 else None
    grad_b1 = part_b1.sum(dim=(0, 1)).to(w1.dtype)
    return dh, grad_w1, grad_b1, dw2
