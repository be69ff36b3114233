"""Robustness of a frozen-feature probe to synthetic corruptions (ImageNet-C style, 5 severities).

A probe (linear or kNN) is fitted on clean training features; its accuracy is then measured on
test images corrupted by each of ``CORRUPTIONS`` at severities 1..5 (0 is the clean image). The
relative drop of a corruption is ``(clean − mean over severities) / clean``.

Severity parameters follow ImageNet-C (Hendrycks & Dietterich 2019) where it defines them for
224-pixel images; blur widths are scaled to the image's short side (not below half, so that
small images blur visibly at severity 1).
"""
from __future__ import annotations

import io
from typing import Callable, Dict, Sequence

import numpy as np
import torch

from vito_fast.eval.features import LabelledImages
from vito_fast.eval.knn import knn_predict
from vito_fast.eval.linear import train_linear_probe

# severity 1..5 -> parameter of each corruption
NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)  # standard deviation on [0, 1] intensities
BLUR_SIGMA_AT_224 = (1.0, 2.0, 3.0, 4.0, 6.0)  # pixels at a short side of 224 (half of it at 112 or less)
JPEG_QUALITY = (25, 18, 15, 10, 7)
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # distance to the image mean is multiplied by it
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to [0, 1] intensities
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "jpeg", "contrast", "brightness")
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(images: np.ndarray, corruption: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """Corrupt uint8 images (N, H, W, 3) or (H, W, 3) at ``severity`` 0..5 (0 returns a copy)."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corrupt: corruption must be one of {CORRUPTIONS}, not {corruption!r}")
    if not 0 <= severity <= 5:
        raise ValueError(f"corrupt: severity must be in 0..5, not {severity}")
    if images.dtype != np.uint8 or images.shape[-1] != 3:
        raise ValueError(f"corrupt: expected uint8 RGB images (..., H, W, 3), not {images.dtype} {images.shape}")
    if severity == 0:
        return images.copy()
    single = images.ndim == 3
    batch = images[None] if single else images
    level = severity - 1
    pixels = batch.astype(np.float32) / 255.0
    if corruption == "gaussian_noise":
        rng = np.random.default_rng(seed)
        pixels = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * NOISE_SIGMA[level]
    elif corruption == "gaussian_blur":
        from scipy.ndimage import gaussian_filter

        # scaled with the image, but never below half the 224-pixel width: small images still blur
        sigma = BLUR_SIGMA_AT_224[level] * max(min(batch.shape[1:3]), 112) / 224
        pixels = gaussian_filter(pixels, sigma=(0, sigma, sigma, 0), mode="reflect")
    elif corruption == "jpeg":
        return _jpeg(batch, JPEG_QUALITY[level])[0] if single else _jpeg(batch, JPEG_QUALITY[level])
    elif corruption == "contrast":
        mean = pixels.mean(axis=(1, 2, 3), keepdims=True)
        pixels = (pixels - mean) * CONTRAST_FACTOR[level] + mean
    else:  # brightness
        pixels = pixels + BRIGHTNESS_SHIFT[level]
    result = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return result[0] if single else result


def _jpeg(batch: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    result = np.empty_like(batch)
    for index, image in enumerate(batch):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        result[index] = np.asarray(Image.open(buffer).convert("RGB"))
    return result


def robustness_evaluation(featurize: Callable[[np.ndarray], torch.Tensor], train: LabelledImages,
                          test: LabelledImages, *, probe: str = "linear", corruptions: Sequence[str] = CORRUPTIONS,
                          severities: Sequence[int] = SEVERITIES, k: int = 20, temperature: float = 0.07,
                          seed: int = 0) -> Dict[str, object]:
    """Accuracy of a probe fitted on clean ``train`` features, on clean and corrupted ``test`` images.

    ``featurize`` maps uint8 images (N, H, W, 3) to features (N, D) (for an encoder:
    ``lambda images: extract_features(encoder, images)``). Returns::

        {"probe": ..., "clean": acc, "corruptions": {name: {"severity": {1: acc, ...}, "mean": acc,
         "relative_drop": ...}}, "mean_corrupted": acc, "relative_drop": ..., "kept_above_chance": ...}
    """
    if probe not in ("linear", "knn"):
        raise ValueError(f"robustness_evaluation: probe must be 'linear' or 'knn', not {probe!r}")
    num_classes = len(train.class_names)
    train_features = featurize(train.images)
    train_labels = torch.from_numpy(train.labels).long()
    test_labels = torch.from_numpy(test.labels).long()
    if probe == "linear":
        fitted = train_linear_probe(train_features, train_labels, num_classes=num_classes, seed=seed)

        def accuracy_of(images: np.ndarray) -> float:
            return fitted.accuracy(featurize(images), test_labels)
    else:
        def accuracy_of(images: np.ndarray) -> float:
            scores = knn_predict(train_features, train_labels, featurize(images), k=k, temperature=temperature,
                                 num_classes=num_classes)
            return float((scores.argmax(dim=1) == test_labels).float().mean())

    clean = accuracy_of(test.images)
    results: Dict[str, object] = {"probe": probe, "clean": clean, "corruptions": {}}
    for corruption in corruptions:
        by_severity = {int(severity): accuracy_of(corrupt(test.images, corruption, severity, seed=seed))
                       for severity in severities}
        mean = float(np.mean(list(by_severity.values())))
        results["corruptions"][corruption] = {"severity": by_severity, "mean": mean,
                                              "relative_drop": _relative_drop(clean, mean)}
    means = [entry["mean"] for entry in results["corruptions"].values()]
    results["mean_corrupted"] = float(np.mean(means)) if means else clean
    results["relative_drop"] = _relative_drop(clean, results["mean_corrupted"])
    results["kept_above_chance"] = kept_above_chance(clean, results["mean_corrupted"], num_classes)
    return results


def kept_above_chance(clean: float, corrupted: float, num_classes: int, *, margin: float = 0.05):
    """(corrupted − chance) / (clean − chance): the share of the above-chance accuracy that survives the
    corruptions; None when clean accuracy is within ``margin`` of chance (nothing to lose, so the relative
    drop of such a model says nothing about its robustness)."""
    chance = 1.0 / num_classes
    return (corrupted - chance) / (clean - chance) if clean - chance >= margin else None


def _relative_drop(clean: float, corrupted: float) -> float:
    return (clean - corrupted) / clean if clean > 0 else 0.0
