"""The device stage of a PairLoader: the interface between host batches and augmented views.

A device stage takes the host's batches (``HostBatch``: graph inputs and view parameters), runs the
augmentation graph on the loader's device a few batches deep, and gives back each batch's two views
in order. ``DaliStage`` (dali_stage.py) implements it with NVIDIA DALI today; another backend (a
PyTorch graph, GPU video decoders) implements the same methods and the producer drives it unchanged.

The producer calls, on its "vito-dali" thread: ``submit`` while ``held() < depth`` (and the host
has a batch ready, or the stage holds nothing, or it is ``filling``), then ``take`` for the oldest
batch; ``drain`` when an iteration stops early. The consumer's thread calls ``hand_over`` on each
batch it receives, and the loader ``close`` when it closes. A stage asks the host preparation (``HostRepair``) to find and replace the
samples that made its graph fail, and to ``release`` a batch's host memory once its inputs are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Tuple

import numpy as np

from vito_fast.data.host import HostBatch

__all__ = ["DeviceOutput", "DeviceStage", "HostRepair", "hand_over_on_current_stream"]


@dataclass
class DeviceOutput:
    """The views of one host batch: ``views`` two (B, 3, S, S) tensors on the device (channels_last);
    ``ready``: a CUDA event after which they may be read (None on the CPU)."""

    batch: HostBatch
    views: Tuple[Any, Any]
    ready: Optional[Any] = None


class HostRepair(Protocol):
    """What a device stage may ask of the host preparation (``HostPreparation`` provides it)."""

    def find_bad(self, batch: HostBatch) -> np.ndarray: ...

    def replace(self, batch: HostBatch, rows: np.ndarray) -> None: ...

    def release(self, batch: HostBatch) -> None: ...


class DeviceStage(Protocol):
    """Runs the augmentation graph of host batches on the device, ``depth`` batches deep."""

    depth: int  # batches the stage holds while it runs (the loader's ``prefetch``)

    def held(self) -> int:
        """Batches submitted whose outputs have not been taken."""
        ...

    def filling(self) -> bool:
        """True while the stage cannot run until more batches are submitted (a new graph's first run)."""
        ...

    def submit(self, batch: HostBatch) -> None:
        """Feed one batch; the stage runs it when it can."""
        ...

    def take(self) -> Optional[DeviceOutput]:
        """The oldest batch's views (None for a batch the stage added itself to fill its graph)."""
        ...

    def drain(self) -> None:
        """Drop the work in flight (an iteration stopped early) and release its batches."""
        ...

    def hand_over(self, output: DeviceOutput) -> None:
        """On the consumer's thread: make the views safe to use there (its current CUDA stream)."""
        ...

    def close(self) -> None:
        """Free what the stage holds on the device (after the producer has stopped)."""
        ...


def hand_over_on_current_stream(output: DeviceOutput, device) -> None:
    """``DeviceStage.hand_over`` of a stage that writes its views on its own CUDA stream: the
    consumer's current stream waits for ``output.ready``, and the views' memory stays theirs until
    that stream is done with it (nothing to do on the CPU). ``device``: the views' torch device."""
    if output.ready is None:
        return
    import torch

    current = torch.cuda.current_stream(device)
    current.wait_event(output.ready)
    for view in output.views:
        view.record_stream(current)
