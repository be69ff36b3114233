"""Pure-PyTorch reference of contrastive attention pooling (the CPU path and the tests' truth).

    logits = w2 · relu(W1 · h[:, :, p] + b1) + b2      (hidden = 0, i.e. w1 is None: w2 · h + b2)
    attn   = softmax over the H·W positions p of logits
    pooled = Σ_p attn[p] · h[:, :, p]

It computes in h's dtype, the way an eager model with 1×1 convolutions would (the softmax in
float32), so it is also the "torch, same dtype" baseline of the low-precision tests. Float64
inputs give the float64 ground truth.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def attention_pool_reference(
    h: Tensor,
    w1: Optional[Tensor],
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """Attention pooling of a feature map, differentiable by autograd.

    Args:
        h: (B, C, H, W) features, any memory format.
        w1: (hidden, C) first 1×1 conv, or None for a single linear layer C → 1.
        b1: (hidden,) or None.
        w2: (hidden,), or (C,) when w1 is None.
        b2: scalar (0-d or one element) or None; it cancels in the softmax.

    Returns:
        pooled (B, C) in h's dtype and attn (B, H, W) float32 (float64 for float64 h).
    """
    batch, channels, height, width = h.shape
    x = h.flatten(2)  # (B, C, N); a view for contiguous and channels_last h
    if w1 is None:
        logits = torch.einsum("c,bcn->bn", w2, x)
    else:
        z = torch.einsum("jc,bcn->bnj", w1, x)
        if b1 is not None:
            z = z + b1
        logits = torch.relu(z) @ w2
    if b2 is not None:
        logits = logits + b2.reshape(())
    softmax_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    attn = torch.softmax(logits.to(softmax_dtype), dim=-1)  # (B, N)
    pooled = torch.bmm(x, attn.to(h.dtype).unsqueeze(-1)).squeeze(-1)  # (B, C)
    return pooled, attn.view(batch, height, width)
