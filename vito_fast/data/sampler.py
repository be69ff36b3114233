"""The view sampler: which two frames each training sample uses and how each view is augmented.

``sample_view_params`` computes, for a whole batch, every random choice of the VITO/BYOL view
pipeline as a pure function of (seed, epoch, sample id, config): the same sample gets the same
parameters whatever batch, position, batch size or thread count it is computed in. The C++
extension (``csrc/sampler.cpp``) does the work when it is built; the NumPy reference
(:mod:`vito_fast.data._sampler_numpy`, same algorithm, same Philox counters) is the fallback.

Per sample: Δt in seconds from the config's distribution becomes round_half_even(Δt · fps)
frames, clamped to num_frames - 1; the earlier frame is uniform in [0, num_frames - 1 - Δ]; a
coin with ``swap_probability`` decides which recipe gets the later frame. Per view: a crop
exactly as torchvision's ``RandomResizedCrop.get_params`` (pixel sizes rounded half to even, the
centre-crop fallback never empty), then flip, ColorJitter (apply flag, factors, order),
grayscale, blur sigma and solarize with the recipe's probabilities.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

import numpy as np

from vito_fast import _cpp
from vito_fast.data._sampler_numpy import DELTA_DISTRIBUTIONS, sample_view_arrays

__all__ = ["ViewConfig", "ViewParams", "sample_view_params", "sample_view_params_numpy", "DELTA_DISTRIBUTIONS"]

PerRecipe = Tuple[float, float]  # (recipe of view 1, recipe of view 2)
_MAX_CROP_ATTEMPTS = 1000  # the counter layout leaves 16 bits for the attempt
_MAX_ABS_LOG_RATIO = 10.0  # where the portable exp of the crop ratio stays accurate


@dataclass(frozen=True)
class ViewConfig:
    """Every probability and range of the sampler; the defaults are the paper's (BYOL's) views.

    Per-recipe values are 2-tuples (view-1 recipe, view-2 recipe). ``delta_distribution`` is a key
    of ``DELTA_DISTRIBUTIONS`` ("uniform": Δt uniform in ``delta_seconds``; "fixed": Δt =
    ``delta_seconds[1]``, both ends equal). Crop values follow torchvision's RandomResizedCrop
    (scale = fraction of the frame's area, ratio = width / height), colour values its ColorJitter
    (brightness factor uniform in [max(0, 1 - brightness), 1 + brightness], hue shift in turns
    uniform in [-hue, hue]); ``blur_sigma`` is the Gaussian blur's sigma range in pixels of the
    output view; ``swap_probability`` is the chance that the view-1 recipe gets the later frame.
    Invalid values raise ValueError naming the field (scale must lie in (0, 1], ratios > 0,
    probabilities in [0, 1], hue in [0, 0.5], blur sigmas > 0 so that 0 can mean "no blur").
    """

    delta_distribution: str = "uniform"
    delta_seconds: Tuple[float, float] = (0.0, 2.5)
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    crop_attempts: int = 10
    flip_probability: PerRecipe = (0.5, 0.5)
    jitter_probability: PerRecipe = (0.8, 0.8)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_probability: PerRecipe = (0.2, 0.2)
    blur_probability: PerRecipe = (1.0, 0.1)
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    solarize_probability: PerRecipe = (0.0, 0.2)
    swap_probability: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.delta_distribution, str) or self.delta_distribution not in DELTA_DISTRIBUTIONS:
            raise ValueError(
                f"ViewConfig.delta_distribution: {self.delta_distribution!r} is not one of "
                f"{sorted(DELTA_DISTRIBUTIONS)}"
            )
        low, high = self._range("delta_seconds", minimum=0.0)
        if DELTA_DISTRIBUTIONS[self.delta_distribution].needs_equal_ends and low != high:
            raise ValueError(
                f"ViewConfig.delta_seconds: {self.delta_distribution!r} needs both ends equal, got {(low, high)}"
            )
        self._range("crop_scale", minimum=0.0, maximum=1.0, open_minimum=True)
        ratio_low, ratio_high = self._range("crop_ratio", minimum=0.0, open_minimum=True)
        if max(abs(math.log(ratio_low)), abs(math.log(ratio_high))) > _MAX_ABS_LOG_RATIO:
            raise ValueError(f"ViewConfig.crop_ratio: {(ratio_low, ratio_high)} is outside [e^-10, e^10]")
        attempts = self.crop_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, (int, np.integer)) or not 1 <= attempts <= _MAX_CROP_ATTEMPTS:
            raise ValueError(f"ViewConfig.crop_attempts: must be an integer in [1, {_MAX_CROP_ATTEMPTS}], got {attempts!r}")
        for name in ("flip_probability", "jitter_probability", "grayscale_probability",
                     "blur_probability", "solarize_probability"):
            self._pair(name, minimum=0.0, maximum=1.0)
        for name in ("brightness", "contrast", "saturation", "swap_probability", "hue"):
            maximum = {"swap_probability": 1.0, "hue": 0.5}.get(name, math.inf)
            value = self._number(name, getattr(self, name))
            if not 0.0 <= value <= maximum:
                raise ValueError(f"ViewConfig.{name}: must lie in [0, {maximum}], got {value!r}")
            object.__setattr__(self, name, value)
        self._range("blur_sigma", minimum=0.0, open_minimum=True)

    def _number(self, name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
            raise ValueError(f"ViewConfig.{name}: expected finite numbers, got {value!r}")
        return float(value)

    def _pair(self, name: str, minimum: float, maximum: float = math.inf, open_minimum: bool = False) -> Tuple[float, float]:
        value = getattr(self, name)
        try:
            pair = tuple(self._number(name, item) for item in value)
        except TypeError:
            raise ValueError(f"ViewConfig.{name}: expected a pair of numbers, got {value!r}") from None
        if len(pair) != 2:
            raise ValueError(f"ViewConfig.{name}: expected a pair of numbers, got {value!r}")
        for item in pair:
            if item < minimum or (open_minimum and item == minimum) or item > maximum:
                bounds = f"{'(' if open_minimum else '['}{minimum}, {maximum}]"
                raise ValueError(f"ViewConfig.{name}: values must lie in {bounds}, got {value!r}")
        object.__setattr__(self, name, pair)
        return pair

    def _range(self, name: str, **bounds: float) -> Tuple[float, float]:
        low, high = self._pair(name, **bounds)
        if low > high:
            raise ValueError(f"ViewConfig.{name}: the low end {low} is above the high end {high}")
        return low, high

    def native(self) -> Dict[str, object]:
        """The flat parameters that the C++ and NumPy samplers read (derived once, here)."""
        return {
            "delta_distribution": DELTA_DISTRIBUTIONS[self.delta_distribution].code,
            "delta_seconds_min": self.delta_seconds[0],
            "delta_seconds_max": self.delta_seconds[1],
            "crop_scale_min": self.crop_scale[0],
            "crop_scale_max": self.crop_scale[1],
            "crop_ratio_min": self.crop_ratio[0],
            "crop_ratio_max": self.crop_ratio[1],
            "crop_log_ratio_min": math.log(self.crop_ratio[0]),
            "crop_log_ratio_max": math.log(self.crop_ratio[1]),
            "crop_attempts": int(self.crop_attempts),
            "brightness_min": max(0.0, 1.0 - self.brightness),
            "brightness_max": 1.0 + self.brightness,
            "contrast_min": max(0.0, 1.0 - self.contrast),
            "contrast_max": 1.0 + self.contrast,
            "saturation_min": max(0.0, 1.0 - self.saturation),
            "saturation_max": 1.0 + self.saturation,
            "hue_min": -self.hue,
            "hue_max": self.hue,
            "blur_sigma_min": self.blur_sigma[0],
            "blur_sigma_max": self.blur_sigma[1],
            "swap_probability": self.swap_probability,
            "flip_probability": self.flip_probability,
            "jitter_probability": self.jitter_probability,
            "grayscale_probability": self.grayscale_probability,
            "blur_probability": self.blur_probability,
            "solarize_probability": self.solarize_probability,
        }


@dataclass(eq=False)  # arrays: compare fields with np.array_equal, not ==
class ViewParams:
    """Sampled view parameters for B samples; axis 1 of per-view fields is the recipe (0 = view 1).

    sample_ids      (B,) int64        the ids they were drawn for
    frame_indices   (B, 2) int64      frame of each view (after the swap), in [0, num_frames)
    delta_frames    (B,) int64        >= 0: the later frame minus the earlier one
    swapped         (B,) bool         True when the view-1 recipe got the later frame
    crop_boxes      (B, 2, 4) int64   top, left, height, width in pixels of the decoded frame
    flips           (B, 2) bool       horizontal flip
    jitter_applied  (B, 2) bool       colour jitter applied
    brightness      (B, 2) float32    multiplicative factor (1.0 when jitter is off)
    contrast        (B, 2) float32    multiplicative factor (1.0 when jitter is off)
    saturation      (B, 2) float32    multiplicative factor (1.0 when jitter is off)
    hue             (B, 2) float32    hue shift in turns, in [-0.5, 0.5] (0.0 when jitter is off)
    jitter_order    (B, 2, 4) int8    order of the jitter ops, a permutation of 0 brightness,
                                      1 contrast, 2 saturation, 3 hue ((0, 1, 2, 3) when off)
    grayscale       (B, 2) bool       convert to grayscale
    blur_sigma      (B, 2) float32    Gaussian blur sigma in pixels of the output view (0 = off)
    solarize        (B, 2) bool       solarize
    """

    sample_ids: np.ndarray
    frame_indices: np.ndarray
    delta_frames: np.ndarray
    swapped: np.ndarray
    crop_boxes: np.ndarray
    flips: np.ndarray
    jitter_applied: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    saturation: np.ndarray
    hue: np.ndarray
    jitter_order: np.ndarray
    grayscale: np.ndarray
    blur_sigma: np.ndarray
    solarize: np.ndarray

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])

    def to_dict(self) -> Dict[str, np.ndarray]:
        """Field name -> array (the arrays themselves, not copies)."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


def sample_view_params(
    sample_ids, num_frames, fps, frame_hw, *, seed: int, epoch: int,
    config: Optional[ViewConfig] = None, num_threads: Optional[int] = None,
) -> ViewParams:
    """View parameters for a batch: C++ when ``vito_fast._C`` is built, else the NumPy reference.

    sample_ids: (B,) non-negative integers. num_frames: (B,) integers >= 1 (or one for all).
    fps: (B,) frames per second > 0 (or one for all). frame_hw: (B, 2) heights and widths in
    pixels of the decoded frames (or one (2,) pair for all). seed in [0, 2^64), epoch in
    [0, 2^32). num_threads (C++ only): None = one thread per 4,096 samples (at most the core count);
    it never changes the result.
    Raises ValueError naming the argument when an input is invalid, or when a clip is too short
    for the smallest Δt of the config. Returns :class:`ViewParams`.
    """
    config = ViewConfig() if config is None else config
    inputs = _check_inputs(sample_ids, num_frames, fps, frame_hw, seed, epoch, config)
    if not _cpp.available():
        return ViewParams(sample_ids=inputs[0], **sample_view_arrays(*inputs, config.native()))
    sample_native = _cpp.require("sample_view_params")
    threads = 0 if num_threads is None else int(num_threads)
    return ViewParams(sample_ids=inputs[0], **sample_native(*inputs, config.native(), threads))


def sample_view_params_numpy(
    sample_ids, num_frames, fps, frame_hw, *, seed: int, epoch: int, config: Optional[ViewConfig] = None,
) -> ViewParams:
    """Same as :func:`sample_view_params` (same arguments, same result), always in NumPy."""
    config = ViewConfig() if config is None else config
    inputs = _check_inputs(sample_ids, num_frames, fps, frame_hw, seed, epoch, config)
    return ViewParams(sample_ids=inputs[0], **sample_view_arrays(*inputs, config.native()))


def _integers(name: str, values, shape_text: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"sample_view_params: {name} must hold integers {shape_text}, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise ValueError(f"sample_view_params: {name} must hold integers, got {array[bad].flat[0]!r}")
    return np.asarray(array, dtype=np.int64)


def _per_sample(name: str, array: np.ndarray, batch: int, row_shape: Tuple[int, ...] = ()) -> np.ndarray:
    """Broadcast one value for all samples, or check there is one per sample."""
    if array.shape == row_shape:
        return np.ascontiguousarray(np.broadcast_to(array, (batch,) + row_shape))
    if array.shape != (batch,) + row_shape:
        expected = (batch,) + row_shape
        raise ValueError(
            f"sample_view_params: {name} has shape {array.shape} but sample_ids has {batch} entries "
            f"(expected {expected} or {row_shape or 'a scalar'})"
        )
    return np.ascontiguousarray(array)


def _first_bad(name: str, bad: np.ndarray, values: np.ndarray, sample_ids: np.ndarray, rule: str) -> None:
    if bad.any():
        position = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise ValueError(
            f"sample_view_params: {name} must be {rule}, got {values[position].tolist()!r} "
            f"for sample id {int(sample_ids[position])} (position {position})"
        )


def _check_inputs(sample_ids, num_frames, fps, frame_hw, seed, epoch, config):
    """Validate once for both paths: C-contiguous (ids, num_frames, fps, frame_hw), int seed, int epoch."""
    if not isinstance(config, ViewConfig):
        raise ValueError(f"sample_view_params: config must be a ViewConfig, got {type(config).__name__}")
    for name, value, limit in (("seed", seed, 2**64), ("epoch", epoch, 2**32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < limit:
            raise ValueError(f"sample_view_params: {name} must be an integer in [0, 2^{limit.bit_length() - 1}), got {value!r}")
    ids = _integers("sample_ids", sample_ids, "(B,)")
    if ids.ndim != 1:
        raise ValueError(f"sample_view_params: sample_ids must be 1-D (B,), got shape {ids.shape}")
    ids = np.array(ids, dtype=np.int64, order="C", copy=True)  # ViewParams keeps it: never the caller's
    batch = ids.shape[0]
    if (ids < 0).any():
        position = int(np.flatnonzero(ids < 0)[0])
        raise ValueError(f"sample_view_params: sample_ids must be >= 0, got {int(ids[position])} at position {position}")
    frames = _per_sample("num_frames", _integers("num_frames", num_frames, "(B,)"), batch)
    _first_bad("num_frames", frames < 1, frames, ids, ">= 1")
    rates = np.asarray(fps)
    if not (np.issubdtype(rates.dtype, np.integer) or np.issubdtype(rates.dtype, np.floating)) or rates.dtype == bool:
        raise ValueError(f"sample_view_params: fps must hold numbers, got dtype {rates.dtype}")
    rates = _per_sample("fps", np.asarray(rates, dtype=np.float64), batch)
    _first_bad("fps", ~(np.isfinite(rates) & (rates > 0)), rates, ids, "finite and > 0")
    sizes = _integers("frame_hw", frame_hw, "(B, 2)")
    if sizes.ndim not in (1, 2) or sizes.shape[-1] != 2:
        raise ValueError(f"sample_view_params: frame_hw must have shape (B, 2) (height, width), got {sizes.shape}")
    sizes = _per_sample("frame_hw", sizes, batch, (2,))
    _first_bad("frame_hw", sizes < 1, sizes, ids, ">= 1 (height, width)")
    # The smallest Δt of the config must fit in every clip; larger ones are clamped.
    shortest = np.rint(config.delta_seconds[0] * rates)
    too_short = shortest > frames - 1
    if too_short.any():
        position = int(np.flatnonzero(too_short)[0])
        raise ValueError(
            f"sample_view_params: num_frames={int(frames[position])} at fps={float(rates[position])} "
            f"(sample id {int(ids[position])}, position {position}) is too short for the smallest Δt of "
            f"the config: delta_seconds[0]={config.delta_seconds[0]} s = {int(shortest[position])} frames"
        )
    return ids, frames, rates, sizes, int(seed), int(epoch)
