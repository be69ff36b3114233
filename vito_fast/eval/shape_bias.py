"""Shape bias of frozen features, measured on cue-conflict twins of the built-in videos.

Each built-in class joins a shape with a texture (disc + stripes, square + checker, ...). A
cue-conflict twin of a video shows the same scene, motion and masks, but its main object wears
another class's texture (``vito_fast.synthetic.videos.render_cue_conflict``). A probe fitted on
ordinary frames classifies the twins' frames; among its decisions that follow either cue::

    shape bias = shape decisions / (shape decisions + texture decisions)

(the measure of Geirhos et al. on stylised images, which human observers put near 0.96 and
ImageNet-trained CNNs near 0.2–0.3). Decisions for a third class count as neither.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np
import torch

from vito_fast.eval.features import LabelledImages
from vito_fast.eval.knn import knn_predict
from vito_fast.eval.linear import train_linear_probe

PathLike = Union[str, os.PathLike]


def cue_conflict_images(root: PathLike, video_indices: Sequence[int], *, frames_per_clip: int = 4
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (V·F, H, W, 3) uint8, shape labels, texture labels) of the twins of ``video_indices``
    of the built-in data set at ``root``, ``frames_per_clip`` frames spread over each clip."""
    from vito_fast.synthetic.videos import render_cue_conflict

    images, shapes, textures = [], [], []
    for index in video_indices:
        frames, shape, texture = render_cue_conflict(root, int(index))
        chosen = np.unique(np.linspace(0, len(frames) - 1, frames_per_clip).round().astype(int))
        images.append(frames[chosen])
        shapes += [shape] * len(chosen)
        textures += [texture] * len(chosen)
    return np.concatenate(images), np.asarray(shapes, np.int64), np.asarray(textures, np.int64)


def shape_bias(featurize: Callable[[np.ndarray], torch.Tensor], train: LabelledImages, conflict_images: np.ndarray,
               shape_labels: np.ndarray, texture_labels: np.ndarray, *, probe: str = "linear", k: int = 20,
               temperature: float = 0.07, seed: int = 0) -> Dict[str, float]:
    """Fit ``probe`` ("linear" or "knn") on ``train`` features, classify the cue-conflict images.

    Returns {"shape_bias", "shape", "texture", "other"} (shares of all decisions for the last three)
    and "decisions" (the number of images). ``shape_bias`` is NaN when no decision follows either cue.
    """
    if probe not in ("linear", "knn"):
        raise ValueError(f"shape_bias: probe must be 'linear' or 'knn', not {probe!r}")
    if not len(conflict_images) == len(shape_labels) == len(texture_labels):
        raise ValueError(f"shape_bias: {len(conflict_images)} images, {len(shape_labels)} shape labels and "
                         f"{len(texture_labels)} texture labels")
    if np.any(shape_labels == texture_labels):
        raise ValueError("shape_bias: a cue-conflict image needs different shape and texture classes")
    num_classes = len(train.class_names)
    train_features = featurize(train.images)
    train_labels = torch.from_numpy(train.labels).long()
    features = featurize(conflict_images)
    if probe == "linear":
        fitted = train_linear_probe(train_features, train_labels, num_classes=num_classes, seed=seed)
        predicted = fitted.predict(features).argmax(dim=1)
    else:
        predicted = knn_predict(train_features, train_labels, features, k=k, temperature=temperature,
                                num_classes=num_classes).argmax(dim=1)
    predicted = predicted.cpu().numpy()
    shape = float(np.mean(predicted == shape_labels))
    texture = float(np.mean(predicted == texture_labels))
    cued = shape + texture
    return {"shape_bias": shape / cued if cued > 0 else float("nan"), "shape": shape, "texture": texture,
            "other": 1.0 - cued, "decisions": int(len(predicted))}
