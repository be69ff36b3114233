"""Metrics of a run's per-video counts under bootstrap weights, and the paired bootstrap the claims use.

A metric maps (a run's ``VariantResult``, weights (draws, V)) to (draws,) values; weights of ones give
the run's own figure. Ratios of weighted sums: a video drawn twice counts twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from vito_fast.demo.results import GaussianAttention, VariantResult
from vito_fast.eval.robustness import SEVERITIES, kept_above_chance

Scored = Union[VariantResult, GaussianAttention]
Metric = Callable[[Scored, np.ndarray], np.ndarray]


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of per-video (or per-seed) values (0 for fewer than two)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def _weighted(counts: Sequence, weights: np.ndarray) -> np.ndarray:
    return weights @ np.asarray(counts, np.float64)


def accuracy_metric(probe: str) -> Metric:
    """Share of frames a probe gets right: ``probe`` is "knn", "linear", "knn_attention", ..."""
    def metric(result: VariantResult, weights: np.ndarray) -> np.ndarray:
        return _weighted(result.per_video.correct[probe], weights) / _weighted(result.per_video.frames, weights)
    return metric


def corrupted_errors(result: VariantResult, weights: np.ndarray) -> np.ndarray:
    """(draws, corruptions) error rates over the severities 1–5 of each corruption."""
    counts = _weighted(result.per_video.robust_corrupted_correct, weights)  # (draws, C)
    frames = _weighted(result.per_video.robust_frames, weights)[:, None] * len(SEVERITIES)
    return 1.0 - counts / frames


def mean_corruption_error(baseline: VariantResult) -> Metric:
    """ImageNet-C's mCE with ``baseline`` (the random-init run) in AlexNet's place: the mean over
    corruptions of Σ_severity error / Σ_severity error of the baseline (lower: more robust; ~1 at chance)."""
    def metric(result: VariantResult, weights: np.ndarray) -> np.ndarray:
        return (corrupted_errors(result, weights) / corrupted_errors(baseline, weights)).mean(axis=1)
    return metric


def shape_bias_metric(result: VariantResult, weights: np.ndarray) -> np.ndarray:
    """Shape decisions / (shape + texture decisions) on the cue-conflict twins."""
    shape = _weighted(result.per_video.shape_decisions, weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        return shape / (shape + _weighted(result.per_video.texture_decisions, weights))


def attention_mass_metric(stage: str) -> Metric:
    """Mean over the evaluation clips of the share of a stage's attention on the objects."""
    def metric(result: Scored, weights: np.ndarray) -> np.ndarray:
        return _weighted(result.per_clip.attention_mass[stage], weights) / weights.sum(axis=1)
    return metric


def bootstrap_weights(count: int, draws: int, seed: int) -> np.ndarray:
    """(draws, count) multinomial weights: how often each of ``count`` units is drawn, with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(count, np.full(count, 1.0 / count), size=draws).astype(np.float64)


def paired_bootstrap(metric_a: Metric, result_a: Scored, metric_b: Metric, result_b: Scored, count: int, *,
                     draws: int = 2000, seed: int = 0) -> Tuple[float, float, float]:
    """(metric of a, metric of b, standard error of a − b) resampling the same ``count`` units for both."""
    ones = np.ones((1, count))
    first, second = float(metric_a(result_a, ones)[0]), float(metric_b(result_b, ones)[0])
    weights = bootstrap_weights(count, draws, seed)
    differences = metric_a(result_a, weights) - metric_b(result_b, weights)
    differences = differences[np.isfinite(differences)]
    error = float(np.std(differences, ddof=1)) if len(differences) > 1 else float("nan")
    return first, second, error


def point(metric: Metric, result: Scored, count: int) -> float:
    """The metric of the run itself (every unit once)."""
    return float(metric(result, np.ones((1, count)))[0])


@dataclass
class RobustnessFigures:
    """A run's robustness and shape-bias figures for the report's table (None where not measured)."""

    mce: Optional[float] = None  # mean corruption error against the random-init run
    retained: Optional[float] = None  # corrupted accuracy above chance / clean accuracy above chance
    shape_bias: Optional[float] = None
    cued: Optional[float] = None  # share of cue-conflict decisions that follow the shape or the texture


def robustness_figures(result: VariantResult, random_init: VariantResult, num_classes: int) -> RobustnessFigures:
    """mCE (against ``random_init``), retained share above chance and shape bias of one run."""
    counts, figures = result.per_video, RobustnessFigures()
    if counts.robust_corrupted_correct is not None:
        figures.mce = point(mean_corruption_error(random_init), result, counts.videos)
        figures.retained = kept_above_chance(result.robustness.clean, result.robustness.corrupted, num_classes)
    if counts.shape_decisions is not None:
        figures.shape_bias = point(shape_bias_metric, result, counts.videos)
        figures.cued = float((np.sum(counts.shape_decisions) + np.sum(counts.texture_decisions))
                             / np.sum(counts.conflict_frames))
    return figures
