"""The demo's evaluation of one pretrained run, kept per video so that claims get honest errors.

``evaluate_run(run_dir, data, settings)`` scores one run on the built-in data (``EvaluationData``):

- **kNN and linear probe** (k = 10, cosine; L-BFGS logistic regression) on the last stage's
  average-pooled features, cross-validated over folds of whole videos, so every video is tested by
  probes that never saw it; for runs that pool by attention also on the attention-pooled vectors.
- **robustness**: the fold's linear probe (fitted on clean frames) classifies ``robust_frames_per_clip``
  frames per video under each built-in corruption at severities 1–5 (``eval.robustness.corrupt``).
- **shape bias**: the fold's linear probe classifies the videos' cue-conflict twins (the shape of
  one class wearing another's texture, ``eval.shape_bias``); decisions for the shape or the texture
  are counted.
- **propagation J and attention on the objects** over the ``eval_videos`` clips.

Every score is kept as per-video counts (``result["per_video"]``, ``result["per_clip"]``) next to
its total, because a claim compares two runs on the same videos: its standard error comes from
resampling the videos (``paired_bootstrap``), which keeps the pairing and the frames of one video
together. Metrics are functions of those counts and bootstrap weights (``METRICS``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from vito_fast.eval.features import LabelledImages, extract_feature_maps, extract_features, group_folds
from vito_fast.eval.knn import knn_predict
from vito_fast.eval.linear import train_linear_probe
from vito_fast.eval.propagate import propagate_labels, region_similarity
from vito_fast.eval.robustness import CORRUPTIONS, SEVERITIES, corrupt
from vito_fast.eval.viz import attention_mask_iou, attention_mass_on_masks


@dataclass
class EvaluationData:
    """What every run is scored on (built once per demo; see ``evaluation_data``)."""

    frames: LabelledImages  # probe frames, ``groups`` = video index
    clips: Dict[int, Tuple[np.ndarray, np.ndarray]]  # {video: (frames, instance masks)}: propagation, attention
    robust: np.ndarray  # indices into ``frames`` that are corrupted
    conflict_images: np.ndarray  # cue-conflict frames (N, H, W, 3) uint8
    conflict_shapes: np.ndarray  # (N,) class of the shape
    conflict_textures: np.ndarray  # (N,) class of the texture
    conflict_groups: np.ndarray  # (N,) video index of each cue-conflict frame

    @property
    def videos(self) -> np.ndarray:
        return np.unique(self.frames.groups)


def evaluation_videos(num_videos: int, count: int) -> List[int]:
    """``count`` video indices spread evenly over the data set (its videos are ordered class by class)."""
    return sorted({int(index) for index in np.linspace(0, num_videos - 1, min(count, num_videos)).round()})


def evaluation_data(dataset, frames: LabelledImages, *, eval_videos: int, robust_frames_per_clip: int = 4,
                    conflict_frames_per_clip: int = 4, progress: bool = False) -> EvaluationData:
    """The evaluation set of a built-in ``dataset`` (a ``SyntheticDataset``) and its probe ``frames``."""
    from tqdm import tqdm

    from vito_fast.eval.shape_bias import cue_conflict_images

    clips = {index: (dataset.load_frames(index), dataset.load_masks(index))
             for index in evaluation_videos(len(dataset.videos), eval_videos)}
    robust = []
    for video in np.unique(frames.groups):
        members = np.nonzero(frames.groups == video)[0]
        robust.extend(members[np.unique(np.linspace(0, len(members) - 1, robust_frames_per_clip).round().astype(int))])
    cue_cache = Path(dataset.root) / f"cue_conflict_{conflict_frames_per_clip}.npz"
    if cue_cache.is_file():
        stored = np.load(cue_cache)
        conflict = (stored["images"], stored["shapes"], stored["textures"], stored["groups"])
    else:
        parts = []
        for video in tqdm(range(len(dataset.videos)), desc="cue-conflict twins", unit="video", disable=not progress):
            images, shapes, textures = cue_conflict_images(dataset.root, [video],
                                                           frames_per_clip=conflict_frames_per_clip)
            parts.append((images, shapes, textures, np.full(len(images), video)))
        conflict = tuple(np.concatenate([part[i] for part in parts]) for i in range(4))
        np.savez(cue_cache, images=conflict[0], shapes=conflict[1], textures=conflict[2], groups=conflict[3])
    return EvaluationData(frames, clips, np.asarray(robust, np.int64), *conflict)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of per-video (or per-seed) values (0 for fewer than two)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


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


def evaluate_run(run_dir: Path, data: EvaluationData, *, seed: int = 0) -> Tuple[Dict[str, object], Dict]:
    """(scores of one run, {video: (frames, attention)} of 2 clips for the pictures); see the module doc."""
    from vito_fast.eval.encoder import load_encoder
    from vito_fast.eval.features import attention_of_frames

    frames, videos = data.frames, data.videos
    encoder = load_encoder(run_dir)  # the last stage's maps, average-pooled
    featurize = lambda images: extract_features(encoder, images)  # noqa: E731
    features = featurize(frames.images)
    per_video: Dict[str, object] = {"frames": _per_video_sum(np.ones(len(frames)), frames.groups, videos)}
    result: Dict[str, object] = {}
    maps_encoder = load_encoder(run_dir, stages=("layer3",))
    pools_by_attention = maps_encoder.run_config["model"].get("pooling", "attention") == "attention"
    probe_of_video = {}
    feature_sets = {"": features}
    if pools_by_attention:
        last_stage = encoder.stages[-1]
        pooled_encoder = load_encoder(run_dir, pooling="attention", stages=(last_stage,))
        feature_sets["_attention"] = extract_features(pooled_encoder, frames.images)
    for suffix, feature_set in feature_sets.items():
        for probe in ("knn", "linear"):
            correct, fitted = _probe_scores(feature_set, frames.labels, frames.groups, videos, probe, seed)
            per_video[f"{probe}{suffix}_correct"] = correct
            result[f"{probe}{suffix}"] = float(correct.sum() / len(frames))
            result[f"{probe}{suffix}_se"] = standard_error(list(correct / per_video["frames"]))
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
    per_video["robust_frames"] = _per_video_sum(np.ones(len(data.robust)), robust_groups, videos)
    per_video["robust_clean_correct"] = _per_video_sum(clean.astype(float), robust_groups, videos)
    per_video["robust_corrupted_correct"] = _per_video_sum(corrupted, robust_groups, videos)  # (V, corruptions)
    result["robustness"] = {"clean": float(clean.mean()), "by_corruption": accuracy_by_corruption,
                            "corrupted": float(corrupted.sum() / (len(data.robust) * len(CORRUPTIONS)
                                                                  * len(SEVERITIES)))}
    if len(data.conflict_images):
        predicted = _predict(probe_of_video, featurize(data.conflict_images), data.conflict_groups)
        per_video["shape_decisions"] = _per_video_sum((predicted == data.conflict_shapes).astype(float),
                                                      data.conflict_groups, videos)
        per_video["texture_decisions"] = _per_video_sum((predicted == data.conflict_textures).astype(float),
                                                        data.conflict_groups, videos)
        per_video["conflict_frames"] = _per_video_sum(np.ones(len(predicted)), data.conflict_groups, videos)
    # propagation and attention on the clips, at twice the training size (finer maps cut finer masks)
    attention_encoder = load_encoder(run_dir, pooling="attention") if pools_by_attention else None
    attention_size = 2 * int(maps_encoder.run_config["data"]["image_size"])
    per_clip: Dict[str, object] = {"J": []}
    examples = {}
    for position, (index, (clip, masks)) in enumerate(data.clips.items()):
        height, width = clip.shape[1:3]
        maps = extract_feature_maps(maps_encoder, clip, image_size=(2 * height, 2 * width))
        per_clip["J"].append(region_similarity(propagate_labels(maps, masks[0]), masks)["J"])
        if attention_encoder is None:
            continue
        attention = attention_of_frames(attention_encoder, clip, attention_size)
        for stage, stage_attention in attention.items():
            per_clip.setdefault(f"attention_iou_{stage}", []).append(attention_mask_iou(stage_attention, masks > 0))
            per_clip.setdefault(f"attention_mass_{stage}", []).append(
                attention_mass_on_masks(stage_attention, masks > 0))
        if position < 2:
            examples[index] = (clip, attention)
    result["propagation_J"] = float(np.mean(per_clip["J"]))
    result["propagation_J_se"] = standard_error(per_clip["J"])
    for key in ("attention_iou", "attention_mass"):
        stages = [name[len(key) + 1:] for name in per_clip if name.startswith(key)]
        result[key] = {stage: float(np.mean(per_clip[f"{key}_{stage}"])) for stage in stages}
        result[f"{key}_se"] = {stage: standard_error(per_clip[f"{key}_{stage}"]) for stage in stages}
    result["per_video"] = {key: np.asarray(value).tolist() for key, value in per_video.items()}
    result["per_clip"] = {key: [float(item) for item in value] for key, value in per_clip.items()}
    return result, examples


# ----------------------------------------------------------------------------- metrics of per-video counts
# Each metric maps (a run's result, bootstrap weights (draws, V)) to (draws,) values; weights of ones
# give the run's own figure. Ratios of weighted sums: a video drawn twice counts twice.

def _weighted(result: Dict, key: str, weights: np.ndarray, table: str = "per_video") -> np.ndarray:
    return weights @ np.asarray(result[table][key], np.float64)


def accuracy_metric(key: str) -> Callable[[Dict, np.ndarray], np.ndarray]:
    """Share of frames a probe gets right: ``key`` is "knn", "linear", "knn_attention", ..."""
    def metric(result: Dict, weights: np.ndarray) -> np.ndarray:
        return _weighted(result, f"{key}_correct", weights) / _weighted(result, "frames", weights)
    return metric


def corrupted_errors(result: Dict, weights: np.ndarray) -> np.ndarray:
    """(draws, corruptions) error rates over the severities 1–5 of each corruption."""
    counts = _weighted(result, "robust_corrupted_correct", weights)  # (draws, C)
    frames = _weighted(result, "robust_frames", weights)[:, None] * len(SEVERITIES)
    return 1.0 - counts / frames


def mean_corruption_error(baseline: Dict) -> Callable[[Dict, np.ndarray], np.ndarray]:
    """ImageNet-C's mCE with ``baseline`` (the random-init run) in AlexNet's place: the mean over
    corruptions of Σ_severity error / Σ_severity error of the baseline (lower: more robust; ~1 at chance)."""
    def metric(result: Dict, weights: np.ndarray) -> np.ndarray:
        return (corrupted_errors(result, weights) / corrupted_errors(baseline, weights)).mean(axis=1)
    return metric


def shape_bias_metric(result: Dict, weights: np.ndarray) -> np.ndarray:
    """Shape decisions / (shape + texture decisions) on the cue-conflict twins."""
    shape = _weighted(result, "shape_decisions", weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        return shape / (shape + _weighted(result, "texture_decisions", weights))


def clip_mean_metric(key: str) -> Callable[[Dict, np.ndarray], np.ndarray]:
    """Mean over the evaluation clips of a per-clip score ("J", "attention_mass_layer3", ...)."""
    def metric(result: Dict, weights: np.ndarray) -> np.ndarray:
        return _weighted(result, key, weights, "per_clip") / weights.sum(axis=1)
    return metric


def bootstrap_weights(count: int, draws: int, seed: int) -> np.ndarray:
    """(draws, count) multinomial weights: how often each of ``count`` units is drawn, with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(count, np.full(count, 1.0 / count), size=draws).astype(np.float64)


def paired_bootstrap(metric_a: Callable, result_a: Dict, metric_b: Callable, result_b: Dict, count: int, *,
                     draws: int = 2000, seed: int = 0) -> Tuple[float, float, float]:
    """(metric of a, metric of b, standard error of a − b) resampling the same ``count`` units for both."""
    ones = np.ones((1, count))
    first, second = float(metric_a(result_a, ones)[0]), float(metric_b(result_b, ones)[0])
    weights = bootstrap_weights(count, draws, seed)
    differences = metric_a(result_a, weights) - metric_b(result_b, weights)
    differences = differences[np.isfinite(differences)]
    error = float(np.std(differences, ddof=1)) if len(differences) > 1 else float("nan")
    return first, second, error


def point(metric: Callable, result: Dict, count: int) -> float:
    """The metric of the run itself (every unit once)."""
    return float(metric(result, np.ones((1, count)))[0])


def gaussian_attention_result(clips: Dict[int, Tuple[np.ndarray, np.ndarray]], stages: Sequence[str]) -> Dict:
    """A pseudo-run whose attention is a centred Gaussian on every clip (the baseline of the attention claim)."""
    from vito_fast.eval.viz import centred_gaussian_attention

    masks = [instances > 0 for _, instances in clips.values()]
    gaussians = [centred_gaussian_attention(len(mask), 8, 8) for mask in masks]
    mass = [attention_mass_on_masks(g, m) for g, m in zip(gaussians, masks)]
    iou = [attention_mask_iou(g, m) for g, m in zip(gaussians, masks)]
    per_clip: Dict[str, List[float]] = {}
    for stage in stages:  # the same scores under every stage's name
        per_clip[f"attention_mass_{stage}"], per_clip[f"attention_iou_{stage}"] = mass, iou
    return {"per_clip": per_clip}


def stages_of(results: Sequence[Dict]) -> List[str]:
    """The stages whose attention any of ``results`` scored."""
    return sorted({stage for result in results for stage in result.get("attention_mass", {})})

