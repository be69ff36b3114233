"""Attention pooling: input checks, the autograd Function around the Triton kernels, and dispatch."""
from __future__ import annotations

from functools import partial
from typing import Optional, Tuple

import torch

from vito_fast.ops import self_check
from vito_fast.ops._dispatch import BACKENDS, use_triton
from vito_fast.reference.attention_pool import attention_pool_reference


def _check_inputs(h, w1, b1, w2, b2, backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"attention_pool: backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"attention_pool: h must be a torch.Tensor, got {type(h).__name__}")
    if h.dim() != 4:
        raise ValueError(f"attention_pool: h must be 4-D (B, C, H, W), got shape {tuple(h.shape)}")
    if not h.is_floating_point():
        raise TypeError(f"attention_pool: h must be floating point, got {h.dtype}")
    batch, channels, height, width = h.shape
    if channels == 0 or height * width == 0:
        raise ValueError(f"attention_pool: h has no channels or no positions (shape {tuple(h.shape)})")
    if w1 is None and b1 is not None:
        raise ValueError("attention_pool: b1 is given but w1 is None (the linear variant has no b1)")
    if w1 is not None:
        if w1.dim() != 2:
            raise ValueError(f"attention_pool: w1 must be 2-D (hidden, C), got shape {tuple(w1.shape)}")
        if w1.shape[1] != channels:
            raise ValueError(f"attention_pool: w1 has {w1.shape[1]} input channels but h has {channels}")
        if w1.shape[0] == 0:
            raise ValueError("attention_pool: w1 has hidden = 0 rows; pass w1=None for the linear variant")
    if w2 is None:
        raise ValueError("attention_pool: w2 is required: (hidden,), or (C,) when w1 is None")
    hidden = w1.shape[0] if w1 is not None else 0
    expected = (
        ("w1", w1, None),
        ("b1", b1, (hidden,)),
        ("w2", w2, (hidden,) if hidden else (channels,)),
    )
    for name, tensor, shape in expected:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"attention_pool: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if shape is not None and tuple(tensor.shape) != shape:
            what = f"hidden = {hidden}" if hidden else f"C = {channels} (w1 is None)"
            raise ValueError(f"attention_pool: {name} must have shape {shape} for {what}, "
                             f"got {tuple(tensor.shape)}")
    if b2 is not None:
        if not isinstance(b2, torch.Tensor):
            raise TypeError(f"attention_pool: b2 must be a torch.Tensor or None, got {type(b2).__name__}")
        if b2.numel() != 1 or b2.dim() > 1:
            raise ValueError(f"attention_pool: b2 must be a scalar (0-d or one element), "
                             f"got shape {tuple(b2.shape)}")
    for name, tensor in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if tensor is None:
            continue
        if tensor.dtype != h.dtype:
            raise TypeError(f"attention_pool: {name} is {tensor.dtype} but h is {h.dtype}; cast it")
        if tensor.device != h.device:
            raise ValueError(f"attention_pool: {name} is on {tensor.device} but h is on {h.device}")


class AttentionPoolFunction(torch.autograd.Function):
    """Triton attention pooling. Saves h, the weights, attn and pooled in float32 (O(B·(H·W + C)))
    and, with a hidden layer, the pre-activations z (B, H·W, hidden): what an eager module keeps,
    and cheaper to keep than to recompute (a GEMM and a read of h)."""

    @staticmethod
    def forward(ctx, h, w1, b1, w2, b2, blocks):
        from vito_fast.kernels.attention_pool import attention_pool_fwd

        pooled, attn, pooled32, z = attention_pool_fwd(h, w1, b1, w2, **blocks)
        ctx.save_for_backward(h, w1, w2, b2, z, attn, pooled32)
        ctx.has_b1 = b1 is not None
        ctx.blocks = blocks
        ctx.set_materialize_grads(False)  # an unused attn then costs the backward nothing
        return pooled, attn

    @staticmethod
    def backward(ctx, grad_pooled, grad_attn):
        from vito_fast.kernels.attention_pool import attention_pool_bwd

        h, w1, w2, b2, z, attn, pooled32 = ctx.saved_tensors
        if grad_pooled is None and grad_attn is None:
            return None, None, None, None, None, None
        if grad_pooled is None:  # only attn reached the loss
            grad_pooled = torch.zeros(h.shape[:2], device=h.device, dtype=h.dtype)
        grad_h, grad_w1, grad_b1, grad_w2 = attention_pool_bwd(
            h, w1, w2, z, attn, pooled32, grad_pooled, grad_attn,
            need_grad_w1=ctx.needs_input_grad[1], **ctx.blocks)
        grad_b1 = grad_b1.to(h.dtype) if ctx.has_b1 and ctx.needs_input_grad[2] else None
        # b2 shifts every logit of a row alike, so the softmax (and all outputs) ignore it.
        grad_b2 = torch.zeros_like(b2) if b2 is not None else None
        return grad_h, grad_w1, grad_b1, grad_w2.to(w2.dtype), grad_b2, None


def attention_pool(
    h: torch.Tensor,
    w1: Optional[torch.Tensor],
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
    block_sizes: Optional[Tuple[Optional[int], Optional[int], Optional[int]]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Contrastive attention pooling of h (B, C, H, W) -> (pooled (B, C), attn (B, H, W) float32).

    ``attn = softmax_HW(w2 · relu(W1 h + b1) + b2)``, ``pooled = Σ_HW attn · h``; with w1 = None
    (hidden = 0) the logits are ``w2 · h + b2``. w1 (hidden, C), b1 (hidden,) or None, w2
    (hidden,) or (C,), b2 a scalar or None, all in h's dtype and on h's device. pooled has h's
    dtype (float32 accumulation). Both outputs are differentiable; b2's gradient is zero.
    backend: "auto" (Triton for float32/16-bit CUDA tensors once each kind of call passes its
    first-use check, vito_fast/ops/self_check.py; the reference otherwise), "triton" (also on
    CPU tensors under TRITON_INTERPRET=1), "torch". h may be contiguous or channels_last (no copy).
    block_sizes (positions, channels, hidden) forces Triton tile sizes, for tests and tuning: the
    pooling kernels' position tile (they hold all channels), and the dh GEMM's row, channel and
    hidden steps (kernels/attention_pool.py). The Triton path takes C and hidden up to
    MAX_WIDTH = 16384 ("auto" uses the reference beyond, "triton" raises).
    """
    _check_inputs(h, w1, b1, w2, b2, backend)
    if h.shape[0] == 0 or not use_triton("attention_pool", h, backend):
        return attention_pool_reference(h, w1, b1, w2, b2)
    from vito_fast.kernels.attention_pool import MAX_WIDTH

    if backend == "auto" and max(h.shape[1], 0 if w1 is None else w1.shape[0]) > MAX_WIDTH:
        return attention_pool_reference(h, w1, b1, w2, b2)
    if backend == "auto" and not self_check.triton_trusted(
            self_check.attention_pool_kind(h, w1, b1, w2, b2),
            lambda kind: self_check.check_attention_pool(
                kind, partial(attention_pool, backend="triton", block_sizes=block_sizes), h, w1, b1, w2, b2)):
        return attention_pool_reference(h, w1, b1, w2, b2)
    block_n, block_c, block_hid = block_sizes if block_sizes is not None else (None, None, None)
    blocks = dict(block_n=block_n, block_c=block_c, block_hid=block_hid)
    return AttentionPoolFunction.apply(h, w1, b1, w2, b2, blocks)
