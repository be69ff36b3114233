"""The demo's report: OUT/report.md, OUT/results.json and PNG plots (loss curves, bars, attention)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from vito_fast.eval.plots import bar_chart, line_chart
from vito_fast.eval.viz import attention_panel, save_png

TITLES = {"random": "random init", "vito": "VITO", "avgpool": "VITO, average pooling", "dt0": "VITO, Δt = 0"}


def _percent(value, error=None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" + ("" if error is None else f" ± {100 * error:.1f}")


def _number(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def verdict(difference: float, standard_error: float) -> str:
    """"yes" when ``difference`` > 2 standard errors, "**no**" below −2, else "not clearly"."""
    if difference > 2 * standard_error:
        return "yes"
    if difference < -2 * standard_error:
        return "**no** (the opposite, beyond the noise)"
    return "**not clearly** (within twice the noise)"


def _claims(summary: Dict) -> List[str]:
    """One line per claim of the paper: whether this run shows it, beyond twice the standard error."""
    variants, lines = summary["variants"], []

    def compare(better: str, worse: str, metric: str, claim: str) -> None:
        first, second = variants[better][metric], variants[worse][metric]
        error = float(np.hypot(variants[better].get(f"{metric}_se", 0.0), variants[worse].get(f"{metric}_se", 0.0)))
        lines.append(f"- {claim}: {verdict(first - second, error)} ({metric}: {TITLES[better]} {first:.3f} vs "
                     f"{TITLES[worse]} {second:.3f}, difference {first - second:+.3f} ± {error:.3f})")

    compare("vito", "random", "knn", "VITO beats random init (kNN)")
    compare("vito", "random", "linear", "VITO beats random init (linear probe)")
    compare("vito", "dt0", "knn", "video pairs (Δt > 0) beat same-frame pairs (Δt = 0)")
    compare("vito", "avgpool", "knn", "attention pooling beats average pooling")
    if variants["vito"].get("attention_mass"):
        # judged on the share of attention on the objects; the IoU (which also asks the attention to
        # cover the whole object) is reported beside it
        masses, errors = variants["vito"]["attention_mass"], variants["vito"].get("attention_mass_se", {})
        best_stage, best = max(masses.items(), key=lambda item: item[1])
        baseline = summary.get("centred_gaussian_attention_mass", 0.0)
        error = errors.get(best_stage, 0.0)
        iou = variants["vito"]["attention_iou"].get(best_stage, float("nan"))
        lines.append(f"- the attention maps follow the objects: {verdict(best - baseline, error)} ({best_stage}: "
                     f"{100 * best:.0f}% ± {100 * error:.0f} of the attention on the objects, which cover "
                     f"{100 * summary.get('object_area_fraction', float('nan')):.0f}% of the frames; a centred Gaussian "
                     f"puts {100 * baseline:.0f}% there, random init "
                     f"{100 * variants['random'].get('attention_mass', {}).get(best_stage, float('nan')):.0f}%. "
                     f"IoU of the half-mass region with the masks: {iou:.3f} vs {summary['centred_gaussian_attention_iou']:.3f} "
                     "for the Gaussian)")
    return lines


def write_report(out: Path, summary: Dict, examples: Dict, class_names: List[str]) -> Path:
    """Write the plots, results.json and report.md under ``out``; returns the report's path."""
    out = Path(out)
    variants = summary["variants"]
    titles = {name: TITLES.get(name, name) for name in variants}
    line_chart({titles[name]: curve for name, curve in summary["losses"].items()},
               "training loss (sum of the per-scale InfoNCE)", "step", out / "loss_curves.png")
    stages = sorted({stage for result in variants.values() for stage in result["attention_iou"]})
    groups = {"kNN": {titles[n]: r["knn"] for n, r in variants.items()},
              "linear": {titles[n]: r["linear"] for n, r in variants.items()},
              "propagation J": {titles[n]: r["propagation_J"] for n, r in variants.items()}}
    for stage in stages:
        groups[f"attn on objects {stage}"] = {titles[n]: r.get("attention_mass", {}).get(stage)
                                              for n, r in variants.items()}
    bar_chart(groups, "evaluations on the built-in data (higher is better)", out / "evaluations.png")
    pictures = []
    for name, by_video in examples.items():
        if not by_video:
            continue
        clip, attention = by_video[min(by_video)]
        chosen = np.linspace(0, len(clip) - 1, 8).round().astype(int)
        path = save_png(attention_panel(clip[chosen], {stage: maps[chosen] for stage, maps in attention.items()}),
                        out / f"attention_{name}.png")
        pictures.append((name, path.name))
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")

    lines = ["# vito_fast demo", "",
             f"Built-in synthetic data: {len(class_names)} classes ({', '.join(class_names)}), "
             f"{summary['settings']['videos_per_class']} videos per class of {summary['settings']['num_frames']} "
             f"frames. Each variant pretrained for {summary['steps']} steps of the `demo` preset "
             f"(estimated {summary['estimated_seconds_per_step']:.2f} s per step); the whole demo took "
             f"{summary['seconds']:.0f} s. Config overrides of every variant: "
             + ", ".join(f"`{item}`" for item in summary.get("config_overrides", [])) + ".", "",
             "| variant | steps | final loss | kNN top-1 | linear top-1 | propagation J | "
             + " | ".join(f"attention on objects {stage}" for stage in stages) + " | "
             + " | ".join(f"attention IoU {stage}" for stage in stages) + " |",
             "|---|---|---|---|---|---|" + "---|" * (2 * len(stages))]
    for name, result in variants.items():
        lines.append(f"| {titles[name]} | {result.get('steps', 0)} | {_number(result.get('final_loss'))} | "
                     f"{_percent(result['knn'], result.get('knn_se'))} | {_percent(result['linear'], result.get('linear_se'))} | "
                     f"{_number(result['propagation_J'])} | "
                     + " | ".join(_percent(result.get("attention_mass", {}).get(stage)) for stage in stages) + " | "
                     + " | ".join(_number(result["attention_iou"].get(stage)) for stage in stages) + " |")
    lines.append(f"| centred Gaussian (attention baseline) | | | | | | "
                 + " | ".join(_percent(summary.get("centred_gaussian_attention_mass")) for _ in stages) + " | "
                 + " | ".join(_number(summary["centred_gaussian_attention_iou"]) for _ in stages) + " |")
    lines += ["", "## Does it show the paper's claims?", "", *_claims(summary), "",
              "Small, short runs on a CPU. ± is one standard error over clips (videos), the unit that is "
              "sampled: a claim counts as shown only when the difference exceeds twice its standard error. "
              "That error does not include the training run's own variation: runs of a few hundred steps "
              "that differ only in their step count (the time budget sets it) differ by several points, "
              "so compare more than one demo before trusting a small difference. "
              f"kNN (k = 10, cosine) and the linear probe use the last stage's average-pooled features of "
              f"{summary['settings'].get('eval_frames_per_clip', 4)} frames per video, cross-validated over 4 folds "
              "of whole videos (every video tested once by a probe fitted on the others); "
              "J propagates the first frame's object masks with layer-3 features. Attention on objects is the "
              "share of each scale's attention (upsampled to the frame) that falls on the object masks; "
              "attention IoU compares the masks with the pixels holding half of the attention, so a sharp "
              "peak on an object scores high on the first and low on the second.", "",
              "## Plots", "", "![training loss](loss_curves.png)", "", "![evaluations](evaluations.png)", ""]
    for name, file_name in pictures:
        lines += [f"Attention of *{TITLES.get(name, name)}* (rows: frames, then one row per scale):", "",
                  f"![attention {name}]({file_name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
