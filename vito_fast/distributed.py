"""Collectives with gradients, for losses whose negatives span the global batch."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist


def _gather_sizes(rows: int, device: torch.device, group) -> List[int]:
    world = dist.get_world_size(group)
    size = torch.tensor([rows], device=device, dtype=torch.int64)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    return [int(s) for s in sizes]


class _AllGatherRows(torch.autograd.Function):
    """Concatenate every rank's x (n_r, D) along rows; backward sums the gradient over ranks
    (all_reduce) and hands each rank the slice of its own rows."""

    @staticmethod
    def forward(ctx, x, sizes, group):
        rank = dist.get_rank(group)
        largest = max(sizes)
        # all_gather needs equal shapes: pad every rank to the largest, then trim.
        padded = x.new_zeros((largest,) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        chunks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(chunks, padded.contiguous(), group=group)
        ctx.offset = sum(sizes[:rank])
        ctx.rows = x.shape[0]
        ctx.group = group
        return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.offset: ctx.offset + ctx.rows], None, None


def all_gather_with_grad(x: torch.Tensor, group: Optional[dist.ProcessGroup] = None, *,
                         equal_rows: bool = False) -> Tuple[torch.Tensor, int]:
    """(Σ_r n_r, D) concatenation of every rank's x (n_r, D) in rank order, and this rank's row offset.

    Unequal n_r are supported: the sizes are gathered first, which costs a collective and a host
    synchronisation. ``equal_rows=True`` promises that every rank passes as many rows as this one
    (a training step with a fixed per-rank batch) and skips both. Gradients flow back to the owner
    rank: it receives Σ over ranks of d(loss_rank)/d(its rows), the convention under which DDP's
    gradient averaging yields the gradient of the mean loss.
    """
    if equal_rows:
        sizes = [x.shape[0]] * dist.get_world_size(group)
    else:
        sizes = _gather_sizes(x.shape[0], x.device, group)
    offset = sum(sizes[: dist.get_rank(group)])
    if x.requires_grad:
        return _AllGatherRows.apply(x, sizes, group), offset
    with torch.no_grad():
        return _AllGatherRows.apply(x, sizes, group), offset
