"""Fused contrastive attention pooling: Triton kernels and their launchers.

    logits[b, p] = w2 · relu(z[b, p]),  z[b, p] = W1 · h[b, :, p] + b1   (hidden = 0: w2 · h[b, :, p])
    attn[b, p]   = softmax_p(logits[b, p])
    pooled[b, c] = Σ_p attn[b, p] · h[b, c, p]

Forward: one program per batch row walks its position tiles once. A tile holds BLOCK_N positions ×
all channels (padded to a power of 2) in registers, so it serves both the logits (a reduction over
channels) and the pooled sum (over positions): an online softmax (running max m, sum l) with the
pooled accumulator rescaled by exp(m_old − m_new), flash-decoding style. h is read once. The
logits go to the attn buffer and are turned into attn at the end of the row (O(N) bytes).
b2 cancels in the softmax and is not used.

Backward, one sweep over h: dlogit[p] = attn[p] · (s[p] − t) with s[p] = gy · h[:, p] (+ g_attn[p])
and t = Σ_p attn s = gy · pooled (+ Σ_p attn g_attn): the forward keeps pooled in float32, so t is
known before the sweep and each tile is finished when it is read. Linear: dh = attn ⊗ gy + dlogit ⊗
w2, dw2 = Σ_p dlogit h. dw2 and db1 are per-row partial sums added by torch (no atomics).

The hidden MLP (hidden = 512) runs its two big products as GEMMs over the B·H·W positions:
    forward   z = h W1ᵀ + b1          cuBLAS (torch.addmm, bias in the epilogue); z saved, not recomputed
    backward  dZ = relu'(z) ⊙ w2 dlogit   written by the sweep above (which reads z, not W1)
              dh = dZ W1 + attn ⊗ gy  _attention_pool_dh_kernel: a Triton GEMM, the rank-1 term fused
              dW1 = dZᵀ h             cuBLAS (skipped when w1 needs no gradient)
Why (benches/bench_compile.py roofline, B = 512, bf16, 2048×7×7, H100): the recompute-in-kernel
design it replaces read h 19 times (2143 MB, ≥ 0.64 ms). Saving z costs 2 × 26 MB; recomputing it
would cost a 53 GFLOP GEMM (≥ 53 µs) and a read of h (103 MB, 31 µs). cuBLAS runs the forward GEMM
and dW1 at its tuned speed, and their epilogues need nothing of ours; dh is a Triton GEMM because
its epilogue adds attn ⊗ gy (different gy per batch row): with cuBLAS that term would cost another
read and write of dh (206 MB, 61 µs). h is then read 4 times per step (fwd: GEMM + pooling; bwd:
sweep + dW1), 3 with a frozen w1: as launched 691 MB, ≥ 0.25 ms kernel after kernel, 38 % of HBM
bandwidth on compulsory bytes. The three GEMMs alone take 0.16 ms at 990 TFLOP/s, the time of the
60 %-of-HBM goal: with a hidden layer the op is tensor-bound. Linear: 2 reads of h, 325 MB against
313 compulsory, 96 % (1024×14×14: 99 %).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._utils import next_power_of_2

# Elements of one register tile of the pooling kernels (positions × padded channels or hidden) and
# its warps, by whether channels are contiguous (channels_last h). ptxas, sm_90, B = 512, bf16
# (benches/bench_compile.py): channels_last 8K-element tiles with 8 warps take 75-128 registers.
# NCHW (positions contiguous, so one 2-byte load and one address per element) takes 192-255
# registers and spills 4-128 B at 4K-8K elements; 2K elements with 4 warps take 94-226, no spills.
POOL_TILES = {True: (8192, 8), False: (2048, 4)}
# dh GEMM (rows of B·H·W, channels, hidden step, warps, stages) by (16-bit dtype, channels_last).
# 128×256×64 (Triton's H100 matmul choice: 85 FLOP per byte of operand traffic, 64 at 128×128):
# 255 registers, no spills, 144 KB smem, 1 CTA/SM, wgmma = expected. NCHW stores dh with positions
# contiguous (a layout conversion in the epilogue): 128×64, 167 registers.
GEMM_TILES = {(True, True): (128, 256, 64, 8, 3), (True, False): (128, 64, 64, 8, 3),
              (False, True): (64, 64, 32, 4, 2), (False, False): (64, 64, 32, 4, 2)}
# The widest padded channel or hidden count a tile of one position can hold; wider is refused.
MAX_WIDTH = 16384


@triton.jit
def _load_rows(base, offs_n, offs_c, mask_n, mask_c, stride_row, stride_col):
    """(BLOCK_N, BLOCK_C) tile of base[n * stride_row + c * stride_col] in float32, 0 where masked."""
    return tl.load(base + offs_n[:, None] * stride_row + offs_c[None, :] * stride_col,
                   mask=mask_n[:, None] & mask_c[None, :], other=0.0).to(tl.float32)


@triton.jit
def _attention_pool_fwd_kernel(
    # inputs: h (B, C, N) through its strides; w2 (C,) linear or (HIDDEN,) MLP; z (B·N, HIDDEN) MLP
    H_ptr, W2_ptr, Z_ptr,
    # outputs: pooled (B, C) h's dtype, pooled32 (B, C) float32; attn (B, N) float32 contiguous
    Pooled_ptr, Pooled32_ptr, Attn_ptr,
    # sizes
    C, N, HIDDEN,
    # strides
    stride_h_batch, stride_h_chan, stride_h_pos,
    stride_pooled_batch, stride_pooled_chan,
    # meta
    HAS_MLP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HID: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    h_row = H_ptr + row * stride_h_batch
    attn_row = Attn_ptr + row * N
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_j = tl.arange(0, BLOCK_HID)
    mask_j = offs_j < HIDDEN
    if HAS_MLP:
        w2 = tl.load(W2_ptr + offs_j, mask=mask_j, other=0.0).to(tl.float32)
    else:
        w2 = tl.load(W2_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)

    m = tl.full((), float("-inf"), tl.float32)
    l = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_C,), tl.float32)
    for n_start in range(0, N, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        h = _load_rows(h_row, offs_n, offs_c, mask_n, mask_c, stride_h_pos, stride_h_chan)
        if HAS_MLP:
            z = _load_rows(Z_ptr + row * N * HIDDEN, offs_n, offs_j, mask_n, mask_j, HIDDEN, 1)
            logits = tl.sum(tl.maximum(z, 0.0) * w2[None, :], axis=1)
        else:
            logits = tl.sum(h * w2[None, :], axis=1)
        logits = tl.where(mask_n, logits, float("-inf"))
        tl.store(attn_row + offs_n, logits, mask=mask_n)
        # Every tile holds a position, so m_new is finite; exp(-inf - m_new) = 0 on the first tile.
        m_new = tl.maximum(m, tl.max(logits, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(logits - m_new)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * h, axis=0)
        m = m_new
    pooled = acc / l
    tl.store(Pooled_ptr + row * stride_pooled_batch + offs_c * stride_pooled_chan,
             pooled.to(Pooled_ptr.dtype.element_ty), mask=mask_c)
    tl.store(Pooled32_ptr + row * C + offs_c, pooled, mask=mask_c)

    lse = m + tl.log(l)
    tl.debug_barrier()  # the logits were stored by other threads of this program
    for n_start in range(0, N, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        logits = tl.load(attn_row + offs_n, mask=mask_n, other=float("-inf"))
        tl.store(attn_row + offs_n, tl.exp(logits - lse), mask=mask_n)


@triton.jit
def _attention_pool_bwd_kernel(
    # inputs as in the forward, its attn (B, N) and pooled32 (B, C) float32
    H_ptr, W2_ptr, Z_ptr, Attn_ptr, Pooled32_ptr,
    # upstream gradients: pooled (B, C); attn (B, N) float32 contiguous, read when HAS_GRAD_ATTN
    GradPooled_ptr, GradAttn_ptr,
    # outputs: dh like h (linear); dZ (B·N, HIDDEN) h's dtype (MLP); per-row partials of dw2
    # (B, C) linear or (B, HIDDEN) MLP, and of db1 (B, HIDDEN), float32
    GradH_ptr, GradZ_ptr, PartW2_ptr, PartB1_ptr,
    # sizes
    C, N, HIDDEN,
    # strides
    stride_h_batch, stride_h_chan, stride_h_pos,
    stride_gp_batch, stride_gp_chan,
    stride_dh_batch, stride_dh_chan, stride_dh_pos,
    # meta
    HAS_MLP: tl.constexpr, HAS_GRAD_ATTN: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HID: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    h_row = H_ptr + row * stride_h_batch
    attn_row = Attn_ptr + row * N
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_j = tl.arange(0, BLOCK_HID)
    mask_j = offs_j < HIDDEN
    gy = tl.load(GradPooled_ptr + row * stride_gp_batch + offs_c * stride_gp_chan,
                 mask=mask_c, other=0.0).to(tl.float32)
    # t = Σ_p attn s = gy · pooled (+ Σ_p attn g_attn): known before the sweep over h.
    total = tl.sum(gy * tl.load(Pooled32_ptr + row * C + offs_c, mask=mask_c, other=0.0), axis=0)
    if HAS_GRAD_ATTN:
        t_lane = tl.zeros((BLOCK_N,), tl.float32)
        for n_start in range(0, N, BLOCK_N):
            offs_n = n_start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            t_lane += (tl.load(attn_row + offs_n, mask=mask_n, other=0.0)
                       * tl.load(GradAttn_ptr + row * N + offs_n, mask=mask_n, other=0.0))
        total += tl.sum(t_lane, axis=0)
    if HAS_MLP:
        w2 = tl.load(W2_ptr + offs_j, mask=mask_j, other=0.0).to(tl.float32)
        dw2 = tl.zeros((BLOCK_HID,), tl.float32)
        db1 = tl.zeros((BLOCK_HID,), tl.float32)
    else:
        w2 = tl.load(W2_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        dw2 = tl.zeros((BLOCK_C,), tl.float32)
        db1 = dw2

    for n_start in range(0, N, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        h = _load_rows(h_row, offs_n, offs_c, mask_n, mask_c, stride_h_pos, stride_h_chan)
        score = tl.sum(h * gy[None, :], axis=1)
        if HAS_GRAD_ATTN:
            score += tl.load(GradAttn_ptr + row * N + offs_n, mask=mask_n, other=0.0)
        attn = tl.load(attn_row + offs_n, mask=mask_n, other=0.0)
        dlogit = attn * (score - total)
        if HAS_MLP:
            z_rows = row * N * HIDDEN
            z = _load_rows(Z_ptr + z_rows, offs_n, offs_j, mask_n, mask_j, HIDDEN, 1)
            dz = tl.where(z > 0.0, dlogit[:, None] * w2[None, :], 0.0)
            tl.store(GradZ_ptr + z_rows + offs_n[:, None] * HIDDEN + offs_j[None, :],
                     dz.to(GradZ_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_j[None, :])
            dw2 += tl.sum(dlogit[:, None] * tl.maximum(z, 0.0), axis=0)
            db1 += tl.sum(dz, axis=0)
        else:
            dh = attn[:, None] * gy[None, :] + dlogit[:, None] * w2[None, :]
            tl.store(GradH_ptr + row * stride_dh_batch + offs_n[:, None] * stride_dh_pos
                     + offs_c[None, :] * stride_dh_chan, dh.to(GradH_ptr.dtype.element_ty),
                     mask=mask_n[:, None] & mask_c[None, :])
            dw2 += tl.sum(dlogit[:, None] * h, axis=0)
    if HAS_MLP:
        tl.store(PartW2_ptr + row * HIDDEN + offs_j, dw2, mask=mask_j)
        tl.store(PartB1_ptr + row * HIDDEN + offs_j, db1, mask=mask_j)
    else:
        tl.store(PartW2_ptr + row * C + offs_c, dw2, mask=mask_c)


@triton.jit
def _attention_pool_dh_kernel(
    # inputs: dZ (ROWS = B·N, HIDDEN) contiguous; W1 (HIDDEN, C); attn (ROWS,) float32; gy (B, C)
    GradZ_ptr, W1_ptr, Attn_ptr, GradPooled_ptr,
    # output: dh (B, C, N) through its strides
    GradH_ptr,
    # sizes
    C, N, ROWS, HIDDEN,
    # strides
    stride_w1_hid, stride_w1_chan,
    stride_gp_batch, stride_gp_chan,
    stride_dh_batch, stride_dh_chan, stride_dh_pos,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HID: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dh[(b, p), c] = Σ_j dZ[(b, p), j] W1[j, c] + attn[b, p] gy[b, c] over the B·N rows."""
    pid = tl.program_id(0)
    num_c = tl.cdiv(C, BLOCK_C)
    # Channel blocks vary fastest: the programs that share a row block of dZ run together.
    offs_m = (pid // num_c).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = (pid % num_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < ROWS
    mask_c = offs_c < C
    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for k_start in range(0, HIDDEN, BLOCK_HID):
        offs_k = k_start + tl.arange(0, BLOCK_HID)
        mask_k = offs_k < HIDDEN
        dz = tl.load(GradZ_ptr + offs_m[:, None] * HIDDEN + offs_k[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w1 = tl.load(W1_ptr + offs_k[:, None] * stride_w1_hid + offs_c[None, :] * stride_w1_chan,
                     mask=mask_k[:, None] & mask_c[None, :], other=0.0)
        acc = tl.dot(dz, w1, acc, input_precision=DOT_PRECISION)
    batch = offs_m // N
    pos = offs_m - batch * N
    mask = mask_m[:, None] & mask_c[None, :]
    attn = tl.load(Attn_ptr + offs_m, mask=mask_m, other=0.0)
    gy = tl.load(GradPooled_ptr + batch[:, None] * stride_gp_batch + offs_c[None, :] * stride_gp_chan,
                 mask=mask, other=0.0).to(tl.float32)
    acc += attn[:, None] * gy
    tl.store(GradH_ptr + batch[:, None] * stride_dh_batch + pos[:, None] * stride_dh_pos
             + offs_c[None, :] * stride_dh_chan, acc.to(GradH_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- launchers

def _pick_blocks(n_pos: int, channels: int, hidden: int, dtype: torch.dtype, channels_last: bool,
                 block_n: Optional[int] = None, block_c: Optional[int] = None,
                 block_hid: Optional[int] = None) -> Tuple[int, int, int, int, int]:
    """(pool BLOCK_N, its warps, dh GEMM BLOCK_M, BLOCK_C, BLOCK_HID). The pooling kernels hold
    all channels (and all hidden units) of BLOCK_N positions; block_n forces both position tiles
    (the GEMM's at least 16), block_c and block_hid the GEMM's channel and hidden steps."""
    width = max(next_power_of_2(channels), next_power_of_2(hidden) if hidden else 1)
    if width > MAX_WIDTH:
        raise ValueError(f"attention_pool: the Triton kernels take at most {MAX_WIDTH} channels and "
                         f"hidden units, got C = {channels}, hidden = {hidden}; use backend='torch'")
    tile_elements, pool_warps = POOL_TILES[channels_last]
    pool_n = block_n or min(next_power_of_2(n_pos), max(tile_elements // width, 1))
    if pool_n * width < 4096:
        pool_warps = 4
    gemm = GEMM_TILES[(dtype != torch.float32, channels_last)]
    block_m = max(block_n, 16) if block_n else gemm[0]
    block_c, block_hid = block_c or gemm[1], block_hid or gemm[2]
    for name, value in (("block_n", pool_n), ("block_c", block_c), ("block_hid", block_hid)):
        if value & (value - 1):
            raise ValueError(f"attention_pool: {name}={value} is not a power of 2")
    if hidden and min(block_m, block_c, block_hid) < 16:
        raise ValueError("attention_pool: GEMM tiles must be at least 16 wide (tl.dot)")
    return pool_n, pool_warps, block_m, block_c, block_hid


def _gemm_launch(dtype: torch.dtype, channels_last: bool) -> dict:
    return dict(zip(("num_warps", "num_stages"), GEMM_TILES[(dtype != torch.float32, channels_last)][3:]))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tf32 would cost ~1e-3 relative error).
    return "ieee" if dtype == torch.float32 else "tf32"


def _positions_by_channels(h3: torch.Tensor) -> torch.Tensor:
    """h3 (B, C, N) as (B, N, C): a view; contiguous (flattens to B·N rows) when h is channels_last."""
    return h3.transpose(1, 2)


def _without_autocast(device: torch.device):
    # torch.autocast knows cuda and cpu; the compile report launches on meta tensors.
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def pre_activations(h3: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor]) -> torch.Tensor:
    """z = W1 h + b1 at every position: (B, N, hidden) contiguous, h's dtype, by cuBLAS."""
    rows = _positions_by_channels(h3)
    with _without_autocast(h3.device):  # z in h's dtype, as the kernels expect
        if rows.is_contiguous():  # channels_last: one GEMM over the B·N rows, bias in its epilogue
            flat = rows.reshape(-1, rows.shape[-1])
            z = torch.mm(flat, w1.t()) if b1 is None else torch.addmm(b1, flat, w1.t())
            return z.view(*rows.shape[:2], -1)
        z = torch.matmul(rows, w1.t())  # NCHW: a batched GEMM on the transposed view, no copy of h
        return z if b1 is None else z.add_(b1)


def grad_w1(grad_z: torch.Tensor, h3: torch.Tensor) -> torch.Tensor:
    """dW1 = Σ_(b,p) dZ[b, p]ᵀ h[b, :, p]: (hidden, C) float32-accumulated, h's dtype (cuBLAS)."""
    rows = _positions_by_channels(h3)
    with _without_autocast(h3.device):
        if rows.is_contiguous():
            return torch.mm(grad_z.reshape(-1, grad_z.shape[-1]).t(), rows.reshape(-1, rows.shape[-1]))
        return torch.einsum("bnj,bnc->jc", grad_z, rows)


def attention_pool_fwd(
    h: torch.Tensor, w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: torch.Tensor,
    *, block_n: Optional[int] = None, block_c: Optional[int] = None,
    block_hid: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Launch the forward. h (B, C, H, W) any strides; w1 (hidden, C) or None; b1 (hidden,) or
    None; w2 (hidden,) or (C,). Returns pooled (B, C) h's dtype, attn (B, H, W) float32 and, for
    the backward, pooled32 (B, C) float32 and z (B, H·W, hidden) h's dtype (None when linear)."""
    batch, channels, height, width = h.shape
    n_pos, hidden = height * width, (0 if w1 is None else w1.shape[0])
    h3 = h.flatten(2)  # a view for contiguous and channels_last h, a copy only for odd strides
    pool_n, pool_warps, _, _, _ = _pick_blocks(n_pos, channels, hidden, h.dtype, h3.stride(1) == 1,
                                               block_n, block_c, block_hid)
    block_c_all, block_hid_all = next_power_of_2(channels), next_power_of_2(hidden) if hidden else 1
    z = pre_activations(h3, w1, b1) if hidden else None
    pooled = torch.empty((batch, channels), device=h.device, dtype=h.dtype)
    pooled32 = pooled if h.dtype == torch.float32 else torch.empty_like(pooled, dtype=torch.float32)
    attn = torch.empty((batch, n_pos), device=h.device, dtype=torch.float32)
    _attention_pool_fwd_kernel[(batch,)](
        h3, w2, w2 if z is None else z,
        pooled, pooled32, attn,
        channels, n_pos, hidden,
        h3.stride(0), h3.stride(1), h3.stride(2),
        pooled.stride(0), pooled.stride(1),
        HAS_MLP=hidden > 0, BLOCK_N=pool_n, BLOCK_C=block_c_all, BLOCK_HID=block_hid_all,
        num_warps=pool_warps,
    )
    return pooled, attn.view(batch, height, width), pooled32, z


def attention_pool_bwd(
    h: torch.Tensor, w1: Optional[torch.Tensor], w2: torch.Tensor, z: Optional[torch.Tensor],
    attn: torch.Tensor, pooled32: torch.Tensor, grad_pooled: torch.Tensor,
    grad_attn: Optional[torch.Tensor],
    *, need_grad_w1: bool = True, block_n: Optional[int] = None, block_c: Optional[int] = None,
    block_hid: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
    """Launch the backward. attn (B, H, W), pooled32 and z from the forward; grad_pooled (B, C);
    grad_attn (B, H, W) or None. Returns dh (same shape and memory format as h), dW1 (hidden, C)
    or None (also when not need_grad_w1: its GEMM is skipped), db1 (hidden,) float32 or None,
    dw2 (w2's shape, float32)."""
    batch, channels, height, width = h.shape
    n_pos, hidden = height * width, (0 if w1 is None else w1.shape[0])
    h3 = h.flatten(2)
    channels_last = h3.stride(1) == 1
    pool_n, pool_warps, block_m, block_c, block_hid = _pick_blocks(
        n_pos, channels, hidden, h.dtype, channels_last, block_n, block_c, block_hid)
    block_c_all, block_hid_all = next_power_of_2(channels), next_power_of_2(hidden) if hidden else 1
    dh3 = torch.empty_like(h3)  # keeps h3's strides, so dh has h's memory format
    f32 = dict(device=h.device, dtype=torch.float32)
    part_w2 = torch.empty((batch, hidden or channels), **f32)
    part_b1 = torch.empty((batch, hidden), **f32) if hidden else part_w2
    grad_z = torch.empty((batch, n_pos, hidden), device=h.device, dtype=h.dtype) if hidden else part_w2
    if grad_attn is not None:
        grad_attn = grad_attn.reshape(batch, n_pos).to(torch.float32).contiguous()
    _attention_pool_bwd_kernel[(batch,)](
        h3, w2, w2 if z is None else z, attn, pooled32,
        grad_pooled, attn if grad_attn is None else grad_attn,
        dh3, grad_z, part_w2, part_b1,
        channels, n_pos, hidden,
        h3.stride(0), h3.stride(1), h3.stride(2),
        grad_pooled.stride(0), grad_pooled.stride(1),
        dh3.stride(0), dh3.stride(1), dh3.stride(2),
        HAS_MLP=hidden > 0, HAS_GRAD_ATTN=grad_attn is not None, BLOCK_N=pool_n,
        BLOCK_C=block_c_all, BLOCK_HID=block_hid_all,
        num_warps=pool_warps,
    )
    dh = dh3.view(batch, channels, height, width)
    grad_w2 = part_w2.sum(dim=0)
    if not hidden:
        return dh, None, None, grad_w2
    rows = batch * n_pos
    _attention_pool_dh_kernel[(triton.cdiv(rows, block_m) * triton.cdiv(channels, block_c),)](
        grad_z, w1, attn, grad_pooled,
        dh3,
        channels, n_pos, rows, hidden,
        w1.stride(0), w1.stride(1),
        grad_pooled.stride(0), grad_pooled.stride(1),
        dh3.stride(0), dh3.stride(1), dh3.stride(2),
        BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_HID=block_hid,
        DOT_PRECISION=_dot_precision(h.dtype), **_gemm_launch(h.dtype, channels_last),
    )
    return dh, grad_w1(grad_z, h3) if need_grad_w1 else None, part_b1.sum(dim=0), grad_w2
