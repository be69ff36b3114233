"""Pure-PyTorch InfoNCE: the CPU path, the tests' ground truth and the benchmarks' eager provider."""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F


def info_nce_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    temperature: Union[float, torch.Tensor] = 0.1,
    *,
    labels: Optional[torch.Tensor] = None,
    label_offset: int = 0,
    symmetric: bool = False,
    normalize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE of queries q (N, D) against keys k (M, D); materialises the (N, M) logits.

    ``== cross_entropy(normalize(q) @ normalize(k).T / τ, labels)``, labels defaulting to
    label_offset + arange(N) (a rank's own keys inside gathered ones); symmetric (N == M, diagonal
    positives) averages that with the k→q direction, per row. The matmul runs in the inputs' dtype
    (as eager PyTorch under autocast would) and the softmax in at least float32, so the loss is
    float32 (float64 for float64 inputs). Returns a scalar, or (N,) with reduction="none".
    """
    if normalize:
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
    logits = (q @ k.T).to(torch.promote_types(q.dtype, torch.float32)) / temperature
    if labels is None:
        labels = torch.arange(label_offset, label_offset + q.shape[0], device=q.device)
    per_row = F.cross_entropy(logits, labels, reduction="none")
    if symmetric:
        per_row = 0.5 * (per_row + F.cross_entropy(logits.T, labels, reduction="none"))
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    return per_row
