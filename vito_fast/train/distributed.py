"""Process-group setup for ``torchrun`` (NCCL on GPU, gloo on CPU) and rank-0-only helpers.

    torchrun --nproc_per_node 8 -m vito_fast pretrain --preset resnet50 --data store/ --out runs/r50

``setup`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); a process
group created by the caller beforehand (tests use ``file://`` init) is used as is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # whether setup() created the process group (and cleanup() should destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """"auto": this rank's GPU when CUDA is available, else the CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available; use train.device=auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def setup(device_preference: str = "auto") -> DistInfo:
    """Join (or create, from torchrun's environment) the default process group; pick this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        device = pick_device(device_preference, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank, world = 0, 1
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(rank, world, local_rank, device, owns)


def mean_over_ranks(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The average of tensor over all ranks (the tensor itself with one process)."""
    if not info.distributed:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
