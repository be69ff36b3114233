"""``InfoNCE`` module: the fused loss, optionally with keys gathered over all ranks."""
from __future__ import annotations

from typing import Optional

import torch

from vito_fast.ops.info_nce import DETERMINISTIC_DEFAULT, info_nce


class InfoNCE(torch.nn.Module):
    """loss = info_nce(q (N, D), k (M, D)); with gather_distributed, k becomes every rank's keys.

    With gather_distributed=True, each rank's positives are its own keys at its global offset
    (labels = offset + arange(N), so every rank needs M_local ≥ N; labels given to forward index
    the rank's local keys and are shifted the same way), and gradients of the gathered keys reach
    their owner when k requires grad: the owner gets Σ_ranks d loss_rank / d k, so DDP's gradient
    averaging yields the gradient of the mean loss. Per-rank batch sizes may differ, at the cost of
    gathering them every call (a host synchronisation); ``equal_batches=True`` promises the same
    number of keys on every rank (a fixed per-rank batch, as in training) and skips it. Without an
    initialised process group it is the plain single-process loss. deterministic: see
    ``vito_fast.info_nce`` (bitwise reproducible two-sweep backward, or one sweep with atomics).
    """

    def __init__(self, temperature: float = 0.1, symmetric: bool = False, normalize: bool = True,
                 reduction: str = "mean", gather_distributed: bool = False,
                 group: Optional["torch.distributed.ProcessGroup"] = None, backend: str = "auto",
                 equal_batches: bool = False, deterministic: bool = DETERMINISTIC_DEFAULT):
        super().__init__()
        if gather_distributed and symmetric:
            raise ValueError("InfoNCE: symmetric needs N == M, which gathered keys break; "
                             "call it twice with swapped views instead")
        self.temperature = temperature
        self.symmetric = symmetric
        self.normalize = normalize
        self.reduction = reduction
        self.gather_distributed = gather_distributed
        self.group = group
        self.backend = backend
        self.equal_batches = equal_batches
        self.deterministic = deterministic

    def forward(self, q: torch.Tensor, k: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        label_offset = 0
        if self.gather_distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            from vito_fast.distributed import all_gather_with_grad

            if k.dim() != 2:
                raise ValueError(f"InfoNCE: k must be 2-D (M, D), got shape {tuple(k.shape)}")
            if k.shape[0] < q.shape[0] and labels is None:
                raise ValueError(f"InfoNCE: each rank needs at least as many keys as queries for "
                                 f"its positives; got N={q.shape[0]}, M={k.shape[0]}")
            k, offset = all_gather_with_grad(k, self.group, equal_rows=self.equal_batches)
            if labels is not None:
                labels = labels + offset
            else:
                label_offset = offset  # no labels tensor: no range check, no host sync
        return info_nce(q, k, self.temperature, labels=labels, label_offset=label_offset,
                        symmetric=self.symmetric, normalize=self.normalize,
                        reduction=self.reduction, backend=self.backend, deterministic=self.deterministic)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, symmetric={self.symmetric}, "
                f"gather_distributed={self.gather_distributed}, deterministic={self.deterministic}")
