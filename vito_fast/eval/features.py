"""Labelled images and frozen features: what every evaluation starts from.

Sources of labelled images (all give ``LabelledImages``: uint8 RGB (N, H, W, 3), labels, groups):

- ``load_image_folder(root)``: ``root/<class name>/<image>.{png,jpg,...}`` (torchvision's
  ImageFolder layout); each image is its own group.
- ``load_manifest_frames(manifest)``: ``frames_per_clip`` evenly spaced frames of every labelled
  clip of a manifest; the frames of one clip share a group, so train/test splits never put two
  frames of one clip on both sides (``split_by_group``).

An *encoder* is any ``torch.nn.Module`` mapping a normalised image batch (B, 3, H, W) to feature
vectors (B, D), feature maps (B, C, h, w), or a list/tuple/dict of those (one per scale).
``extract_features`` turns its output into one vector per image (maps are average-pooled, scales
concatenated) and ``extract_feature_maps`` keeps one scale's maps for label propagation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

PathLike = Union[str, os.PathLike]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


@dataclass
class LabelledImages:
    """Images (N, H, W, 3) uint8 RGB with class ids (N,), group ids (N,) and the class names."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    class_names: List[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "LabelledImages":
        return LabelledImages(self.images[indices], self.labels[indices], self.groups[indices], self.class_names)


def _resize_image(image: np.ndarray, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """Resize (H, W, 3) uint8 to ``size`` = (height, width) with PIL's bilinear filter; None keeps it."""
    if size is None or image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def load_image_folder(root: PathLike, *, size: Optional[Tuple[int, int]] = None) -> LabelledImages:
    """Images under ``root/<class name>/`` (classes sorted by name); ``size`` (h, w) resizes them all.

    Without ``size`` all images must have the same size.
    """
    from PIL import Image

    root = Path(root)
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    if not class_dirs:
        raise FileNotFoundError(f"{root}: expected one folder of images per class (root/<class>/<image>)")
    images, labels = [], []
    for class_id, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as image:
                    images.append(_resize_image(np.asarray(image.convert("RGB")), size))
                labels.append(class_id)
    if not images:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"{root}: images have different sizes {sorted(shapes)[:3]}...; pass size=(h, w)")
    return LabelledImages(np.stack(images), np.array(labels), np.arange(len(labels)),
                          [path.name for path in class_dirs])


def load_manifest_frames(manifest: PathLike, *, frames_per_clip: int = 4, size: Optional[Tuple[int, int]] = None,
                         class_names: Optional[Sequence[str]] = None) -> LabelledImages:
    """``frames_per_clip`` evenly spaced frames of every clip in a manifest, labelled by its ``label``.

    Classes are the sorted distinct labels unless ``class_names`` fixes their order; a clip
    without a label is an error (the message names it). Frames are decoded with PyAV.
    """
    from vito_fast.data.manifest import read_manifest

    records = read_manifest(manifest)
    unlabelled = [record.path for record in records if record.label is None]
    if unlabelled:
        raise ValueError(f"{manifest}: {len(unlabelled)} clips have no label (first: {unlabelled[0]})")
    names = list(class_names) if class_names is not None else sorted({record.label for record in records})
    class_of = {name: index for index, name in enumerate(names)}
    images, labels, groups = [], [], []
    for clip_index, record in enumerate(records):
        if record.label not in class_of:
            raise ValueError(f"{record.path}: label {record.label!r} is not one of {names}")
        for frame in _decode_spaced_frames(record.path, frames_per_clip, record.clip_start, record.clip_end,
                                           record.num_frames):
            images.append(_resize_image(frame, size))
            labels.append(class_of[record.label])
            groups.append(clip_index)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"{manifest}: frames have different sizes {sorted(shapes)[:3]}...; pass size=(h, w)")
    return LabelledImages(np.stack(images), np.array(labels), np.array(groups), names)


def _decode_spaced_frames(path: str, count: int, start: Optional[float], end: Optional[float],
                          num_frames: int) -> List[np.ndarray]:
    """``count`` evenly spaced RGB frames of the ``num_frames`` frames in [start, end) s of a video.

    Decodes sequentially and converts only the chosen frames; a clip that holds fewer frames than
    ``num_frames`` gives its last frame in place of the missing ones.
    """

    wanted = np.linspace(0, max(num_frames - 1, 0), count).round().astype(int) if count > 1 else \
        np.array([max(num_frames - 1, 0) // 2])
    wanted_set = set(wanted.tolist())
    chosen: dict = {}
    last_frame = None
    from vito_fast.storage.shards import open_container

    with open_container(path) as container:
        position = 0
        for frame in container.decode(container.streams.video[0]):
            time = frame.time if frame.time is not None else 0.0
            if start is not None and time < start - 1e-6:
                continue
            if (end is not None and time >= end - 1e-6) or position > wanted[-1]:
                break
            if position in wanted_set:
                chosen[position] = frame.to_ndarray(format="rgb24")
            last_frame, position = frame, position + 1
    if last_frame is None:
        raise ValueError(f"{path}: no frames decode in [{start}, {end})")
    if len(chosen) < len(wanted_set):
        fallback = last_frame.to_ndarray(format="rgb24")
        return [chosen.get(index, fallback) for index in wanted]
    return [chosen[index] for index in wanted]


def split_by_group(labels: np.ndarray, groups: np.ndarray, *, test_fraction: float = 0.25,
                   seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): whole groups go to test, about ``test_fraction`` per class.

    Each class with at least two groups keeps one group or more on both sides.
    """
    rng = np.random.default_rng(seed)
    test_groups = []
    for label in np.unique(labels):
        class_groups = np.unique(groups[labels == label])
        count = int(round(test_fraction * len(class_groups)))
        count = min(max(count, 1), len(class_groups) - 1) if len(class_groups) > 1 else 0
        test_groups.extend(rng.permutation(class_groups)[:count])
    is_test = np.isin(groups, test_groups)
    return np.nonzero(~is_test)[0], np.nonzero(is_test)[0]


def group_folds(labels: np.ndarray, groups: np.ndarray, *, folds: int = 4, seed: int = 0
                ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train indices, test indices) splits in which every group is tested exactly once.

    Whole groups (e.g. the frames of one clip) stay on one side; each class's groups are dealt
    round-robin to the folds in a seeded order, so every fold holds about 1/folds of each class.
    Cross-validating over all folds tests on every group: less noise than one held-out split.
    """
    if folds < 2:
        raise ValueError(f"group_folds: folds must be >= 2, not {folds}")
    rng = np.random.default_rng(seed)
    fold_of_group = {}
    offset = 0
    for label in np.unique(labels):
        class_groups = np.unique(groups[labels == label])
        for position, group in enumerate(rng.permutation(class_groups)):
            fold_of_group[group] = (offset + position) % folds
        offset += len(class_groups)  # the next class starts where this one stopped
    fold = np.array([fold_of_group[group] for group in groups])
    return [(np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]) for k in range(folds)
            if np.any(fold == k) and np.any(fold != k)]


# ----------------------------------------------------------------------------- features


def images_to_tensor(images: np.ndarray, *, image_size: Optional[Tuple[int, int]] = None,
                     device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, h, w) normalised with ImageNet mean/std (resized if asked)."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255)
    if image_size is not None and tuple(batch.shape[-2:]) != tuple(image_size):
        batch = F.interpolate(batch, size=tuple(image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (batch - mean) / std


def _as_list(output) -> List[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return list(output.values())
    if isinstance(output, (list, tuple)):
        return list(output)
    raise TypeError(f"encoder output must be a tensor, a list/tuple or a dict of tensors, not {type(output).__name__}")


def pool_to_vector(output) -> torch.Tensor:
    """Encoder output -> (B, D): maps (B, C, h, w) average-pooled, vectors kept, scales concatenated."""
    vectors = []
    for tensor in _as_list(output):
        if tensor.dim() == 4:
            vectors.append(tensor.float().mean(dim=(2, 3)))
        elif tensor.dim() == 2:
            vectors.append(tensor.float())
        else:
            raise ValueError(f"encoder output of shape {tuple(tensor.shape)}: expected (B, D) or (B, C, h, w)")
    return torch.cat(vectors, dim=1)


def _device_of(encoder: torch.nn.Module) -> torch.device:
    parameter = next(encoder.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images: np.ndarray, *, batch_size: int = 64,
                     image_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Frozen features (N, D) float32 on the CPU of images (N, H, W, 3) uint8, in eval mode, batch-wise."""
    device = _device_of(encoder)
    was_training = encoder.training
    encoder.eval()
    try:
        chunks = [pool_to_vector(encoder(images_to_tensor(images[start:start + batch_size],
                                                          image_size=image_size, device=device))).cpu()
                  for start in range(0, len(images), batch_size)]
    finally:
        encoder.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def extract_feature_maps(encoder: torch.nn.Module, images: np.ndarray, *, batch_size: int = 16,
                         image_size: Optional[Tuple[int, int]] = None, scale: int = -1) -> torch.Tensor:
    """Feature maps (N, C, h, w) float32 on the CPU of one scale (index ``scale`` of a multi-scale output)."""
    device = _device_of(encoder)
    was_training = encoder.training
    encoder.eval()
    chunks = []
    try:
        for start in range(0, len(images), batch_size):
            maps = _as_list(encoder(images_to_tensor(images[start:start + batch_size], image_size=image_size,
                                                     device=device)))[scale]
            if maps.dim() != 4:
                raise ValueError(f"extract_feature_maps: the encoder gives {tuple(maps.shape)}, not maps (B, C, h, w)")
            chunks.append(maps.float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(chunks)


def attention_of_frames(encoder, frames: np.ndarray, image_size: int, batch_size: int = 16) -> Dict[str, np.ndarray]:
    """Run frames (T, H, W, 3) uint8 through an attention-pooling encoder: {stage: (T, h, w) float32}."""
    height, width = frames.shape[1:3]
    scale = image_size / min(height, width)
    input_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    device = next(encoder.parameters()).device
    collected: Dict[str, List[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            encoder(images_to_tensor(frames[start:start + batch_size], image_size=input_size, device=device))
            for stage, attention in encoder.last_attention.items():
                collected.setdefault(stage, []).append(attention.float().cpu())
    return {stage: torch.cat(chunks).numpy() for stage, chunks in collected.items()}
