"""The demo's report: OUT/report.md, OUT/results.json and PNG plots (loss curves, bars, attention)."""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from vito_fast.demo_eval import (accuracy_metric, clip_mean_metric, mean_corruption_error, paired_bootstrap, point,
                                 shape_bias_metric, standard_error)
from vito_fast.eval.plots import bar_chart, line_chart
from vito_fast.eval.robustness import kept_above_chance
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


@dataclass
class Claim:
    """One claim of the paper: ``better`` beats ``worse`` on ``metric`` (see vito_fast.demo_eval)."""

    title: str
    better: str
    worse: str
    metric: Callable  # (run result, weights) -> values; see demo_eval
    label: str  # what the numbers are
    lower_is_better: bool = False
    metric_of_worse: Optional[Callable] = None  # when the two sides are scored differently
    percent: bool = True


def claims_of(summary: Dict, seed_index: int) -> List[Claim]:
    """The claims, with metrics bound to seed ``seed_index``'s runs (mCE divides by that seed's random init)."""
    seeds = summary["seeds"]
    vito = seeds["vito"][seed_index]
    found = [Claim("VITO beats random init (kNN)", "vito", "random", accuracy_metric("knn"), "kNN top-1"),
             Claim("VITO beats random init (linear probe)", "vito", "random", accuracy_metric("linear"),
                   "linear top-1"),
             Claim("video pairs (Δt > 0) beat same-frame pairs (Δt = 0)", "vito", "dt0", accuracy_metric("knn"),
                   "kNN top-1")]
    if "robust_corrupted_correct" in vito.get("per_video", {}):
        found.append(Claim("VITO is more robust to corruptions than same-frame pretraining", "vito", "dt0",
                           mean_corruption_error(seeds["random"][seed_index]),
                           "mCE (corruption error / random init's; lower is better)", lower_is_better=True,
                           percent=False))
    if "shape_decisions" in vito.get("per_video", {}):
        found.append(Claim("VITO is more shape-biased than same-frame pretraining", "vito", "dt0", shape_bias_metric,
                           "shape bias", percent=False))
    if "knn_attention_correct" in vito.get("per_video", {}):
        found.append(Claim("attention pooling beats average pooling (each model's own pooling)", "vito", "avgpool",
                           accuracy_metric("knn_attention"), "kNN top-1, VITO attention-pooled vs average "
                           "pooling", metric_of_worse=accuracy_metric("knn")))
    found.append(Claim("attention pooling beats average pooling (both average-pooled at evaluation)", "vito",
                       "avgpool", accuracy_metric("knn"), "kNN top-1"))
    return found


def judge(summary: Dict, claim_index: int) -> Dict[str, object]:
    """{better, worse, difference, error, verdict, seeds} of one claim: one seed, the error resamples
    videos (paired bootstrap); several seeds, the error of the mean of per-seed differences."""
    seeds = summary["seeds"]
    count = len(seeds["vito"])
    rows = []
    for seed_index in range(count):
        claim = claims_of(summary, seed_index)[claim_index]
        better, worse = seeds[claim.better][seed_index], seeds[claim.worse][seed_index]
        rows.append(paired_bootstrap(claim.metric, better, claim.metric_of_worse or claim.metric, worse,
                                     len(better["per_video"]["frames"]), seed=seed_index))
    sign = -1.0 if claim.lower_is_better else 1.0
    differences = [sign * (first - second) for first, second, _ in rows]
    error = rows[0][2] if count == 1 else standard_error(differences)
    return {"claim": claim, "better": float(np.mean([row[0] for row in rows])),
            "worse": float(np.mean([row[1] for row in rows])), "difference": float(np.mean(differences)),
            "error": error, "verdict": verdict(float(np.mean(differences)), error), "seeds": count}


def _attention_claim(summary: Dict) -> Optional[str]:
    """Whether the attention lies on the objects: the first seed's best stage, its share against a centred
    Gaussian's; the error pairs the clips (one seed) or spans the seeds' differences (several)."""
    vito = summary["variants"]["vito"]
    if not vito.get("attention_mass"):
        return None
    best_stage, best = max(vito["attention_mass"].items(), key=lambda item: item[1])
    baseline = summary["centred_gaussian_attention_mass"]
    runs = summary["seeds"]["vito"]
    if len(runs) > 1:
        shares = [run.get("attention_mass", {}).get(best_stage, float("nan")) for run in runs]
        best, error = float(np.mean(shares)), standard_error([share - baseline for share in shares])
        across = f"over {len(runs)} seeds"
    else:
        metric = clip_mean_metric(f"attention_mass_{best_stage}")
        _, baseline, error = paired_bootstrap(metric, vito, metric, summary["gaussian_attention"],
                                              len(vito["per_clip"]["J"]))
        across = "paired over the clips"
    iou = float(np.mean([run.get("attention_iou", {}).get(best_stage, float("nan")) for run in runs]))
    return (f"- the attention maps follow the objects: {verdict(best - baseline, error)} ({best_stage}, the stage "
            f"with the most: {100 * best:.0f}% of the attention on the objects (± {100 * error:.0f}, {across}), "
            f"which cover {100 * summary.get('object_area_fraction', float('nan')):.0f}% of the frames; "
            f"a centred Gaussian puts {100 * baseline:.0f}% there, random init "
            f"{100 * summary['variants']['random'].get('attention_mass', {}).get(best_stage, float('nan')):.0f}%. "
            f"IoU of the half-mass region with the masks: {iou:.3f} vs "
            f"{summary['centred_gaussian_attention_iou']:.3f} for the Gaussian)")


def claim_lines(summary: Dict) -> List[str]:
    """One line per claim of the paper: whether this run shows it, beyond twice the standard error."""
    lines = []
    for index in range(len(claims_of(summary, 0))):
        judged = judge(summary, index)
        claim = judged["claim"]
        show = (lambda value: f"{100 * value:.1f}%") if claim.percent else (lambda value: f"{value:.3f}")
        scale = 100 if claim.percent else 1
        unit = " points" if claim.percent else ""
        across = f"± over {judged['seeds']} seeds" if judged["seeds"] > 1 else "± paired bootstrap over videos"
        lines.append(f"- {claim.title}: {judged['verdict']} ({claim.label}: {TITLES[claim.better]} "
                     f"{show(judged['better'])} vs {TITLES[claim.worse]} {show(judged['worse'])}, "
                     f"{'improvement' if claim.lower_is_better else 'difference'} "
                     f"{scale * judged['difference']:+.{1 if claim.percent else 3}f} ± "
                     f"{scale * judged['error']:.{1 if claim.percent else 3}f}{unit}, {across})")
    attention = _attention_claim(summary)
    if attention:
        lines.append(attention)
    return lines


# What was tried for the claims that the default demo does not show (benches/RESULTS.md, "Demo v2"),
# keyed by the start of the claim's title; the report prints the note of every claim not shown.
TRIED = {
    "VITO is more robust": (
        "The default run lands just under twice its error (mCE 0.910 vs 0.988, +0.077 ± 0.041); with "
        "`--seeds 3` it holds (+0.066 ± 0.013 across seeds). Contrast "
        "and brightness take every model to chance from severity 1: the demo's views have no colour "
        "augmentation, so the features lean on absolute intensity; Δt = 0 stays at chance on clean frames, "
        "and mCE (not the relative drop) keeps it from winning by having nothing to lose."),
    "VITO is more shape-biased": (
        "Pretraining on these videos teaches texture: random init 0.43–0.50, trained models 0.15–0.30 in "
        "every run, while Δt = 0, which learns almost nothing, stays near 0.5 (decisions that follow neither "
        "cue). Tried: a drifting focus that blurs texture away between frames and keeps outlines "
        "(`--focus-change 3`), and a texture fade (the object's texture contrast drops by 50% or 90% and "
        "returns, `generate_dataset(texture_fade=...)`): both made instances harder to tell apart and the "
        "models learnt less (kNN 29–35%), without more shape."),
    "attention pooling beats": (
        "Tried: transient clutter in the videos (now the default, 3 objects each) and an entropy floor on "
        "the attention (`model.attention_entropy_floor`, now 0.5 in the demo preset), which spreads the "
        "attention over the object instead of one peak (IoU 0.02–0.07 → 0.55). Against average pooling the "
        "result swings with the schedule and the seed: +7.6 points at 600 steps, −9.9 at 1,200 on the same "
        "data, and −12.5 ± 8.5 across three seeds (VITO's kNN spans 33–49% over the seeds)."),
    "the attention maps follow": (
        "Without the entropy floor the attention collapses to one peak (half-mass IoU 0.02–0.07), on the "
        "object in some clips and off it in others."),
}


def claim_outcome(line: str) -> Tuple[str, str]:
    """(title, "yes" | "no, the opposite" | "not clearly") of a line from ``claim_lines``."""
    title, outcome = line[2:].split(": ", 1)
    return title, ("yes" if outcome.startswith("yes") else "no, the opposite" if outcome.startswith("**no**")
                   else "not clearly")


def not_shown_notes(lines: List[str]) -> List[str]:
    """"What was tried" for each claim line whose verdict is not "yes"."""
    notes = []
    for line in lines:
        title, outcome = claim_outcome(line)
        if outcome == "yes":
            continue
        for start, note in TRIED.items():
            if title.startswith(start) and note not in notes:
                notes.append(note)
                break
    return [f"- {note}" for note in notes]


def _robustness_and_bias(summary: Dict, name: str) -> Dict[str, Optional[float]]:
    """mCE, retained share above chance and shape bias of a variant's first seed (None where not measured)."""
    result, random = summary["variants"][name], summary["variants"]["random"]
    table = result.get("per_video", {})
    figures = {"mce": None, "retained": None, "shape_bias": None, "cued": None}
    if "robust_corrupted_correct" in table:
        figures["mce"] = point(mean_corruption_error(random), result, len(table["frames"]))
        robustness = result["robustness"]
        figures["retained"] = kept_above_chance(robustness["clean"], robustness["corrupted"],
                                                summary.get("num_classes", 4))
    if "shape_decisions" in table:
        figures["shape_bias"] = point(shape_bias_metric, result, len(table["frames"]))
        figures["cued"] = float((np.sum(table["shape_decisions"]) + np.sum(table["texture_decisions"]))
                                / np.sum(table["conflict_frames"]))
    return figures


def _severity_curves(summary: Dict, titles: Dict[str, str]) -> Dict[str, List[float]]:
    """{variant: accuracy at severity 0 (clean) … 5, averaged over the corruptions}."""
    curves = {}
    for name, result in summary["variants"].items():
        robustness = result.get("robustness")
        if not robustness:
            continue
        by_corruption = robustness["by_corruption"]
        levels = sorted({int(level) for entry in by_corruption.values() for level in entry})
        curves[titles[name]] = [robustness["clean"]] + [
            float(np.mean([entry[level if level in entry else str(level)] for entry in by_corruption.values()]))
            for level in levels]
    return curves


def write_report(out: Path, summary: Dict, examples: Dict, class_names: List[str]) -> Path:
    """Write the plots, results.json and report.md under ``out``; returns the report's path."""
    out = Path(out)
    variants = summary["variants"]
    titles = {name: TITLES.get(name, name) for name in variants}
    line_chart({titles[name]: curve for name, curve in summary["losses"].items()},
               "training loss (sum of the per-scale InfoNCE)", "step", out / "loss_curves.png")
    curves = _severity_curves(summary, titles)
    if curves:
        line_chart(curves, "linear-probe accuracy vs corruption severity (mean of 5 corruptions)", "severity",
                   out / "robustness.png")
    stages = sorted({stage for result in variants.values() for stage in result["attention_iou"]})
    extra = {name: _robustness_and_bias(summary, name) for name in variants}
    groups = {"kNN": {titles[n]: r["knn"] for n, r in variants.items()},
              "linear": {titles[n]: r["linear"] for n, r in variants.items()},
              "propagation J": {titles[n]: r["propagation_J"] for n, r in variants.items()},
              "shape bias": {titles[n]: extra[n]["shape_bias"] for n in variants}}
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

    seeds = len(summary.get("seeds", {}).get("vito", [None]))
    lines = ["# vito_fast demo", "",
             f"Built-in synthetic data: {len(class_names)} classes ({', '.join(class_names)}), "
             f"{summary['settings']['videos_per_class']} videos per class of {summary['settings']['num_frames']} "
             f"frames, {summary['settings'].get('clutter', 0)} transient objects in each. Each variant pretrained for {summary['steps']} steps of the `demo` preset"
             + (f", with {seeds} seeds (the table shows the first)" if seeds > 1 else "")
             + f" (estimated {summary['estimated_seconds_per_step']:.2f} s per step, model only); the whole demo took "
             f"{summary['seconds']:.0f} s. Config overrides of every variant: "
             + ", ".join(f"`{item}`" for item in summary.get("config_overrides", [])) + ".", ""]
    if summary.get("budget_note"):
        lines += [f"**Note:** {summary['budget_note']}.", ""]
    lines += ["| variant | steps | final loss | kNN top-1 | linear top-1 | kNN, attention-pooled | propagation J | "
              "mCE | kept above chance | shape bias (follows a cue) | "
              + " | ".join(f"attention on objects {stage}" for stage in stages) + " | "
              + " | ".join(f"attention IoU {stage}" for stage in stages) + " |",
              "|---|---|---|---|---|---|---|---|---|---|" + "---|" * (2 * len(stages))]
    for name, result in variants.items():
        figures = extra[name]
        lines.append(f"| {titles[name]} | {result.get('steps', 0)} | {_number(result.get('final_loss'))} | "
                     f"{_percent(result['knn'], result.get('knn_se'))} | {_percent(result['linear'], result.get('linear_se'))} | "
                     f"{_percent(result.get('knn_attention'), result.get('knn_attention_se'))} | "
                     f"{_number(result['propagation_J'])} | {_number(figures['mce'])} | "
                     f"{_percent(figures['retained'])} | {_number(figures['shape_bias'])}"
                     + ("" if figures["cued"] is None else f" ({_percent(figures['cued'])})") + " | "
                     + " | ".join(_percent(result.get("attention_mass", {}).get(stage)) for stage in stages) + " | "
                     + " | ".join(_number(result["attention_iou"].get(stage)) for stage in stages) + " |")
    lines.append("| centred Gaussian (attention baseline) | | | | | | | | | | "
                 + " | ".join(_percent(summary.get("centred_gaussian_attention_mass")) for _ in stages) + " | "
                 + " | ".join(_number(summary["centred_gaussian_attention_iou"]) for _ in stages) + " |")
    claims = claim_lines(summary)
    notes = not_shown_notes(claims)
    lines += ["", "## Does it show the paper's claims?", "", *claims, ""]
    if notes:
        lines += ["Not shown here, and what was tried (benches/RESULTS.md, \"Demo v2\", has the runs):", "", *notes, ""]
    lines += [METHODS.format(
        frames=summary["settings"].get("eval_frames_per_clip", 8),
        error=("the standard error of the mean of the per-seed differences" if seeds > 1 else
               "a paired bootstrap over videos (2,000 resamples of the videos, the same for both sides)")),
              "", "## Plots", "", "![training loss](loss_curves.png)", "", "![evaluations](evaluations.png)", ""]
    if curves:
        lines += ["![robustness](robustness.png)", ""]
    for name, file_name in pictures:
        lines += [f"Attention of *{TITLES.get(name, name)}* (rows: frames, then one row per scale):", "",
                  f"![attention {name}]({file_name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


METHODS = (
    "Small, short runs on a CPU. A claim counts as shown only when the difference exceeds twice its standard "
    "error: here {error}. With one seed that error leaves out the training run's own variation "
    "(`--seeds N` measures it). kNN (k = 10, cosine) and the linear probe use the last stage's features "
    "of {frames} frames per video (average-pooled; \"attention-pooled\": the run's own attention pool), "
    "cross-validated over 4 folds of whole videos (every video tested once by probes fitted on the others). "
    "**Robustness:** each fold's linear probe, fitted on clean frames, classifies 4 frames per video under "
    "Gaussian noise, Gaussian blur, JPEG, contrast and brightness at severities 1–5; mCE is ImageNet-C's "
    "mean corruption error with the random-init model in AlexNet's place (Σ errors over severities / the "
    "baseline's, averaged over corruptions: 1 = as bad as random features, lower is more robust), so a model "
    "at chance cannot win by having nothing to lose; \"kept above chance\" is (corrupted − chance) / "
    "(clean − chance), not shown (–) when clean accuracy is within 5 points of chance. **Shape bias:** the same probes "
    "classify cue-conflict twins of every video (its main object wearing another class's texture, same "
    "motion and masks): shape decisions / (shape + texture decisions); in brackets the share of decisions "
    "that follow either cue (a model at chance follows one in 2 of K and has a bias near 0.5 by luck). "
    "J propagates the first frame's object "
    "masks with layer-3 features. Attention on objects is the share of each scale's attention (upsampled to "
    "the frame) on the object masks; attention IoU compares the masks with the pixels holding half of the "
    "attention, so a sharp peak on an object scores high on the first and low on the second.")
