"""Small PNG charts drawn with Pillow (no plotting library needed): line curves and grouped bars.

    line_chart({"VITO": losses, "Δt = 0": other_losses}, "training loss", "step", path)
    bar_chart({"kNN": {"random": 0.4, "VITO": 0.7}, "J": {...}}, "evaluations", path)
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
WIDTH, HEIGHT, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 720, 420, 64, 150, 36, 48


def _drawable(text: str) -> str:
    """Pillow's built-in font has no Greek letters: "Δt" becomes "dt"."""
    return text.replace("Δ", "d").replace("τ", "tau")


def _canvas(title: str):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN_LEFT, 10), _drawable(title), fill=(0, 0, 0))
    return image, draw


def _plot_area():
    return MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM


def _y_axis(draw, low: float, high: float) -> None:
    left, top, right, bottom = _plot_area()
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))
    for tick in np.linspace(low, high, 5):
        y = bottom - (tick - low) / (high - low) * (bottom - top)
        draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        draw.line([(left + 1, y), (right, y)], fill=(230, 230, 230))
        draw.text((4, y - 6), f"{tick:.3g}", fill=(0, 0, 0))


def _legend(draw, names: Sequence[str]) -> None:
    _, top, right, _ = _plot_area()
    for index, name in enumerate(names):
        y = top + 16 * index
        draw.rectangle([right + 12, y + 2, right + 24, y + 12], fill=PALETTE[index % len(PALETTE)])
        draw.text((right + 30, y), _drawable(name), fill=(0, 0, 0))


def line_chart(series: Dict[str, Sequence[float]], title: str, x_label: str, path: PathLike) -> Path:
    """One line per named series (x = 0, 1, ...), a shared y axis, a legend; written as PNG."""
    image, draw = _canvas(title)
    values = [value for curve in series.values() for value in curve if math.isfinite(value)]
    if values:
        low, high = min(values), max(values)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        longest = max(len(curve) for curve in series.values())
        left, top, right, bottom = _plot_area()
        _y_axis(draw, low, high)
        for index, curve in enumerate(series.values()):
            points = [(left + x / max(longest - 1, 1) * (right - left),
                       bottom - (y - low) / (high - low) * (bottom - top))
                      for x, y in enumerate(curve) if math.isfinite(y)]
            if len(points) > 1:
                draw.line(points, fill=PALETTE[index % len(PALETTE)], width=2)
            elif points:
                x, y = points[0]
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=PALETTE[index % len(PALETTE)])
        draw.text(((left + right) // 2 - 20, bottom + 18), f"{x_label} (0 .. {longest - 1})", fill=(0, 0, 0))
        _legend(draw, list(series))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def bar_chart(groups: Dict[str, Dict[str, float]], title: str, path: PathLike, *, high: float = 1.0) -> Path:
    """Grouped bars: one group per metric, one bar per variant (same order in every group); y from 0."""
    image, draw = _canvas(title)
    variants = list(dict.fromkeys(name for bars in groups.values() for name in bars))
    left, top, right, bottom = _plot_area()
    _y_axis(draw, 0.0, high)
    group_width = (right - left) / max(len(groups), 1)
    bar_width = 0.8 * group_width / max(len(variants), 1)
    for group_index, (metric, bars) in enumerate(groups.items()):
        start = left + group_index * group_width + 0.1 * group_width
        for variant_index, variant in enumerate(variants):
            value = bars.get(variant)
            if value is None or not math.isfinite(value):
                continue
            x0 = start + variant_index * bar_width
            y = bottom - min(max(value, 0.0), high) / high * (bottom - top)
            draw.rectangle([x0, y, x0 + bar_width - 2, bottom], fill=PALETTE[variant_index % len(PALETTE)])
            draw.text((x0, y - 12), f"{value:.2f}", fill=(0, 0, 0))
        draw.text((start, bottom + 8), _drawable(metric), fill=(0, 0, 0))
    _legend(draw, variants)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
