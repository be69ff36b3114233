"""``SyntheticPairSource``: random frame pairs made on the device, for runs that time the step alone.

It follows the loader's contract (``PairLoader``): iterating yields dicts with ``view1``, ``view2``
(B, 3, S, S) channels_last tensors on the device, and NumPy ``sample_ids`` (B,), ``frame_indices``
(B, 2), ``crops`` (B, 2, 4), ``labels`` (B,); ``len()`` is the steps per epoch; a batch is a pure
function of (seed, epoch, step, rank, world_size), and ``start_step`` resumes exactly.
``data.source: synthetic`` in a pretraining config selects it.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SyntheticPairSource"]


def _seed_of(*parts: int) -> int:
    digest = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SyntheticPairSource:
    """Random frame pairs generated on the device: a smooth random image per sample, two noisy views.

    With ``num_samples`` > 0 the data set is that many fixed images (sample i of step s is image
    (s · global_batch + i) mod num_samples), which makes a tiny set to overfit; with 0 every step draws
    fresh images. The global batch (batch_size × world_size) is drawn at once and each rank takes
    its slice, so any world size sees the same global batch. Costs one randn per step on the device.
    """

    def __init__(self, batch_size: int, *, image_size: int, device: torch.device, seed: int = 0,
                 epoch: int = 0, start_step: int = 0, rank: int = 0, world_size: int = 1,
                 num_samples: int = 0, steps_per_epoch: int = 1000, dtype: torch.dtype = torch.float32):
        if batch_size <= 0 or image_size <= 0 or steps_per_epoch <= 0:
            raise ValueError(f"SyntheticPairSource: batch_size, image_size and steps_per_epoch must be > 0, "
                             f"got {batch_size}, {image_size}, {steps_per_epoch}")
        self.batch_size, self.image_size, self.device = batch_size, image_size, torch.device(device)
        self.seed, self.epoch, self.step = seed, epoch, start_step
        self.rank, self.world_size = rank, world_size
        self.num_samples, self.steps_per_epoch, self.dtype = num_samples, steps_per_epoch, dtype
        self._fixed = self._images(_seed_of(seed, -1), num_samples) if num_samples else None

    def _images(self, seed: int, count: int) -> torch.Tensor:
        generator = torch.Generator(self.device).manual_seed(seed)
        coarse = torch.randn(count, 3, 8, 8, generator=generator, device=self.device)
        return F.interpolate(coarse, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def batch(self, step: int) -> Dict[str, object]:
        """The batch of (self.epoch, step) for this rank."""
        global_batch = self.batch_size * self.world_size
        first = (self.epoch * self.steps_per_epoch + step) * global_batch
        ids = np.arange(first, first + global_batch, dtype=np.int64)
        step_seed = _seed_of(self.seed, self.epoch, step)
        if self._fixed is not None:
            ids %= self.num_samples
            base = self._fixed[torch.as_tensor(ids, device=self.device)]
        else:
            base = self._images(step_seed, global_batch)
        generator = torch.Generator(self.device).manual_seed(step_seed ^ 0x5EED)
        noise = torch.randn((2,) + tuple(base.shape), generator=generator, device=self.device)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        views = [(base + 0.5 * noise[v])[mine].to(self.dtype).contiguous(memory_format=torch.channels_last)
                 for v in range(2)]
        return {"view1": views[0], "view2": views[1], "sample_ids": ids[mine],
                "frame_indices": np.zeros((self.batch_size, 2), np.int64),
                "crops": np.zeros((self.batch_size, 2, 4), np.float32),
                "labels": (ids[mine] % 4).astype(np.int64)}

    def __iter__(self) -> Iterator[Dict[str, object]]:
        while self.step < self.steps_per_epoch:
            batch = self.batch(self.step)
            self.step += 1
            yield batch
