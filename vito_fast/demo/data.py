"""What every run of the demo is scored on: probe frames, evaluation clips, corrupted and cue-conflict frames."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from vito_fast.demo.results import ClipScores, GaussianAttention
from vito_fast.eval.features import LabelledImages
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

    def object_area_fraction(self) -> float:
        """Share of the clips' frames that the objects cover, mean over the clips."""
        return float(np.mean([(instances > 0).mean() for _, instances in self.clips.values()]))


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


def gaussian_attention(clips: Dict[int, Tuple[np.ndarray, np.ndarray]], stages: Sequence[str]) -> GaussianAttention:
    """The scores of a centred Gaussian attention on every clip (the baseline of the attention claim)."""
    from vito_fast.eval.viz import centred_gaussian_attention

    masks = [instances > 0 for _, instances in clips.values()]
    gaussians = [centred_gaussian_attention(len(mask), 8, 8) for mask in masks]
    mass = [attention_mass_on_masks(g, m) for g, m in zip(gaussians, masks)]
    iou = [attention_mask_iou(g, m) for g, m in zip(gaussians, masks)]
    # the same map at every stage, so the same scores under every stage's name
    return GaussianAttention(ClipScores(attention_iou={stage: iou for stage in stages},
                                        attention_mass={stage: mass for stage in stages}))
