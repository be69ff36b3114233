"""The demo's PNGs: loss curves, accuracy under corruption, the evaluations' bars and attention panels."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from vito_fast.demo.metrics import RobustnessFigures
from vito_fast.demo.results import DemoSummary
from vito_fast.eval.plots import bar_chart, line_chart
from vito_fast.eval.viz import attention_panel, save_png


@dataclass
class Plots:
    """Which plots were written (file names under the output folder)."""

    robustness: bool = False  # robustness.png: some variant was scored under corruption
    attention: List[Tuple[str, str]] = field(default_factory=list)  # (variant, attention_<variant>.png)


def severity_curves(summary: DemoSummary, titles: Dict[str, str]) -> Dict[str, List[float]]:
    """{variant title: accuracy at severity 0 (clean) … 5, averaged over the corruptions}."""
    curves = {}
    for name, result in summary.variants.items():
        robustness = result.robustness
        if robustness is None:
            continue
        by_corruption = robustness.by_corruption
        levels = sorted({int(level) for entry in by_corruption.values() for level in entry})
        curves[titles[name]] = [robustness.clean] + [
            float(np.mean([entry[level] for entry in by_corruption.values()])) for level in levels]
    return curves


def write_plots(out: Path, summary: DemoSummary, figures: Dict[str, RobustnessFigures], examples: Dict,
                titles: Dict[str, str], stages: List[str]) -> Plots:
    """Write the PNGs under ``out``: ``figures`` are each variant's robustness figures, ``examples``
    {variant: {video: (frames, attention)}} the clips ``evaluate_run`` kept for pictures."""
    variants = summary.variants
    plots = Plots()
    line_chart({titles[name]: curve for name, curve in summary.losses.items()},
               "training loss (sum of the per-scale InfoNCE)", "step", out / "loss_curves.png")
    curves = severity_curves(summary, titles)
    if curves:
        line_chart(curves, "linear-probe accuracy vs corruption severity (mean of 5 corruptions)", "severity",
                   out / "robustness.png")
        plots.robustness = True
    groups = {"kNN": {titles[n]: r.knn for n, r in variants.items()},
              "linear": {titles[n]: r.linear for n, r in variants.items()},
              "propagation J": {titles[n]: r.propagation_J for n, r in variants.items()},
              "shape bias": {titles[n]: figures[n].shape_bias for n in variants}}
    for stage in stages:
        groups[f"attn on objects {stage}"] = {titles[n]: r.attention_mass.get(stage) for n, r in variants.items()}
    bar_chart(groups, "evaluations on the built-in data (higher is better)", out / "evaluations.png")
    for name, by_video in examples.items():
        if not by_video:
            continue
        clip, attention = by_video[min(by_video)]
        chosen = np.linspace(0, len(clip) - 1, 8).round().astype(int)
        path = save_png(attention_panel(clip[chosen], {stage: maps[chosen] for stage, maps in attention.items()}),
                        out / f"attention_{name}.png")
        plots.attention.append((name, path.name))
    return plots
