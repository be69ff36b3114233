"""DAVIS-style label propagation with frozen features, and region similarity J.

The first frame's mask is propagated frame by frame (as in Jabri et al. 2020 and DINO): every
feature position of frame t takes the labels of its ``topk`` most similar positions among the
context frames (the first frame, with its true labels, and the ``num_previous`` frames before t,
with their propagated soft labels), weighted by ``softmax(cosine similarity / temperature)``::

    labels_t[p] = Σ_{q in top-k(p)} softmax_q(cos(f_t[p], f_ctx[q]) / τ) · labels_ctx[q]

optionally only over positions q within ``neighbourhood_radius`` feature cells of p. Labels live at
the feature resolution (the mask area-averaged into one-hot cells) and are upsampled bilinearly
to the frame size before the argmax. Region similarity J is the DAVIS measure: the IoU of each
object's predicted and true masks, averaged over frames (the given first frame excluded), then
over objects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

PathLike = Union[str, os.PathLike]


def propagate_labels(feature_maps: torch.Tensor, first_mask: np.ndarray, *, num_previous: int = 7, topk: int = 5,
                     temperature: float = 0.07, neighbourhood_radius: Optional[int] = None) -> np.ndarray:
    """Propagate ``first_mask`` (H, W) integer ids through a clip with feature maps (T, C, h, w).

    Returns predicted ids (T, H, W) with the dtype of ``first_mask``; frame 0 is ``first_mask``.
    """
    if feature_maps.dim() != 4:
        raise ValueError(f"propagate_labels: feature maps must be (T, C, h, w), not {tuple(feature_maps.shape)}")
    if first_mask.ndim != 2:
        raise ValueError(f"propagate_labels: the first mask must be (H, W), not {first_mask.shape}")
    num_frames, channels, height, width = feature_maps.shape
    ids, first_indices = np.unique(first_mask, return_inverse=True)
    one_hot = F.one_hot(torch.from_numpy(first_indices.reshape(first_mask.shape)).long(), len(ids))
    one_hot = one_hot.permute(2, 0, 1).float()[None]  # (1, L, H, W)
    # area average into feature cells: a cell half covered by an object is half that label
    first_labels = F.adaptive_avg_pool2d(one_hot, (height, width))[0].flatten(1).T  # (h*w, L)
    features = F.normalize(feature_maps.float().flatten(2).transpose(1, 2), dim=2)  # (T, h*w, C)
    allowed = None if neighbourhood_radius is None else _neighbourhood(height, width, neighbourhood_radius)
    soft_labels = [first_labels]
    predictions = np.empty((num_frames, *first_mask.shape), dtype=first_mask.dtype)
    predictions[0] = first_mask
    for time in range(1, num_frames):
        context = [0] + list(range(max(1, time - num_previous), time))
        context_features = torch.cat([features[index] for index in context])  # (n*h*w, C)
        context_labels = torch.cat([soft_labels[index] for index in context])  # (n*h*w, L)
        affinity = features[time] @ context_features.T  # (h*w, n*h*w)
        if allowed is not None:
            affinity = affinity.masked_fill(~allowed.repeat(1, len(context)), float("-inf"))
        top_affinity, top_index = affinity.topk(min(topk, affinity.shape[1]), dim=1)
        weights = torch.softmax(top_affinity / temperature, dim=1)  # (h*w, k)
        labels = (weights[..., None] * context_labels[top_index]).sum(dim=1)  # (h*w, L)
        soft_labels.append(labels)
        upsampled = F.interpolate(labels.T.reshape(1, len(ids), height, width), size=first_mask.shape,
                                  mode="bilinear", align_corners=False)[0]
        predictions[time] = ids[upsampled.argmax(dim=0).numpy()]
    return predictions


def _neighbourhood(height: int, width: int, radius: int) -> torch.Tensor:
    """(h*w, h*w) bool: positions within ``radius`` cells of each other (Chebyshev distance)."""
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows, columns = rows.flatten(), columns.flatten()
    return ((rows[:, None] - rows[None, :]).abs() <= radius) & ((columns[:, None] - columns[None, :]).abs() <= radius)


def region_similarity(predicted: np.ndarray, truth: np.ndarray, *, skip_first: bool = True) -> Dict[str, object]:
    """DAVIS J of predicted vs true ids (T, H, W): {"J": mean over objects, "per_object": {id: J}}.

    Objects are the non-zero ids of the first true frame; a frame where an object is absent from
    both masks counts as IoU 1.
    """
    if predicted.shape != truth.shape:
        raise ValueError(f"region_similarity: predicted {predicted.shape} and true {truth.shape} masks differ in shape")
    frames = slice(1, None) if skip_first and len(truth) > 1 else slice(None)
    per_object = {}
    for object_id in np.unique(truth[0]):
        if object_id == 0:
            continue
        predicted_object, true_object = predicted[frames] == object_id, truth[frames] == object_id
        intersection = (predicted_object & true_object).sum(axis=(1, 2))
        union = (predicted_object | true_object).sum(axis=(1, 2))
        iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
        per_object[int(object_id)] = float(iou.mean())
    mean = float(np.mean(list(per_object.values()))) if per_object else float("nan")
    return {"J": mean, "per_object": per_object}


def load_davis_sequences(root: PathLike, *, resolution: str = "480p",
                         names: Optional[List[str]] = None) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """DAVIS layout ``root/JPEGImages/<res>/<seq>/*.jpg`` + ``root/Annotations/<res>/<seq>/*.png``.

    Returns (name, frames (T, H, W, 3) uint8, masks (T, H, W) uint8 ids) per sequence; masks are
    palette PNGs whose indices are the object ids. A folder without the resolution level works too.
    """
    from PIL import Image

    root = Path(root)
    image_root, mask_root = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    if not image_root.is_dir():
        image_root, mask_root = root / "JPEGImages", root / "Annotations"
    if not image_root.is_dir() or not mask_root.is_dir():
        raise FileNotFoundError(f"{root}: expected the DAVIS layout JPEGImages/{resolution}/<sequence>/*.jpg and "
                                f"Annotations/{resolution}/<sequence>/*.png")
    sequences = []
    for sequence in sorted(path.name for path in image_root.iterdir() if path.is_dir()):
        if names is not None and sequence not in names:
            continue
        frame_paths = sorted((image_root / sequence).glob("*.jpg")) + sorted((image_root / sequence).glob("*.png"))
        mask_paths = sorted((mask_root / sequence).glob("*.png"))
        if not frame_paths or len(mask_paths) != len(frame_paths):
            raise ValueError(f"{root}: sequence {sequence} has {len(frame_paths)} frames but {len(mask_paths)} masks")
        frames = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in frame_paths])
        masks = np.stack([np.asarray(Image.open(path)) for path in mask_paths])
        if masks.ndim == 4:  # an RGB annotation: any coloured pixel is object 1
            masks = (masks.max(axis=3) > 0).astype(np.uint8)
        sequences.append((sequence, frames, masks.astype(np.uint8)))
    return sequences
