"""The built-in demo: generate the synthetic videos, pretrain VITO and its ablations, evaluate, report.

    run_demo(DemoSettings(out_dir="vito-demo", minutes=15))   # what `vito-fast demo` runs

Variants (each pretrained for the same number of steps, from the same initialisation):

- ``random``   the untrained model (a step-0 checkpoint): the floor every method must clear;
- ``vito``     the demo preset: frame pairs Δt apart (uniform in the configured range), attention pools;
- ``avgpool``  the same with average pooling instead of attention (``model.pooling=average``);
- ``dt0``      the same with Δt = 0: both views from one frame (image-level BYOL-style augmentation).

Evaluations on the synthetic data (frozen features, see ``vito_fast.eval``): kNN and linear-probe
top-1 accuracy on frames, cross-validated over folds of whole videos; label-propagation J of the
first-frame object masks; and, per scale, the share of the attention on the object masks and the
IoU of its half-mass region with them, next to a centred-Gaussian baseline. Every figure carries a
standard error over videos. The step count is chosen from the time budget: a timed training step
of the model on random inputs, times a measured factor for data loading and evaluation.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from vito_fast.eval.features import extract_feature_maps, extract_features, group_folds, load_manifest_frames
from vito_fast.eval.knn import knn_predict
from vito_fast.eval.linear import train_linear_probe
from vito_fast.eval.propagate import propagate_labels, region_similarity
from vito_fast.eval.viz import attention_mask_iou, attention_mass_on_masks, centred_gaussian_attention
from vito_fast.synthetic.builtin import BuiltinVideos


# LARS moves each layer by about lr · trust_coefficient of its norm per step: with the preset's
# η = 1e-3 and lr = 0.0625 a 50-step run changes the weights by 0.3% and learns nothing measurable.
# Measured here (40 steps, 4 videos): propagation J 0.35 → 0.47 and linear 22% → 47% with these;
# base_lr 16 overshoots (kNN below chance). The user's overrides come after and win.
SHORT_RUN_OPTIMISER = ["optim.trust_coefficient=0.02", "optim.base_lr=4.0"]


@dataclass
class DemoSettings:
    out_dir: str = "vito-demo"
    minutes: float = 15.0  # wall-clock budget for the whole demo
    # the built-in videos (vito_fast.synthetic.builtin holds the defaults and why they are so)
    videos_per_class: int = BuiltinVideos.videos_per_class
    num_frames: int = BuiltinVideos.num_frames
    num_backgrounds: int = BuiltinVideos.num_backgrounds
    camera_speed: Tuple[float, float] = BuiltinVideos.camera_speed
    light_change: float = BuiltinVideos.light_change
    object_scale: float = BuiltinVideos.object_scale
    eval_frames_per_clip: int = 8
    steps: Optional[int] = None  # pretraining steps per variant; None: from the time budget
    max_steps: int = 2000
    overrides: List[str] = field(default_factory=list)  # extra config overrides for every variant
    eval_videos: int = 16  # videos used for propagation and the attention scores, spread over the classes
    seed: int = 0
    progress: bool = True

    def data_settings(self) -> Dict[str, object]:
        """The ``generate_dataset`` keywords of the built-in videos (``dataset.json`` keeps them too)."""
        return BuiltinVideos(videos_per_class=self.videos_per_class, num_frames=self.num_frames,
                             num_backgrounds=self.num_backgrounds, camera_speed=tuple(self.camera_speed),
                             light_change=self.light_change, object_scale=self.object_scale,
                             seed=self.seed).generate_kwargs()


# Config overrides of each trained variant (the random-init floor is not trained).
VARIANTS: Dict[str, List[str]] = {
    "vito": [],
    "avgpool": ["model.pooling=average"],
    "dt0": ["data.views.delta_seconds=[0.0,0.0]"],
}


def seconds_per_step(config) -> float:
    """Time of one training step (forward, backward, EMA) of the config's model on random inputs."""
    from vito_fast.model.vito import VITO

    device = "cuda" if config.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = VITO.from_config(config.model).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    views = torch.randn(2, config.data.batch_size, 3, config.data.image_size, config.data.image_size, device=device)
    timings = []
    for _ in range(8):  # the first two warm up; the median of the rest (single timings vary by 20%)
        started = time.perf_counter()
        loss, _ = model(views[0], views[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_target(0.99)
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    return float(np.median(timings[2:]))


def write_untrained_run(config, run_dir: Path) -> None:
    """A step-0 checkpoint of the model as `train` initialises it (seed ``train.seed``)."""
    from vito_fast.model.vito import VITO
    from vito_fast.train.config import to_dict

    torch.manual_seed(config.train.seed)
    model = VITO.from_config(config.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "step": 0, "config": to_dict(config),
                "model": {key: value for key, value in model.state_dict().items() if not key.startswith("target.")},
                "target": model.target.state_dict()}, run_dir / "checkpoint.pt")


def evaluation_videos(num_videos: int, count: int) -> List[int]:
    """``count`` video indices spread evenly over the data set (its videos are ordered class by class)."""
    return sorted({int(index) for index in np.linspace(0, num_videos - 1, min(count, num_videos)).round()})


def _standard_error(values: List[float]) -> float:
    """Standard error of the mean of per-video values (0 for fewer than two)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def cross_validated_accuracy(features: torch.Tensor, labels: np.ndarray, groups: np.ndarray, probe: str, *,
                             folds: int = 4, seed: int = 0) -> Tuple[float, float]:
    """(accuracy, its standard error) of a kNN or linear probe, cross-validated over folds of whole clips.

    Every clip is tested once, by a probe fitted on the other folds. Frames of a clip are not
    independent, so the standard error is that of the mean of the per-clip accuracies.
    """
    targets = torch.from_numpy(labels)
    correct = np.zeros(len(labels), bool)
    for train_indices, test_indices in group_folds(labels, groups, folds=folds, seed=seed):
        train_features, test_features = features[train_indices], features[test_indices]
        if probe == "knn":
            scores = knn_predict(train_features, targets[train_indices], test_features, k=10,
                                 num_classes=int(labels.max()) + 1)
        else:
            scores = train_linear_probe(train_features, targets[train_indices],
                                        num_classes=int(labels.max()) + 1).predict(test_features)
        correct[test_indices] = (scores.argmax(dim=1) == targets[test_indices]).numpy()
    per_clip = np.array([correct[groups == group].mean() for group in np.unique(groups)])
    return float(correct.mean()), _standard_error(list(per_clip))


def evaluate_run(run_dir: Path, frames, clips: Dict[int, Tuple[np.ndarray, np.ndarray]], settings: DemoSettings
                 ) -> Tuple[Dict[str, object], Dict]:
    """(kNN, linear probe, propagation J and attention scores of one run; {video: (frames, attention)} of 2 videos).

    ``frames``: the labelled frames of the probes; ``clips``: {video index: (frames, instance masks)}
    of the videos that score propagation and attention.
    """
    from vito_fast.eval.features import attention_of_frames
    from vito_fast.eval.encoder import load_encoder

    encoder = load_encoder(run_dir)  # the last stage's maps, average-pooled
    features = extract_features(encoder, frames.images)
    result: Dict[str, object] = {}
    for probe in ("knn", "linear"):
        result[probe], result[f"{probe}_se"] = cross_validated_accuracy(features, frames.labels, frames.groups, probe,
                                                                        seed=settings.seed)
    maps_encoder = load_encoder(run_dir, stages=("layer3",))
    pools_by_attention = maps_encoder.run_config["model"].get("pooling", "attention") == "attention"
    attention_encoder = load_encoder(run_dir, pooling="attention") if pools_by_attention else None
    # attention at twice the training size: the pools are 1x1 convolutions, and finer maps cut finer masks
    attention_size = 2 * int(maps_encoder.run_config["data"]["image_size"])
    jaccard, attention_iou, attention_mass, examples = [], {}, {}, {}
    for position, (index, (clip, masks)) in enumerate(clips.items()):
        height, width = clip.shape[1:3]
        maps = extract_feature_maps(maps_encoder, clip, image_size=(2 * height, 2 * width))
        jaccard.append(region_similarity(propagate_labels(maps, masks[0]), masks)["J"])
        if attention_encoder is None:
            continue
        attention = attention_of_frames(attention_encoder, clip, attention_size)
        for stage, stage_attention in attention.items():
            attention_iou.setdefault(stage, []).append(attention_mask_iou(stage_attention, masks > 0))
            attention_mass.setdefault(stage, []).append(attention_mass_on_masks(stage_attention, masks > 0))
        if position < 2:
            examples[index] = (clip, attention)
    result["propagation_J"] = float(np.mean(jaccard))
    result["propagation_J_se"] = _standard_error(jaccard)
    for key, per_stage in (("attention_iou", attention_iou), ("attention_mass", attention_mass)):
        result[key] = {stage: float(np.mean(values)) for stage, values in per_stage.items()}
        result[f"{key}_se"] = {stage: _standard_error(values) for stage, values in per_stage.items()}
    return result, examples


def run_demo(settings: DemoSettings) -> Dict[str, object]:
    """Run everything and write OUT/report.md, OUT/results.json and the PNGs; returns the results."""
    from vito_fast.synthetic.videos import SyntheticDataset, generate_dataset
    from vito_fast.train.config import load_config
    from vito_fast.train.loop import train

    started = time.perf_counter()
    deadline = started + 60 * settings.minutes
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # 1. Data: the built-in videos (reused when a previous demo left the same settings).
    data_root = out / "data"
    wanted = settings.data_settings()
    index_path = data_root / "dataset.json"
    previous = json.loads(index_path.read_text())["settings"] if index_path.is_file() else {}
    if all(previous.get(key) == (list(value) if isinstance(value, tuple) else value) for key, value in wanted.items()):
        dataset = SyntheticDataset.open(data_root)
    else:
        dataset = generate_dataset(data_root, **wanted, progress=settings.progress)
    clips = {index: (dataset.load_frames(index), dataset.load_masks(index))
             for index in evaluation_videos(len(dataset.videos), settings.eval_videos)}
    frames = load_manifest_frames(dataset.manifest_path, frames_per_clip=min(settings.eval_frames_per_clip,
                                                                             settings.num_frames),
                                  class_names=dataset.class_names)
    # 2. Variants and the step budget.
    base = ["data.path=" + str(dataset.manifest_path), "train.image_every=0",
            f"train.progress={str(settings.progress).lower()}", *SHORT_RUN_OPTIMISER, *settings.overrides]
    probe_config = load_config(preset="demo", overrides=base)
    estimate = seconds_per_step(probe_config)
    if settings.steps is None:
        evaluation_reserve = 20.0 * (len(VARIANTS) + 1)
        budget = max(0.0, deadline - time.perf_counter() - evaluation_reserve) / len(VARIANTS)
        # data loading, evaluation and a busy machine add to the model-only estimate: measured on the
        # 2-core CPU, 0.42-0.45 s a step per variant all included, 1.7-2.1x single estimates (then the
        # fastest of two timings) of 0.21-0.25 s, 1.9x the median of six (0.23 s); 2.0x leaves a minute spare
        steps = int(np.clip(budget / (2.0 * estimate), 3, settings.max_steps))
    else:
        steps = settings.steps
    base += [f"train.steps={steps}", f"train.checkpoint_every={steps}", f"optim.warmup_steps={max(1, steps // 10)}"]
    # 3. Pretraining, then evaluation of every variant.
    results: Dict[str, Dict[str, object]] = {}
    losses: Dict[str, List[float]] = {}
    examples = {}
    random_config = load_config(preset="demo", overrides=base)
    write_untrained_run(random_config, out / "runs" / "random")
    results["random"], examples["random"] = evaluate_run(out / "runs" / "random", frames, clips, settings)
    results["random"].update(steps=0, final_loss=None)
    for name, overrides in VARIANTS.items():
        config = load_config(preset="demo", overrides=base + overrides)
        run_dir = out / "runs" / name
        train_started = time.perf_counter()
        outcome = train(config, run_dir)
        losses[name] = outcome.losses
        results[name], examples[name] = evaluate_run(run_dir, frames, clips, settings)
        results[name].update(steps=outcome.step, final_loss=outcome.losses[-1] if outcome.losses else None,
                             train_seconds=round(time.perf_counter() - train_started, 1))
    masks = [instances > 0 for _, instances in clips.values()]
    gaussians = [centred_gaussian_attention(len(mask), 8, 8) for mask in masks]
    baseline = float(np.mean([attention_mask_iou(gaussian, mask) for gaussian, mask in zip(gaussians, masks)]))
    baseline_mass = float(np.mean([attention_mass_on_masks(gaussian, mask) for gaussian, mask in zip(gaussians, masks)]))
    summary = {"settings": dataclasses.asdict(settings), "steps": steps, "estimated_seconds_per_step": estimate,
               "config_overrides": base[1:],
               "variants": results,
               "centred_gaussian_attention_iou": baseline, "centred_gaussian_attention_mass": baseline_mass,
               "object_area_fraction": float(np.mean([mask.mean() for mask in masks])), "losses": losses,
               "seconds": round(time.perf_counter() - started, 1)}
    from vito_fast.demo_report import write_report

    write_report(out, summary, examples, dataset.class_names)
    return summary
