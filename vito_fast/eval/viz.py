"""Attention maps over frames: overlays, panels (PNG, GIF) and how well attention covers objects.

Everything takes plain arrays, so it works with any model: frames (T, H, W, 3) uint8 and, per
scale, attention (T, h, w) (``AttentionPool2d.last_attention``, a softmax over the h·w positions).
An overlay paints a colour map over the frame in proportion to the attention::

    shown = frame · (1 − α·w) + colour(w) · α·w,   w = log(a·h·w) / log(h·w) upsampled, in [0, 1]

so pixels at or below uniform attention keep the frame and concentrated attention takes the colour
(``normalise="minmax"`` stretches each map to [0, 1] instead).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

PathLike = Union[str, os.PathLike]

# an "inferno"-like colour map: control points (value, RGB) interpolated linearly
_COLOUR_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOUR_VALUES = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)


def upsample_attention(attention: np.ndarray, size: Sequence[int], *, normalise: str = "uniform") -> np.ndarray:
    """Attention (h, w) or (T, h, w) -> weights in [0, 1] with the same leading dims at ``size`` (H, W).

    ``normalise="uniform"``: how concentrated the attention is, ``log(a·h·w) / log(h·w)`` clipped to
    [0, 1] (a map normalised to sum 1 first): 0 at or below the uniform level, 1 where all of it
    sits on one position, so a flat map shows as flat. ``normalise="minmax"``: each map stretched to
    [0, 1], which shows the ranking of positions even when the map is nearly flat.
    """
    if normalise not in ("uniform", "minmax"):
        raise ValueError(f"upsample_attention: normalise must be 'uniform' or 'minmax', not {normalise!r}")
    maps = torch.as_tensor(np.asarray(attention, dtype=np.float32))
    single = maps.dim() == 2
    maps = maps[None] if single else maps
    if maps.dim() != 3:
        raise ValueError(f"upsample_attention: attention must be (h, w) or (T, h, w), not {tuple(maps.shape)}")
    positions = maps.shape[1] * maps.shape[2]
    if normalise == "uniform":
        maps = maps.clamp_min(0)
        maps = maps / maps.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12) * positions  # 1 = uniform
    maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    if normalise == "uniform":
        scaled = (maps.clamp_min(1e-12).log() / np.log(max(positions, 2))).clamp(0, 1).numpy()
        if positions == 1:
            scaled = np.zeros_like(scaled)
    else:
        low = maps.amin(dim=(1, 2), keepdim=True)
        high = maps.amax(dim=(1, 2), keepdim=True)
        scaled = ((maps - low) / (high - low).clamp_min(1e-12)).numpy()
    return scaled[0] if single else scaled


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (..., 3) of an inferno-like colour map."""
    values = np.clip(values, 0.0, 1.0)
    channels = [np.interp(values, _COLOUR_STOPS, _COLOUR_VALUES[:, channel]) for channel in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def overlay_attention(frame: np.ndarray, attention: np.ndarray, *, alpha: float = 0.7,
                      normalise: str = "uniform") -> np.ndarray:
    """Frame (H, W, 3) uint8 with attention (h, w) painted over it: (H, W, 3) uint8 (see upsample_attention)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"overlay_attention: frame must be (H, W, 3) uint8, not {frame.dtype} {frame.shape}")
    weight = upsample_attention(attention, frame.shape[:2], normalise=normalise)
    colours = colour_map(weight).astype(np.float32)
    blend = alpha * weight[..., None]
    return (frame.astype(np.float32) * (1 - blend) + colours * blend + 0.5).astype(np.uint8)


def attention_panel(frames: np.ndarray, attention_by_scale: Dict[str, np.ndarray], *, alpha: float = 0.7,
                    label_width: int = 64, normalise: str = "uniform") -> np.ndarray:
    """A grid image: the frames on the first row, their overlays of each scale on the next rows.

    frames (T, H, W, 3) uint8; attention_by_scale {name: (T, h, w)}. With ``label_width`` > 0 a
    strip on the left names the rows. Returns ((1 + scales)·H, label_width + T·W, 3) uint8.
    """
    if frames.ndim != 4:
        raise ValueError(f"attention_panel: frames must be (T, H, W, 3), not {frames.shape}")
    num_frames, height, width, _ = frames.shape
    rows = [np.concatenate(list(frames), axis=1)]
    names = ["frames"]
    for name, maps in attention_by_scale.items():
        maps = np.asarray(maps)
        if len(maps) != num_frames:
            raise ValueError(f"attention_panel: scale {name!r} has {len(maps)} maps for {num_frames} frames")
        rows.append(np.concatenate([overlay_attention(frame, attention, alpha=alpha, normalise=normalise)
                                    for frame, attention in zip(frames, maps)], axis=1))
        names.append(name)
    panel = np.concatenate(rows, axis=0)
    if label_width > 0:
        panel = np.concatenate([_label_strip(names, height, label_width), panel], axis=1)
    return panel


def _label_strip(names: List[str], row_height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, row_height * len(names)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for row, name in enumerate(names):
        draw.text((3, row * row_height + row_height // 2 - 5), name[: max(1, width // 6)], fill=(0, 0, 0))
    return np.asarray(strip)


def save_png(image: np.ndarray, path: PathLike) -> Path:
    """Write an (H, W, 3) uint8 image as PNG (creating the folder)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


def save_gif(images: Sequence[np.ndarray], path: PathLike, *, fps: float = 8) -> Path:
    """Write (H, W, 3) uint8 images as a looping GIF (creating the folder)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [Image.fromarray(image) for image in images]
    pictures[0].save(path, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=int(round(1000 / fps)), loop=0)
    return path


def attention_overlay_frames(frames: np.ndarray, attention_by_scale: Dict[str, np.ndarray], *,
                             alpha: float = 0.7, normalise: str = "uniform") -> List[np.ndarray]:
    """One image per frame: the frame beside its overlay of each scale (for a GIF)."""
    return [np.concatenate([frame] + [overlay_attention(frame, np.asarray(maps)[time], alpha=alpha,
                                                        normalise=normalise)
                                      for maps in attention_by_scale.values()], axis=1)
            for time, frame in enumerate(frames)]


# ----------------------------------------------------------------------------- attention vs objects


def _attention_on_mask_grid(attention: np.ndarray, masks: np.ndarray, caller: str):
    """(attention (T, h, w) upsampled bilinearly to the masks' (H, W), each frame summing to 1, as (T, H·W);
    masks (T, H, W) bool), or a ValueError naming ``caller``."""
    attention = np.asarray(attention, dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    if attention.ndim != 3 or masks.ndim != 3 or len(attention) != len(masks):
        raise ValueError(f"{caller}: need attention (T, h, w) and masks (T, H, W), not {attention.shape} "
                         f"and {masks.shape}")
    maps = F.interpolate(torch.from_numpy(attention)[:, None], size=masks.shape[1:], mode="bilinear",
                         align_corners=False)[:, 0].clamp_min(0).flatten(1)
    return maps / maps.sum(dim=1, keepdim=True).clamp_min(1e-12), masks


def attention_mask_iou(attention: np.ndarray, masks: np.ndarray, *, mass: float = 0.5) -> float:
    """Mean IoU between attention (T, h, w) and object masks (T, H, W) bool, over frames.

    The attention, upsampled bilinearly to (H, W) and renormalised to sum to 1, is cut to the
    smallest set of pixels that holds ``mass`` of it (DINO's way to turn attention into a mask).
    """
    maps, masks = _attention_on_mask_grid(attention, masks, "attention_mask_iou")
    ordered, order = maps.sort(dim=1, descending=True)
    keep_sorted = (ordered.cumsum(dim=1) - ordered) < mass  # pixels needed to reach the mass
    kept = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted).reshape(masks.shape).numpy()
    intersection = (kept & masks).sum(axis=(1, 2))
    union = (kept | masks).sum(axis=(1, 2))
    return float(np.mean(np.where(union > 0, intersection / np.maximum(union, 1), 1.0)))


def attention_mass_on_masks(attention: np.ndarray, masks: np.ndarray) -> float:
    """Mean over frames of the share of attention (T, h, w) that falls on the masks (T, H, W) bool.

    The attention is upsampled bilinearly to (H, W) and renormalised to sum to 1 per frame. Unlike
    the IoU this does not ask the attention to *cover* the object: a sharp peak inside the object
    scores 1. Uniform attention scores the masks' area fraction.
    """
    maps, masks = _attention_on_mask_grid(attention, masks, "attention_mass_on_masks")
    return float((maps * torch.from_numpy(masks).flatten(1)).sum(dim=1).mean())


def centred_gaussian_attention(num_frames: int, height: int, width: int, *, sigma: float = 0.25) -> np.ndarray:
    """A baseline attention (T, h, w): a Gaussian at the frame centre, std ``sigma`` of each side."""
    rows = (np.arange(height) + 0.5) / height - 0.5
    columns = (np.arange(width) + 0.5) / width - 0.5
    gaussian = np.exp(-(rows[:, None] ** 2 + columns[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)
    gaussian /= gaussian.sum()
    return np.broadcast_to(gaussian, (num_frames, height, width)).copy()
