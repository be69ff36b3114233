"""Batches for the loop: the real ``PairLoader`` or ``SyntheticPairSource`` (on-device random pairs,
``vito_fast.data.synthetic_pairs``), as ``config.data`` (``DataConfig``) names.

Both follow one contract: iterating yields dicts with ``view1``, ``view2`` (B, 3, S, S)
channels_last normalised tensors on the device, and NumPy ``sample_ids`` (B,), ``frame_indices``
(B, 2), ``crops`` (B, 2, 4), ``labels`` (B,); ``len()`` is the steps per epoch; a batch is a pure
function of (seed, epoch, step, rank, world_size), and ``start_step`` resumes exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from vito_fast.data.synthetic_pairs import SyntheticPairSource
from vito_fast.train.distributed import DistInfo

__all__ = ["SyntheticPairSource", "build_loader"]


def build_loader(config, info: DistInfo, *, epoch: int, start_step: int, run_dir: Optional[Path] = None):
    """The batch source that config.data names, for this rank, positioned at (epoch, start_step)."""
    data = config.data
    # bf16 views feed the bf16-autocast step on a GPU; the CPU step runs in float32.
    bf16 = info.device.type == "cuda" and config.train.amp
    if data.source == "synthetic":
        return SyntheticPairSource(data.batch_size, image_size=data.image_size, device=info.device,
                                   seed=data.seed, epoch=epoch, start_step=start_step, rank=info.rank,
                                   world_size=info.world_size, num_samples=data.synthetic_samples,
                                   steps_per_epoch=data.steps_per_epoch or 1000,
                                   dtype=torch.bfloat16 if bf16 else torch.float32)
    from vito_fast.data.loader import PairLoader

    path = data.path
    if not path:
        if run_dir is None:
            raise ValueError("data.path is empty: pass --data PATH (a manifest or a frame store)")
        from vito_fast.synthetic.builtin import builtin_dataset

        if info.is_main:
            builtin_dataset(run_dir, progress=config.train.progress)
        if info.distributed:
            torch.distributed.barrier()
        path = str(builtin_dataset(run_dir, progress=False))
    on_gpu = info.device.type == "cuda"
    loader_config = data.loader_config(dtype="bfloat16" if bf16 else "float32",
                                       device_id=info.device.index if on_gpu else None)
    return PairLoader(path, data.batch_size, device="gpu" if on_gpu else "cpu", seed=data.seed, epoch=epoch,
                      start_step=start_step, rank=info.rank, world_size=info.world_size, config=loader_config)
