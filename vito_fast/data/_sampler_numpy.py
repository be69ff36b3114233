"""NumPy reference of the C++ view sampler (``csrc/sampler.cpp``), vectorised over the batch.

It evaluates the same floating-point expressions in the same order as the C++ code, drawing from
the same Philox counters (:mod:`vito_fast.data._philox`), so both agree bit for bit. It is the
fallback when ``vito_fast._C`` is missing and the oracle of ``tests/test_sampler.py``.
Inputs are already validated by :func:`vito_fast.data.sampler.sample_view_params`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict

import numpy as np

from vito_fast.data._philox import (
    STREAM_APPEARANCE,
    STREAM_CROP_POSITION,
    STREAM_CROP_SHAPE,
    STREAM_TIMING,
    SampleCounters,
    uniform_index,
)


def _lerp(low: float, high: float, uniform: np.ndarray) -> np.ndarray:
    return low + (high - low) * uniform


@dataclass(frozen=True)
class DeltaDistribution:
    """One way of drawing the temporal offset Δt (seconds) between the two frames.

    To add one: an entry in DELTA_DISTRIBUTIONS, the same code in ``csrc/sampler.h``
    (DeltaDistribution) and a branch in ``sample_one`` of ``csrc/sampler.cpp``.
    """

    code: int  # the C++ enum value
    description: str
    seconds: Callable[[np.ndarray, float, float], np.ndarray]  # (uniforms (B,), low, high) -> (B,)
    needs_equal_ends: bool = False


DELTA_DISTRIBUTIONS: Dict[str, DeltaDistribution] = {
    "uniform": DeltaDistribution(
        0, "uniform in [delta_seconds[0], delta_seconds[1]]",
        lambda uniform, low, high: _lerp(low, high, uniform),
    ),
    "fixed": DeltaDistribution(
        1, "always delta_seconds[1] (both ends equal)",
        lambda uniform, low, high: np.full(uniform.shape, high, dtype=np.float64),
        needs_equal_ends=True,
    ),
}
_DISTRIBUTION_BY_CODE = {entry.code: entry for entry in DELTA_DISTRIBUTIONS.values()}

_EXP_HALVINGS = 8
_EXP_TERMS = 8
_INVERSE_FACTORIALS = [1.0 / float(math.factorial(k)) for k in range(_EXP_TERMS + 1)]


def portable_exp(x: np.ndarray) -> np.ndarray:
    """exp(x) from + and * only, exactly as ``portable_exp`` in ``csrc/sampler.cpp``.

    Horner's scheme for the Taylor series of exp(x / 2^8), then squared 8 times. NumPy's SIMD exp
    may differ from libm's in the last bit; this one is identical on both sides (and across
    platforms). Relative error ~1e-13 for |x| <= 10.
    """
    reduced = x * (1.0 / float(1 << _EXP_HALVINGS))
    result = np.full_like(reduced, _INVERSE_FACTORIALS[_EXP_TERMS])
    for k in range(_EXP_TERMS - 1, -1, -1):
        result = result * reduced + _INVERSE_FACTORIALS[k]
    for _ in range(_EXP_HALVINGS):
        result = result * result
    return result


def sample_view_arrays(
    sample_ids: np.ndarray, num_frames: np.ndarray, fps: np.ndarray, frame_hw: np.ndarray,
    seed: int, epoch: int, native: dict,
) -> Dict[str, np.ndarray]:
    """The fields of ViewParams (except sample_ids) for B validated samples.

    sample_ids, num_frames: (B,) int64; fps: (B,) float64; frame_hw: (B, 2) int64;
    native: ``ViewConfig.native()``.
    """
    counters = SampleCounters(seed, epoch, sample_ids)
    arrays = _sample_timing(counters, num_frames, fps, native)
    heights, widths = frame_hw[:, 0], frame_hw[:, 1]
    per_view = [
        {"crop_boxes": _sample_crops(counters, view, heights, widths, native),
         **_sample_appearance(counters, view, native)}
        for view in (0, 1)
    ]
    for name in per_view[0]:
        arrays[name] = np.stack([per_view[0][name], per_view[1][name]], axis=1)
    return arrays


def _sample_timing(counters: SampleCounters, num_frames: np.ndarray, fps: np.ndarray, native: dict) -> Dict[str, np.ndarray]:
    delta_uniform, first_uniform = counters.uniform_pair(STREAM_TIMING, 0)
    distribution = _DISTRIBUTION_BY_CODE[int(native["delta_distribution"])]
    seconds = distribution.seconds(delta_uniform, native["delta_seconds_min"], native["delta_seconds_max"])
    delta_float = np.minimum(np.rint(seconds * fps), (num_frames - 1).astype(np.float64))
    delta = delta_float.astype(np.int64)
    earlier = uniform_index(first_uniform, num_frames - 1 - delta)
    later = earlier + delta
    swapped = counters.uniform_pair(STREAM_TIMING, 1)[0] < native["swap_probability"]
    frame_indices = np.stack([np.where(swapped, later, earlier), np.where(swapped, earlier, later)], axis=1)
    return {"frame_indices": frame_indices, "delta_frames": delta, "swapped": swapped}


def _sample_crops(counters: SampleCounters, view: int, heights: np.ndarray, widths: np.ndarray, native: dict) -> np.ndarray:
    """(B, 4) int64 boxes (top, left, height, width): torchvision RandomResizedCrop.get_params."""
    batch = heights.shape[0]
    crop_heights = heights.copy()
    crop_widths = widths.copy()
    accepted = np.zeros(batch, dtype=bool)
    pending = np.arange(batch)
    for attempt in range(int(native["crop_attempts"])):
        if pending.size == 0:
            break
        scale_uniform, ratio_uniform = counters.take(pending).uniform_pair(STREAM_CROP_SHAPE + view, attempt)
        area = heights[pending].astype(np.float64) * widths[pending].astype(np.float64)
        target_area = area * _lerp(native["crop_scale_min"], native["crop_scale_max"], scale_uniform)
        aspect_ratio = portable_exp(_lerp(native["crop_log_ratio_min"], native["crop_log_ratio_max"], ratio_uniform))
        width = np.rint(np.sqrt(target_area * aspect_ratio))
        height = np.rint(np.sqrt(target_area / aspect_ratio))
        fits = (width > 0) & (width <= widths[pending]) & (height > 0) & (height <= heights[pending])
        done = pending[fits]
        crop_heights[done] = height[fits].astype(np.int64)
        crop_widths[done] = width[fits].astype(np.int64)
        accepted[done] = True
        pending = pending[~fits]

    top_uniform, left_uniform = counters.uniform_pair(STREAM_CROP_POSITION + view, 0)
    tops = uniform_index(top_uniform, np.maximum(heights - crop_heights, 0))
    lefts = uniform_index(left_uniform, np.maximum(widths - crop_widths, 0))

    # Centre-crop fallback with the aspect ratio clamped to the allowed range (never empty).
    fallback = pending
    if fallback.size:
        fallback_heights, fallback_widths = heights[fallback].copy(), widths[fallback].copy()
        in_ratio = fallback_widths.astype(np.float64) / fallback_heights.astype(np.float64)
        narrow = in_ratio < native["crop_ratio_min"]
        wide = ~narrow & (in_ratio > native["crop_ratio_max"])
        fallback_heights[narrow] = np.maximum(
            1, np.rint(fallback_widths[narrow].astype(np.float64) / native["crop_ratio_min"]).astype(np.int64))
        fallback_widths[wide] = np.maximum(
            1, np.rint(fallback_heights[wide].astype(np.float64) * native["crop_ratio_max"]).astype(np.int64))
        crop_heights[fallback], crop_widths[fallback] = fallback_heights, fallback_widths
        tops[fallback] = (heights[fallback] - fallback_heights) // 2
        lefts[fallback] = (widths[fallback] - fallback_widths) // 2
    return np.stack([tops, lefts, crop_heights, crop_widths], axis=1)


def _sample_appearance(counters: SampleCounters, view: int, native: dict) -> Dict[str, np.ndarray]:
    """Flip, colour jitter (factors, hue, order), grayscale, blur sigma and solarize: (B,) each."""
    stream = STREAM_APPEARANCE + view
    flip_uniform, jitter_uniform = counters.uniform_pair(stream, 0)
    gray_uniform, blur_uniform = counters.uniform_pair(stream, 1)
    solarize_uniform, sigma_uniform = counters.uniform_pair(stream, 2)
    brightness_uniform, contrast_uniform = counters.uniform_pair(stream, 3)
    saturation_uniform, hue_uniform = counters.uniform_pair(stream, 4)
    step3_uniform, step2_uniform = counters.uniform_pair(stream, 5)
    step1_uniform, _ = counters.uniform_pair(stream, 6)

    def chance(name: str) -> float:
        return native[name][view]

    jitter = jitter_uniform < chance("jitter_probability")
    blur = blur_uniform < chance("blur_probability")

    def factor(name: str, uniform: np.ndarray, identity: float) -> np.ndarray:
        drawn = _lerp(native[f"{name}_min"], native[f"{name}_max"], uniform).astype(np.float32)
        return np.where(jitter, drawn, np.float32(identity))

    # Fisher-Yates over the four operations: steps i = 3, 2, 1 swap order[i] with order[j <= i].
    rows = np.arange(jitter.shape[0])
    order = np.tile(np.arange(4, dtype=np.int8), (jitter.shape[0], 1))
    for last, uniform in ((3, step3_uniform), (2, step2_uniform), (1, step1_uniform)):
        other = uniform_index(uniform, last)
        at_last, at_other = order[:, last].copy(), order[rows, other].copy()
        order[:, last] = at_other
        order[rows, other] = at_last
    order = np.where(jitter[:, None], order, np.arange(4, dtype=np.int8))

    sigma = _lerp(native["blur_sigma_min"], native["blur_sigma_max"], sigma_uniform).astype(np.float32)
    return {
        "flips": flip_uniform < chance("flip_probability"),
        "jitter_applied": jitter,
        "brightness": factor("brightness", brightness_uniform, 1.0),
        "contrast": factor("contrast", contrast_uniform, 1.0),
        "saturation": factor("saturation", saturation_uniform, 1.0),
        "hue": factor("hue", hue_uniform, 0.0),
        "jitter_order": order.astype(np.int8),
        "grayscale": gray_uniform < chance("grayscale_probability"),
        "blur_sigma": np.where(blur, sigma, np.float32(0.0)),
        "solarize": solarize_uniform < chance("solarize_probability"),
    }
