"""The view graph of pipeline.py as batched PyTorch ops: the torch backend's augmentations.

Every per-sample choice arrives as a tensor (``ViewTensors``, built from a ``ViewParams`` by
:func:`view_tensors`), and each step runs on the whole batch at once, on whatever device the
frames are (a CUDA GPU or the CPU: the same code)::

    frames (N, 3, H, W) uint8, zero-padded to the batch's largest frame
      -> crop + resize: out = Ry @ frame @ Rx^T per sample             two batched matmuls
      -> round to uint8 levels                                         (DALI's resize outputs uint8)
      -> colour: clamp(M @ rgb + T, 0, 255)                            one batched matmul
      -> blur: separable Gaussian, per-sample taps, reflect-101        depthwise conv, blurred rows only
      -> solarize: x >= 128 -> 255 - x where asked
      -> (x / 255 - mean) / std, cast, channels_last

Ry (N, S, H) and Rx (N, S, W) hold DALI's antialiased linear resampling: a triangle filter of
radius max(1, scale) source pixels around each output pixel's centre, taps beyond the frame
clamped to its edge (that is, folded onto the edge pixel), so the padding is never read. A
flip reverses Rx's rows: colour, blur (a symmetric kernel with mirrored borders) and solarize
commute with it, so flipping the resize is flipping the view. The resize runs in float32 on either
device (a frame store's 256p frames: about 0.5 GFLOP a pair, a few per cent of an H100's float32
rate at 5,000 pairs/s; float16 would round the rows between the two matmuls by up to 1/16 of a
level and move many more pixels to the next uint8 level than DALI does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vito_fast.data.augment import IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD, blur_window, colour_matrices

__all__ = ["ViewTensors", "view_tensors", "to_device", "resize_taps", "resize_matrices", "pad_frames", "augment_views"]

_RESIZE_CHUNK_BYTES = 1 << 30  # padded frames converted for the resize at once (bounds the memory of big videos)


@dataclass
class ViewTensors:
    """One view's per-sample parameters on the device (N samples).

    boxes (N, 4) float32 top, left, height, width; flips (N,) bool; colour (N, 3, 4) float32;
    blurred (N,) int64 rows that blur, with blur_taps (len(blurred), max_window) float32 (zero
    beyond each sample's window); solarize (N,) bool; resize_taps: taps per output pixel the
    largest crop needs (from the host's numbers, so building the resize never waits on the device).
    """

    boxes: torch.Tensor
    flips: torch.Tensor
    colour: torch.Tensor
    blurred: torch.Tensor
    blur_taps: torch.Tensor
    solarize: torch.Tensor
    resize_taps: int


def _gaussian_taps(sigmas: np.ndarray, max_window: int) -> np.ndarray:
    """(n, max_window) normalised Gaussian taps, each sample cut to its own window (augment.blur_window)."""
    radius = max_window // 2
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    half = blur_window(max_window, sigmas)[:, None] // 2
    taps = np.exp(-0.5 * (offsets[None, :] / sigmas[:, None]) ** 2) * (np.abs(offsets)[None, :] <= half)
    return (taps / taps.sum(axis=1, keepdims=True)).astype(np.float32)


def view_tensors(params, view: int, size: int, max_window: int, device: torch.device) -> ViewTensors:
    """The tensors of recipe ``view`` (0 or 1) of a ``ViewParams`` for ``size`` px views on ``device``.

    max_window: the blur window at this image size (``augment.view_blur_window``).
    """
    sigmas = params.blur_sigma[:, view].astype(np.float64)
    blurred = np.flatnonzero(sigmas > 0)
    host = {
        "boxes": params.crop_boxes[:, view].astype(np.float32),
        "flips": params.flips[:, view].astype(bool),
        "colour": colour_matrices(params, view),
        "blurred": blurred.astype(np.int64),
        "blur_taps": _gaussian_taps(sigmas[blurred], max_window),
        "solarize": params.solarize[:, view].astype(bool),
    }
    largest_scale = float(host["boxes"][:, 2:].max(initial=1.0)) / size
    return ViewTensors(**{name: to_device(value, device) for name, value in host.items()},
                       resize_taps=resize_taps(largest_scale))


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; to a GPU through page-locked memory, so the copy is queued, not
    waited for (a copy from pageable memory would wait for the work already queued on the stream)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def resize_taps(scale: float) -> int:
    """Taps per output pixel that cover a triangle of radius max(1, scale) wherever its centre falls."""
    return int(np.ceil(2.0 * max(1.0, scale))) + 2


def resize_matrices(starts: torch.Tensor, lengths: torch.Tensor, in_sizes: torch.Tensor, out_size: int,
                    padded_size: int, taps: int, flips: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, out_size, padded_size) float32 resampling matrices of one axis (weights computed in float64).

    Row i of sample n maps a frame line of ``in_sizes[n]`` pixels (zero-padded to ``padded_size``)
    to output pixel i of the crop [starts[n], starts[n] + lengths[n]): triangle weights of radius
    max(1, scale) around the centre starts + (i + 0.5) * scale, taps beyond the frame clamped to
    its edge, each row summing to 1. ``taps``: at least ``resize_taps`` of the largest scale.
    ``flips`` (N,) bool reverses the output order.
    """
    device = starts.device
    starts, lengths, in_sizes = starts.double(), lengths.double(), in_sizes.to(device).long()
    scale = (lengths / out_size)[:, None, None]
    support = scale.clamp(min=1.0)
    centres = starts[:, None, None] + (torch.arange(out_size, device=device, dtype=torch.float64)[None, :, None] + 0.5) * scale
    first = torch.floor(centres - support - 0.5) + 1.0
    index = first + torch.arange(taps, device=device, dtype=torch.float64)  # (N, S, taps) source pixels
    weights = (1.0 - (index + 0.5 - centres).abs() / support).clamp(min=0.0)
    weights = (weights / weights.sum(dim=2, keepdim=True)).float()
    index = torch.minimum(index.clamp(min=0.0).long(), (in_sizes - 1)[:, None, None])
    matrices = torch.zeros(len(starts), out_size, padded_size, device=device, dtype=torch.float32)
    matrices.scatter_add_(2, index, weights)
    if flips is not None:
        matrices = torch.where(flips[:, None, None], matrices.flip(1), matrices)
    return matrices


def pad_frames(frames: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, 3, Hmax, Wmax) uint8 from N (3, H, W) frames: one stack when all share a size, else zero-padded."""
    if len({tuple(frame.shape) for frame in frames}) == 1:
        return torch.stack(list(frames))
    height = max(frame.shape[1] for frame in frames)
    width = max(frame.shape[2] for frame in frames)
    padded = frames[0].new_zeros((len(frames), 3, height, width))
    for row, frame in enumerate(frames):  # only when sizes differ: a copy per frame, no arithmetic
        padded[row, :, :frame.shape[1], :frame.shape[2]].copy_(frame)
    return padded


def _crop_resize(frames: torch.Tensor, frame_hw: torch.Tensor, tensors: ViewTensors, size: int) -> torch.Tensor:
    """(N, 3, S, S) float32 on the 0..255 scale, rounded to uint8 levels like DALI's uint8 resize."""
    count, channels, height, width = frames.shape
    boxes, taps = tensors.boxes, tensors.resize_taps
    chunk = max(1, _RESIZE_CHUNK_BYTES // max(1, channels * height * width * 4))  # float32 frames
    resized = []
    for start in range(0, count, chunk):  # chunks of frames bound the memory of big videos; one for a store
        part = slice(start, start + chunk)
        rows = resize_matrices(boxes[part, 0], boxes[part, 2], frame_hw[part, 0], size, height, taps)
        columns = resize_matrices(boxes[part, 1], boxes[part, 3], frame_hw[part, 1], size, width, taps,
                                  tensors.flips[part])
        rows_count = rows.shape[0]
        # two plain batched matmuls (no broadcast copies): along x, channels stacked as rows; then along y
        across = frames[part].float().reshape(rows_count, channels * height, width) @ columns.transpose(1, 2)
        across = across.reshape(rows_count, channels, height, size).transpose(1, 2)
        down = rows @ across.reshape(rows_count, height, channels * size)  # (n, S, 3 * S)
        resized.append(down.reshape(rows_count, size, channels, size).permute(0, 2, 1, 3))
    images = resized[0] if len(resized) == 1 else torch.cat(resized)
    return images.round_().clamp_(0.0, 255.0)


def _blur(images: torch.Tensor, tensors: ViewTensors) -> torch.Tensor:
    """Separable Gaussian blur of the rows in ``tensors.blurred`` (reflect-101 borders, DALI's default)."""
    if tensors.blurred.numel() == 0:
        return images
    selected = images.index_select(0, tensors.blurred)
    count, channels, height, width = selected.shape
    taps = tensors.blur_taps.repeat_interleave(channels, dim=0)  # (n * 3, window)
    radius = taps.shape[1] // 2
    planes = F.pad(selected.reshape(1, count * channels, height, width), (radius,) * 4, mode="reflect")
    planes = F.conv2d(planes, taps[:, None, :, None], groups=count * channels)  # along y
    planes = F.conv2d(planes, taps[:, None, None, :], groups=count * channels)  # along x
    return images.index_copy(0, tensors.blurred, planes.reshape(count, channels, height, width))


def augment_views(frames: torch.Tensor, frame_hw: torch.Tensor, tensors: ViewTensors, size: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """(N, 3, S, S) normalised views in ``dtype``, channels_last, on the frames' device.

    frames: (N, 3, H, W) uint8 (``pad_frames``); frame_hw: (N, 2) int64 each frame's own height
    and width; tensors: ``view_tensors`` of this view. The math per sample is ``augment.reference_view``
    of DALI's resize of the crop.
    """
    images = _crop_resize(frames, frame_hw, tensors, size)
    count = images.shape[0]
    colour = tensors.colour
    images = torch.baddbmm(colour[:, :, 3:], colour[:, :, :3], images.reshape(count, 3, -1)).reshape(images.shape)
    images = _blur(images.clamp_(0.0, 255.0), tensors)
    solarize = tensors.solarize[:, None, None, None] & (images >= SOLARIZE_THRESHOLD)
    images = torch.where(solarize, 255.0 - images, images)
    scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=images.device)[:, None, None]
    shift = torch.tensor([m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=images.device)[:, None, None]
    return (images * scale - shift).to(dtype=dtype, memory_format=torch.channels_last)
