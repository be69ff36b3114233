"""The colour, blur and solarize operations of a view, as the DALI graph applies them, in NumPy.

Colour jitter (in its sampled order) and grayscale are affine maps of RGB on the 0..255 scale, so
the whole chain folds into one 3x4 matrix per view, ``[M | T]``, that DALI applies in a single
``fn.coord_transform`` (exact random order, one pass, the same on CPU and GPU). Definitions, with
x an RGB column vector and w = (0.299, 0.587, 0.114) the ITU-R 601 luma weights::

    brightness b:  x -> b x
    contrast c:    x -> c x + (1 - c) 128          (about mid-grey, not the image mean)
    saturation s:  x -> s x + (1 - s) (w . x) 1    (blend with the grey of the pixel)
    hue h (turns): rotate the chroma (I, Q) of YIQ by 2 pi h; luma is unchanged
    grayscale:     x -> (w . x) 1

Unlike torchvision's ColorJitter, values are clamped to [0, 255] once, after the whole chain (and
stay floats from there on), contrast pivots on mid-grey (128) instead of the image's mean, and hue
turns in YIQ instead of HSV: all three keep the chain one affine map per pixel.
Then a Gaussian blur (``sigma`` in output pixels; BYOL's window, 23 taps at 224, cut to the taps
within 4 sigma, ``blur_window``: the weights dropped sum to < 1e-4 of the kernel, under 0.03 of a
level, and a small sigma costs a few taps instead of 23; borders mirrored without repeating the
edge pixel) and solarize (x >= 128 -> 255 - x) follow, and
finally ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD``.

The crop and resize before all of it is DALI's antialiased linear resampling, ``reference_resize``:
per axis a triangle filter of radius max(1, scale) source pixels around each output pixel's centre
(``start + (i + 0.5) * scale``), taps beyond the frame clamped to its edge; the result is rounded to
uint8 levels (DALI's resize outputs uint8). ``reference_view`` applies the rest to a resized crop;
the tests compare both backends' outputs with them.
"""
from __future__ import annotations


import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LUMA", "colour_matrices", "view_blur_window", "blur_window",
           "resize_weights", "reference_resize", "reference_view", "SOLARIZE_THRESHOLD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = np.array([0.299, 0.587, 0.114])
SOLARIZE_THRESHOLD = 128.0
CONTRAST_PIVOT = 128.0

_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _jitter_ops(params, view: int) -> np.ndarray:
    """(4, B, 4, 4) homogeneous maps of brightness, contrast, saturation and hue per sample."""
    batch = len(params)
    ops = np.broadcast_to(np.eye(4), (4, batch, 4, 4)).copy()
    eye = np.eye(3)
    brightness = params.brightness[:, view].astype(np.float64)[:, None, None]
    contrast = params.contrast[:, view].astype(np.float64)[:, None, None]
    saturation = params.saturation[:, view].astype(np.float64)[:, None, None]
    ops[0, :, :3, :3] = brightness * eye
    ops[1, :, :3, :3] = contrast * eye
    ops[1, :, :3, 3] = (1.0 - contrast[:, :, 0]) * CONTRAST_PIVOT
    ops[2, :, :3, :3] = saturation * eye + (1.0 - saturation) * np.outer(np.ones(3), LUMA)
    angle = 2.0 * np.pi * params.hue[:, view].astype(np.float64)
    rotation = np.broadcast_to(np.eye(3), (batch, 3, 3)).copy()
    rotation[:, 1, 1], rotation[:, 1, 2] = np.cos(angle), -np.sin(angle)
    rotation[:, 2, 1], rotation[:, 2, 2] = np.sin(angle), np.cos(angle)
    ops[3, :, :3, :3] = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ
    return ops


def colour_matrices(params, view: int) -> np.ndarray:
    """(B, 3, 4) float32 ``[M | T]`` per sample of recipe ``view`` (0 or 1) of a ``ViewParams``.

    out = clip(M @ rgb + T, 0, 255) applies the jitter (when on, in ``jitter_order``) then grayscale.
    """
    batch = len(params)
    ops = _jitter_ops(params, view)
    rows = np.arange(batch)
    total = np.broadcast_to(np.eye(4), (batch, 4, 4)).copy()
    applied = params.jitter_applied[:, view].astype(bool)
    for position in range(4):  # compose in each sample's own order
        step = ops[params.jitter_order[:, view, position].astype(np.int64), rows]
        total = np.where(applied[:, None, None], step @ total, total)
    grey = np.eye(4)
    grey[:3, :3] = np.outer(np.ones(3), LUMA)
    total = np.where(params.grayscale[:, view].astype(bool)[:, None, None], grey @ total, total)
    return np.ascontiguousarray(total[:, :3], dtype=np.float32)


def view_blur_window(image_size: int, kernel_at_224: int = 23) -> int:
    """Odd Gaussian window for a view of ``image_size`` pixels (BYOL: 23 at 224), at least 3."""
    window = int(round(kernel_at_224 * image_size / 224.0))
    return max(3, window if window % 2 else window + 1)


def blur_window(max_window: int, sigma):
    """The window used for ``sigma`` (a number or an array): the taps within 4 sigma, in [3, max_window]."""
    window = np.clip(2 * np.ceil(4.0 * np.asarray(sigma, dtype=np.float64)) + 1, 3, max_window).astype(np.int64)
    return int(window) if window.ndim == 0 else window


def resize_weights(start: float, length: float, in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 resampling matrix of one axis: crop [start, start + length) of a
    line of ``in_size`` pixels to ``out_size`` pixels (triangle filter, radius max(1, scale), edges clamped)."""
    scale = length / out_size
    support = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        centre = start + (out + 0.5) * scale
        taps = np.arange(int(np.floor(centre - support)) - 1, int(np.ceil(centre + support)) + 2)
        tap_weights = np.maximum(0.0, 1.0 - np.abs(taps + 0.5 - centre) / support)
        np.add.at(weights[out], np.clip(taps, 0, in_size - 1), tap_weights)
        weights[out] /= weights[out].sum()
    return weights


def reference_resize(frame: np.ndarray, box, size: int) -> np.ndarray:
    """(size, size, 3) float64 uint8 levels: crop ``box`` (top, left, height, width) of an (H, W, 3)
    frame resized the way DALI's ``fn.resize(antialias=True, interp_type=INTERP_LINEAR)`` does."""
    top, left, height, width = (float(value) for value in box)
    rows = resize_weights(top, height, frame.shape[0], size)
    columns = resize_weights(left, width, frame.shape[1], size)
    resized = np.einsum("iy,yxc,jx->ijc", rows, np.asarray(frame, dtype=np.float64), columns)
    return np.clip(np.round(resized), 0, 255)


def _blur_axis(image: np.ndarray, sigma: float, window: int, axis: int) -> np.ndarray:
    radius = window // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(image, pad, mode="reflect")  # reflect = mirror without the edge (DALI's 101)
    length = image.shape[axis]
    return sum(tap * np.take(padded, np.arange(k, k + length), axis=axis) for k, tap in enumerate(taps))


def reference_view(resized: np.ndarray, colour: np.ndarray, sigma: float, solarize: bool, mirror: bool,
                   max_window: int) -> np.ndarray:
    """The normalised view (S, S, 3) float64 from a resized crop (S, S, 3) on the 0..255 scale.

    ``colour``: one (3, 4) matrix of :func:`colour_matrices`; ``sigma`` 0 = no blur;
    ``max_window``: :func:`view_blur_window` of the view size.
    """
    image = np.asarray(resized, dtype=np.float64)
    image = np.clip(image @ colour[:, :3].T.astype(np.float64) + colour[:, 3], 0, 255)
    if sigma > 0:
        window = blur_window(max_window, sigma)
        image = _blur_axis(_blur_axis(image, sigma, window, 0), sigma, window, 1)
    if solarize:
        image = np.where(image >= SOLARIZE_THRESHOLD, 255.0 - image, image)
    if mirror:
        image = image[:, ::-1]
    return (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
