"""Attention maps over frames: overlays, panels (PNG, GIF) and how well attention covers objects.

Everything takes plain arrays, so it works with any model: frames (T, H, W, 3) uint8 and, per
scale, attention (T, h, w) (what ``AttentionPool2d`` returns, a softmax over the h·w positions).
An overlay paints a heat colour map over the (partly transparent) frame. The colour says how much
attention a pixel gets relative to uniform attention, on a log scale shared by every map::

    r = a·h·w (1 = uniform),  v = 1/2 + log(r) / (2 log RATIO_RANGE) clipped to [0, 1]
    shown = grey(frame) · (1 − α·(0.3 + 0.7 v)) + heat(v) · α·(0.3 + 0.7 v)

so a flat map shows as an even mid-colour (it is not hidden), a peaked one as a bright spot on
a dark frame, and the colour bar that panels carry (``colour_bar``) reads off the ratio:
×1/16 … ×1 (uniform) … ×16. ``normalise="minmax"`` stretches each map to [0, 1] instead (the
ranking of positions, whatever the peak).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

PathLike = Union[str, os.PathLike]

# an "inferno"-like colour map: control points (value, RGB) interpolated linearly
_COLOUR_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOUR_VALUES = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)
RATIO_RANGE = 16.0  # the colour scale spans attention ÷ uniform from 1/16 to 16
NORMALISE = ("uniform", "minmax")


def upsample_attention(attention: np.ndarray, size: Sequence[int], *, normalise: str = "uniform") -> np.ndarray:
    """Attention (h, w) or (T, h, w) -> values in [0, 1] with the same leading dims at ``size`` (H, W).

    ``normalise="uniform"``: the attention relative to uniform, r = a·h·w (a map normalised to sum 1
    first), as ``1/2 + log(r) / (2 log RATIO_RANGE)`` clipped to [0, 1]: 0.5 is uniform, 1 is
    RATIO_RANGE times uniform or more, 0 is 1/RATIO_RANGE or less. ``normalise="minmax"``: each map
    stretched to [0, 1], which shows the ranking of positions even when the map is nearly flat.
    """
    if normalise not in NORMALISE:
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
        scaled = (0.5 + maps.clamp_min(1e-12).log() / (2 * np.log(RATIO_RANGE))).clamp(0, 1).numpy()
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


def overlay_attention(frame: np.ndarray, attention: np.ndarray, *, alpha: float = 0.75,
                      normalise: str = "uniform") -> np.ndarray:
    """Frame (H, W, 3) uint8 with attention (h, w) painted over it: (H, W, 3) uint8 (module docstring)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"overlay_attention: frame must be (H, W, 3) uint8, not {frame.dtype} {frame.shape}")
    value = upsample_attention(attention, frame.shape[:2], normalise=normalise)
    colours = colour_map(value).astype(np.float32)
    blend = alpha * (0.3 + 0.7 * value[..., None])  # more transparent where attention is low
    # the frame in grey underneath: its own colours would compete with the heat colours
    grey = (frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return (grey * (1 - blend) + colours * blend + 0.5).astype(np.uint8)


def colour_bar(height: int, *, width: int = 72, normalise: str = "uniform") -> np.ndarray:
    """A vertical colour bar (height, width, 3) uint8 that reads overlay colours back: attention ÷
    uniform from 1/RATIO_RANGE (bottom) to RATIO_RANGE (top), or min/max with ``normalise="minmax"``."""
    from PIL import Image, ImageDraw

    if normalise not in NORMALISE:
        raise ValueError(f"colour_bar: normalise must be 'uniform' or 'minmax', not {normalise!r}")
    top, bottom, bar_width = 16, max(height - 6, 22), 12
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ramp = colour_map(np.linspace(1.0, 0.0, bottom - top))  # top row = highest value
    image.paste(Image.fromarray(np.repeat(ramp[:, None], bar_width, axis=1)), (2, top))
    draw = ImageDraw.Draw(image)
    draw.text((2, 2), "vs uniform" if normalise == "uniform" else "per map", fill=(0, 0, 0))
    if normalise == "uniform":  # ASCII labels: the default bitmap font has no multiplication sign
        ticks = [(RATIO_RANGE, f"x{RATIO_RANGE:g}"), (RATIO_RANGE ** 0.5, f"x{RATIO_RANGE ** 0.5:g}"), (1.0, "x1"),
                 (RATIO_RANGE ** -0.5, f"x1/{RATIO_RANGE ** 0.5:g}"), (1 / RATIO_RANGE, f"x1/{RATIO_RANGE:g}")]
        ticks = [(0.5 + np.log(ratio) / (2 * np.log(RATIO_RANGE)), label) for ratio, label in ticks]
    else:
        ticks = [(1.0, "max"), (0.5, "mid"), (0.0, "min")]
    for value, label in ticks:
        y = top + (1.0 - value) * (bottom - top - 1)
        draw.line([(2 + bar_width, y), (6 + bar_width, y)], fill=(0, 0, 0))
        draw.text((9 + bar_width, y - 5), label, fill=(0, 0, 0))
    return np.asarray(image)


def attention_panel(frames: np.ndarray, attention_by_scale: Dict[str, np.ndarray], *, alpha: float = 0.75,
                    label_width: int = 64, normalise: str = "uniform", bar_width: Optional[int] = 72) -> np.ndarray:
    """A grid image: the frames on the first row, their overlays of each scale on the next rows.

    frames (T, H, W, 3) uint8; attention_by_scale {name: (T, h, w)}. With ``label_width`` > 0 a
    strip on the left names the rows; with ``bar_width`` a colour bar on the right reads the
    colours back. Returns ((1 + scales)·H, label_width + T·W + bar_width, 3) uint8.
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
    if bar_width:
        bar = np.full((panel.shape[0], bar_width, 3), 255, np.uint8)
        bar[height:] = colour_bar(panel.shape[0] - height, width=bar_width, normalise=normalise)
        panel = np.concatenate([panel, bar], axis=1)
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
                             alpha: float = 0.75, normalise: str = "uniform", bar_width: int = 72) -> List[np.ndarray]:
    """One image per frame: the frame beside its overlay of each scale and a colour bar (for a GIF)."""
    images = [np.concatenate([frame] + [overlay_attention(frame, np.asarray(maps)[time], alpha=alpha,
                                                          normalise=normalise)
                                        for maps in attention_by_scale.values()], axis=1)
              for time, frame in enumerate(frames)]
    if bar_width and images:
        bar = colour_bar(images[0].shape[0], width=bar_width, normalise=normalise)
        images = [np.concatenate([image, bar], axis=1) for image in images]
    return images


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
