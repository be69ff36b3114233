"""The demo's report: OUT/report.md rendered from the typed results, OUT/results.json and the plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from vito_fast.demo.claims import AttentionClaim, ClaimOutcome, JudgedClaim, Verdict, judge_claims
from vito_fast.demo.metrics import robustness_figures
from vito_fast.demo.plots import write_plots
from vito_fast.demo.results import DemoSummary
from vito_fast.demo.settings import VIT_PRESET, floor_of

TITLES = {"random": "random init", "vito": "VITO", "avgpool": "VITO, average pooling", "dt0": "VITO, Δt = 0",
          "random_vit": "random init, ViT", "vit": "VITO, ViT"}
VERDICT_TEXT = {Verdict.SHOWN: "yes", Verdict.OPPOSITE: "**no** (the opposite, beyond the noise)",
                Verdict.NOT_CLEARLY: "**not clearly** (within twice the noise)"}
# where the runs behind the claims, and what was tried for those the default demo does not show, are written up
TRIED_AT = "benches/RESULTS.md, \"Demo v2\""


def _percent(value: Optional[float], error: Optional[float] = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" + ("" if error is None else f" ± {100 * error:.1f}")


def _number(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def _paired_line(judged: JudgedClaim) -> str:
    claim = judged.claim
    show = (lambda value: f"{100 * value:.1f}%") if claim.percent else (lambda value: f"{value:.3f}")
    scale, digits, unit = (100, 1, " points") if claim.percent else (1, 3, "")
    across = f"± over {judged.seeds} seeds" if judged.seeds > 1 else "± paired bootstrap over videos"
    return (f"- {claim.title}: {VERDICT_TEXT[judged.verdict]} ({claim.label}: {TITLES[claim.better]} "
            f"{show(judged.better)} vs {TITLES[claim.worse]} {show(judged.worse)}, "
            f"{'improvement' if claim.lower_is_better else 'difference'} "
            f"{scale * judged.difference:+.{digits}f} ± {scale * judged.error:.{digits}f}{unit}, {across})")


def _attention_line(judged: AttentionClaim) -> str:
    across = f"over {judged.seeds} seeds" if judged.seeds > 1 else "paired over the clips"
    return (f"- {judged.title}: {VERDICT_TEXT[judged.verdict]} ({judged.stage}, the stage "
            f"with the most: {100 * judged.share:.0f}% of the attention on the objects (± {100 * judged.error:.0f}, "
            f"{across}), which cover {100 * judged.object_area_fraction:.0f}% of the frames; "
            f"a centred Gaussian puts {100 * judged.gaussian_share:.0f}% there, random init "
            f"{100 * judged.random_share:.0f}%. IoU of the half-mass region with the masks: {judged.iou:.3f} vs "
            f"{judged.gaussian_iou:.3f} for the Gaussian)")


def claim_line(judged: ClaimOutcome) -> str:
    """One Markdown line: the claim, its verdict and its figures."""
    return _attention_line(judged) if isinstance(judged, AttentionClaim) else _paired_line(judged)


def not_shown_line(judged: List[ClaimOutcome]) -> Optional[str]:
    """The line that names the claims not shown and points to what was tried for them (None: all shown)."""
    missing = [item.title for item in judged if item.verdict is not Verdict.SHOWN]
    if not missing:
        return None
    return (f"Not shown here: {'; '.join(missing)}. What was tried for them, and the runs, is in {TRIED_AT}.")


def write_report(out: Path, summary: DemoSummary, examples: Dict, class_names: List[str]) -> Path:
    """Write the plots, results.json and report.md under ``out``; returns the report's path."""
    out = Path(out)
    variants = summary.variants
    titles = {name: TITLES.get(name, name) for name in variants}
    stages = sorted({stage for result in variants.values() for stage in result.attention_iou})
    figures = {name: robustness_figures(result, variants[floor_of(name)], summary.num_classes)
               for name, result in variants.items()}
    plots = write_plots(out, summary, figures, examples, titles, stages)
    (out / "results.json").write_text(json.dumps(summary.to_json(), indent=2, default=float) + "\n")

    settings, seeds = summary.settings, len(summary.seeds["vito"])
    lines = ["# vito_fast demo", "",
             f"Built-in synthetic data: {len(class_names)} classes ({', '.join(class_names)}), "
             f"{settings.videos.videos_per_class} videos per class of {settings.videos.num_frames} frames, "
             f"{settings.videos.clutter} transient objects in each. Each variant pretrained for "
             f"{summary.steps} steps of the `demo` preset"
             + (f", with {seeds} seeds (the table shows the first)" if seeds > 1 else "")
             + f" (estimated {summary.estimated_seconds_per_step:.2f} s per step, model only); the whole demo took "
             f"{summary.seconds:.0f} s. Config overrides of every variant: "
             + ", ".join(f"`{item}`" for item in summary.config_overrides) + ".", ""]
    if summary.budget_note:
        lines += [f"**Note:** {summary.budget_note}.", ""]
    if "vit" in variants:
        lines += [VIT_ROWS.format(preset=VIT_PRESET), ""]
    lines += ["| variant | steps | final loss | kNN top-1 | linear top-1 | kNN, attention-pooled | propagation J | "
              "mCE | kept above chance | shape bias (follows a cue) | "
              + " | ".join(f"attention on objects {stage}" for stage in stages) + " | "
              + " | ".join(f"attention IoU {stage}" for stage in stages) + " |",
              "|---|---|---|---|---|---|---|---|---|---|" + "---|" * (2 * len(stages))]
    for name, result in variants.items():
        figure = figures[name]
        lines.append(f"| {titles[name]} | {result.steps} | {_number(result.final_loss)} | "
                     f"{_percent(result.knn, result.knn_se)} | {_percent(result.linear, result.linear_se)} | "
                     f"{_percent(result.knn_attention, result.knn_attention_se)} | "
                     f"{_number(result.propagation_J)} | {_number(figure.mce)} | "
                     f"{_percent(figure.retained)} | {_number(figure.shape_bias)}"
                     + ("" if figure.cued is None else f" ({_percent(figure.cued)})") + " | "
                     + " | ".join(_percent(result.attention_mass.get(stage)) for stage in stages) + " | "
                     + " | ".join(_number(result.attention_iou.get(stage)) for stage in stages) + " |")
    lines.append("| centred Gaussian (attention baseline) | | | | | | | | | | "
                 + " | ".join(_percent(summary.centred_gaussian_attention_mass) for _ in stages) + " | "
                 + " | ".join(_number(summary.centred_gaussian_attention_iou) for _ in stages) + " |")
    judged = judge_claims(summary)
    lines += ["", "## Does it show the paper's claims?", "", *[claim_line(item) for item in judged], ""]
    not_shown = not_shown_line(judged)
    if not_shown:
        lines += [not_shown, ""]
    lines += [METHODS.format(
        frames=settings.eval_frames_per_clip,
        error=("the standard error of the mean of the per-seed differences" if seeds > 1 else
               "a paired bootstrap over videos (2,000 resamples of the videos, the same for both sides)")),
              "", "## Plots", "", "![training loss](loss_curves.png)", "", "![evaluations](evaluations.png)", ""]
    if plots.robustness:
        lines += ["![robustness](robustness.png)", ""]
    for name, file_name in plots.attention:
        lines += [f"Attention of *{TITLES.get(name, name)}* (rows: frames, then one row per scale):", "",
                  f"![attention {name}]({file_name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


VIT_ROWS = (
    "The ViT rows run VITO on a tiny timm Vision Transformer (the `{preset}` preset: timm's vit_tiny_patch16_224 "
    "cut to patch 8, 96 wide, 4 blocks; attention pools over the patch tokens of blocks 3 and 4; AdamW) with the "
    "same steps, data and seed, against an untrained ViT of their own (their mCE is relative to it); the "
    "overrides above that set the model or the optimiser are the ResNet rows' only. They show whether the "
    "method learns on a ViT's tokens, not how a ViT compares with a ResNet: at 64 px and a thousand steps "
    "neither is near what it would reach at scale.")

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
    "(clean − chance), not shown (–) when clean accuracy is within 5 points of chance. **Shape bias:** "
    "the same probes classify cue-conflict twins of every video (its main object wearing another class's texture, same "
    "motion and masks): shape decisions / (shape + texture decisions); in brackets the share of decisions "
    "that follow either cue (a model at chance follows one in 2 of K and has a bias near 0.5 by luck). "
    "J propagates the first frame's object "
    "masks with the first tapped stage's features (layer 3; a ViT's earlier block). Attention on objects is the share of each scale's attention (upsampled to "
    "the frame) on the object masks; attention IoU compares the masks with the pixels holding half of the "
    "attention, so a sharp peak on an object scores high on the first and low on the second.")
