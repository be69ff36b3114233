"""The per-dtype tolerances the Triton paths are held to, by the tests and the first-use self-check.

The rule (flash-attention's): ``err(ours, ref64) ≤ 2·err(torch same dtype, ref64) + atol``, ref64
the reference in float64 and "torch same dtype" the reference in the inputs' dtype on the same
device, so a result may be as wrong as PyTorch's own low-precision result, twice over, plus atol.
"""
from __future__ import annotations

import torch

# InfoNCE: atol relative to the size of the result, max(|ref64|, floor, 1e-3), the floor being the
# size of the terms that cancelled where a result sums to ~0 (dτ when N = M = 1).
INFO_NCE_ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}

# Attention pooling: absolute atol for inputs and weights of size O(1) (the tests' inputs).
ATTENTION_POOL_ATOL = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def allowed_error(torch_error: float, atol: float) -> float:
    """The largest error of ours the rule allows, given PyTorch's own error in the same dtype."""
    return 2 * torch_error + atol
