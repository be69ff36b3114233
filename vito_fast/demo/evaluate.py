"""The demo's evaluation of one pretrained run, kept per video so that claims get honest errors.

``evaluate_run(run_dir, data)`` scores one run on the built-in data (``demo.data.EvaluationData``):

- **kNN and linear probe** (k = 10, cosine; L-BFGS logistic regression) on the last stage's
  average-pooled features, cross-validated over folds of whole videos, so every video is tested by
  probes that never saw it; for runs that pool by attention also on the attention-pooled vectors.
- **robustness**: the fold's linear probe (fitted on clean frames) classifies ``robust_frames_per_clip``
  frames per video under each built-in corruption at severities 1–5 (``eval.robustness.corrupt``).
- **shape bias**: the fold's linear probe classifies the videos' cue-conflict twins (the shape of
  one class wearing another's texture, ``eval.shape_bias``); decisions for the shape or the texture
  are counted.
- **propagation J and attention on the objects** over the ``eval_videos`` clips.

Every score is kept as per-video counts (``VariantResult.per_video``, ``.per_clip``) next to its
total, because a claim compares two runs on the same videos: its standard error comes from resampling
the videos (``demo.metrics.paired_bootstrap``), which keeps the pairing and the frames of one video
together.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from vito_fast.demo.data import EvaluationData
from vito_fast.demo.metrics import standard_error
from vito_fast.demo.results import ClipScores, PerVideoCounts, RobustnessResult, VariantResult
from vito_fast.eval.features import extract_feature_maps, extract_features, group_folds
from vito_fast.eval.knn import knn_predict
from vito_fast.eval.linear import train_linear_probe
from vito_fast.eval.propagate import propagate_labels, region_similarity
from vito_fast.eval.robustness import CORRUPTIONS, SEVERITIES, corrupt
from vito_fast.eval.viz import attention_mask_iou, attention_mass_on_masks


def _fold_predictions(features: torch.Tensor, labels: np.ndarray, groups: np.ndarray, probe: str, seed: int
                      ) -> Tuple[np.ndarray, Dict[int, object]]:
    """(cross-validated predictions of every frame, {video: the linear probe that did not see it})."""
    targets = torch.from_numpy(labels)
    num_classes = int(labels.max()) + 1
    predicted = np.zeros(len(labels), np.int64)
    probe_of_video: Dict[int, object] = {}
    for train_indices, test_indices in group_folds(labels, groups, folds=4, seed=seed):
        if probe == "knn":
            scores = knn_predict(features[train_indices], targets[train_indices], features[test_indices], k=10,
                                 num_classes=num_classes)
        else:
            fitted = train_linear_probe(features[train_indices], targets[train_indices], num_classes=num_classes)
            scores = fitted.predict(features[test_indices])
            probe_of_video.update({int(video): fitted for video in np.unique(groups[test_indices])})
        predicted[test_indices] = scores.argmax(dim=1).numpy()
    return predicted, probe_of_video


def _per_video_sum(values: np.ndarray, groups: np.ndarray, videos: np.ndarray) -> np.ndarray:
    """Σ of ``values`` (N, ...) over the entries of each video, in the order of ``videos``: (V, ...)."""
    position = np.searchsorted(videos, groups)
    totals = np.zeros((len(videos),) + values.shape[1:], np.float64)
    np.add.at(totals, position, values)
    return totals


def _probe_scores(features: torch.Tensor, labels: np.ndarray, groups: np.ndarray, videos: np.ndarray, probe: str,
                  seed: int) -> Tuple[np.ndarray, Dict[int, object]]:
    """(frames of each video that the cross-validated probe gets right (V,), {video: the linear probe that
    did not see it})."""
    predicted, probe_of_video = _fold_predictions(features, labels, groups, probe, seed)
    return _per_video_sum((predicted == labels).astype(float), groups, videos), probe_of_video


def cross_validated_accuracy(features: torch.Tensor, labels: np.ndarray, groups: np.ndarray, probe: str, *,
                             seed: int = 0) -> Tuple[float, float]:
    """(accuracy, its standard error over videos) of a kNN or linear probe, 4-fold over whole videos."""
    videos = np.unique(groups)
    correct, _ = _probe_scores(features, labels, groups, videos, probe, seed)
    per_video = correct / _per_video_sum(np.ones(len(groups)), groups, videos)
    return float(correct.sum() / len(labels)), standard_error(list(per_video))


def _predict(probe_of_video: Dict[int, object], features: torch.Tensor, groups: np.ndarray) -> np.ndarray:
    """Class predicted for each row by the probe of its video's fold."""
    predicted = np.zeros(len(groups), np.int64)
    for video in np.unique(groups):
        rows = np.nonzero(groups == video)[0]
        predicted[rows] = probe_of_video[int(video)].predict(features[rows]).argmax(dim=1).numpy()
    return predicted


def _counts(values: np.ndarray) -> list:
    return np.asarray(values).tolist()


def evaluate_run(run_dir: Path, data: EvaluationData, *, seed: int = 0) -> Tuple[VariantResult, Dict]:
    """(scores of one run, {video: (frames, attention)} of 2 clips for the pictures); see the module doc.

    The result's ``steps``, ``final_loss``, ``train_seconds`` and ``run`` are the caller's to fill in.
    """
    from vito_fast.eval.encoder import load_encoder, stage_order
    from vito_fast.eval.features import attention_of_frames

    frames, videos = data.frames, data.videos
    encoder = load_encoder(run_dir)  # the last stage's maps, average-pooled
    featurize = lambda images: extract_features(encoder, images)  # noqa: E731
    features = featurize(frames.images)
    frames_per_video = _per_video_sum(np.ones(len(frames)), frames.groups, videos)
    # propagation on the first tapped stage's maps: layer3 of the ResNets, the earlier block of a ViT
    first_stage = stage_order(encoder.run_config["model"]["stages"])[0]
    maps_encoder = load_encoder(run_dir, stages=(first_stage,))
    pools_by_attention = maps_encoder.run_config["model"].get("pooling", "attention") == "attention"
    feature_sets = {"": features}
    if pools_by_attention:
        last_stage = encoder.stages[-1]
        pooled_encoder = load_encoder(run_dir, pooling="attention", stages=(last_stage,))
        feature_sets["_attention"] = extract_features(pooled_encoder, frames.images)
    correct: Dict[str, list] = {}
    accuracy: Dict[str, Tuple[float, float]] = {}  # probe -> (accuracy, its standard error over videos)
    probe_of_video = {}
    for suffix, feature_set in feature_sets.items():
        for probe in ("knn", "linear"):
            right, fitted = _probe_scores(feature_set, frames.labels, frames.groups, videos, probe, seed)
            correct[probe + suffix] = _counts(right)
            accuracy[probe + suffix] = (float(right.sum() / len(frames)),
                                        standard_error(list(right / frames_per_video)))
            if probe == "linear" and not suffix:
                probe_of_video = fitted
    robust_groups = frames.groups[data.robust]
    clean = _predict(probe_of_video, features[data.robust], robust_groups) == frames.labels[data.robust]
    corrupted = np.zeros((len(data.robust), len(CORRUPTIONS)), np.float64)
    accuracy_by_corruption = {}
    for position, corruption in enumerate(CORRUPTIONS):
        by_severity = {}
        for severity in SEVERITIES:
            images = corrupt(frames.images[data.robust], corruption, severity, seed=seed + severity)
            hits = _predict(probe_of_video, featurize(images), robust_groups) == frames.labels[data.robust]
            corrupted[:, position] += hits
            by_severity[severity] = float(hits.mean())
        accuracy_by_corruption[corruption] = by_severity
    counts = PerVideoCounts(
        frames=_counts(frames_per_video), correct=correct,
        robust_frames=_counts(_per_video_sum(np.ones(len(data.robust)), robust_groups, videos)),
        robust_clean_correct=_counts(_per_video_sum(clean.astype(float), robust_groups, videos)),
        robust_corrupted_correct=_counts(_per_video_sum(corrupted, robust_groups, videos)))
    robustness = RobustnessResult(clean=float(clean.mean()), by_corruption=accuracy_by_corruption,
                                  corrupted=float(corrupted.sum() / (len(data.robust) * len(CORRUPTIONS)
                                                                     * len(SEVERITIES))))
    if len(data.conflict_images):
        predicted = _predict(probe_of_video, featurize(data.conflict_images), data.conflict_groups)
        counts.shape_decisions = _counts(_per_video_sum((predicted == data.conflict_shapes).astype(float),
                                                        data.conflict_groups, videos))
        counts.texture_decisions = _counts(_per_video_sum((predicted == data.conflict_textures).astype(float),
                                                          data.conflict_groups, videos))
        counts.conflict_frames = _counts(_per_video_sum(np.ones(len(predicted)), data.conflict_groups, videos))
    # propagation and attention on the clips, at twice the training size (finer maps cut finer masks)
    attention_encoder = load_encoder(run_dir, pooling="attention") if pools_by_attention else None
    attention_size = 2 * int(maps_encoder.run_config["data"]["image_size"])
    per_clip = ClipScores()
    examples = {}
    for position, (index, (clip, masks)) in enumerate(data.clips.items()):
        height, width = clip.shape[1:3]
        maps = extract_feature_maps(maps_encoder, clip, image_size=(2 * height, 2 * width))
        per_clip.J.append(float(region_similarity(propagate_labels(maps, masks[0]), masks)["J"]))
        if attention_encoder is None:
            continue
        attention = attention_of_frames(attention_encoder, clip, attention_size)
        for stage, stage_attention in attention.items():
            per_clip.attention_iou.setdefault(stage, []).append(
                float(attention_mask_iou(stage_attention, masks > 0)))
            per_clip.attention_mass.setdefault(stage, []).append(
                float(attention_mass_on_masks(stage_attention, masks > 0)))
        if position < 2:
            examples[index] = (clip, attention)
    result = VariantResult(
        knn=accuracy["knn"][0], knn_se=accuracy["knn"][1], linear=accuracy["linear"][0],
        linear_se=accuracy["linear"][1],
        propagation_J=float(np.mean(per_clip.J)), propagation_J_se=standard_error(per_clip.J),
        per_video=counts, per_clip=per_clip, robustness=robustness,
        attention_iou={stage: float(np.mean(values)) for stage, values in per_clip.attention_iou.items()},
        attention_iou_se={stage: standard_error(values) for stage, values in per_clip.attention_iou.items()},
        attention_mass={stage: float(np.mean(values)) for stage, values in per_clip.attention_mass.items()},
        attention_mass_se={stage: standard_error(values) for stage, values in per_clip.attention_mass.items()})
    if pools_by_attention:
        result.knn_attention, result.knn_attention_se = accuracy["knn_attention"]
        result.linear_attention, result.linear_attention_se = accuracy["linear_attention"]
    return result, examples


def stages_of(results: Sequence[VariantResult]) -> List[str]:
    """The stages whose attention any of ``results`` scored."""
    return sorted({stage for result in results for stage in result.attention_mass})
