"""The paper's claims, judged on one demo: each a ``Verdict`` with its figures, beyond twice the noise or not.

A claim compares two variants on one metric (``Claim``); with one seed its error is a paired bootstrap
over videos, with several the standard error of the mean of the per-seed differences (``judge``). The
attention claim compares VITO's attention with a centred Gaussian's (``judge_attention``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np

from vito_fast.demo.metrics import (Metric, accuracy_metric, attention_mass_metric, mean_corruption_error,
                                    paired_bootstrap, shape_bias_metric, standard_error)
from vito_fast.demo.results import DemoSummary


class Verdict(enum.Enum):
    """Whether a run shows a claim: only a difference beyond twice its standard error counts."""

    SHOWN = "yes"
    NOT_CLEARLY = "not clearly"  # within twice the noise
    OPPOSITE = "no, the opposite"  # beyond the noise, the other way

    @classmethod
    def of(cls, difference: float, standard_error: float) -> "Verdict":
        """SHOWN when ``difference`` > 2 standard errors, OPPOSITE below −2, else NOT_CLEARLY."""
        if difference > 2 * standard_error:
            return cls.SHOWN
        if difference < -2 * standard_error:
            return cls.OPPOSITE
        return cls.NOT_CLEARLY


@dataclass
class Claim:
    """One claim of the paper: ``better`` beats ``worse`` on ``metric`` (see ``demo.metrics``)."""

    title: str
    better: str  # variant names
    worse: str
    metric: Metric
    label: str  # what the numbers are
    lower_is_better: bool = False
    metric_of_worse: Optional[Metric] = None  # when the two sides are scored differently
    percent: bool = True


@dataclass
class JudgedClaim:
    """A claim's figures on this demo (means over the seeds) and its verdict."""

    claim: Claim
    better: float  # the metric of the better side
    worse: float
    difference: float  # signed so that a positive difference supports the claim
    error: float  # standard error of the difference
    seeds: int

    @property
    def title(self) -> str:
        return self.claim.title

    @property
    def verdict(self) -> Verdict:
        return Verdict.of(self.difference, self.error)


@dataclass
class AttentionClaim:
    """Whether VITO's attention lies on the objects: its best stage's share there against a centred Gaussian's."""

    stage: str  # the stage with the most attention on the objects (first seed)
    share: float  # VITO's share of the attention on the objects at ``stage`` (mean over the seeds)
    error: float  # standard error of share − gaussian_share
    seeds: int
    gaussian_share: float
    random_share: float  # random init's (first seed)
    object_area_fraction: float  # of the frames
    iou: float  # half-mass region against the masks, mean over the seeds
    gaussian_iou: float
    title: str = "the attention maps follow the objects"

    @property
    def verdict(self) -> Verdict:
        return Verdict.of(self.share - self.gaussian_share, self.error)


ClaimOutcome = Union[JudgedClaim, AttentionClaim]


def claims_of(summary: DemoSummary, seed_index: int) -> List[Claim]:
    """The claims, with metrics bound to seed ``seed_index``'s runs (mCE divides by that seed's random init)."""
    seeds = summary.seeds
    counts = seeds["vito"][seed_index].per_video
    found = [Claim("VITO beats random init (kNN)", "vito", "random", accuracy_metric("knn"), "kNN top-1"),
             Claim("VITO beats random init (linear probe)", "vito", "random", accuracy_metric("linear"),
                   "linear top-1"),
             Claim("video pairs (Δt > 0) beat same-frame pairs (Δt = 0)", "vito", "dt0", accuracy_metric("knn"),
                   "kNN top-1")]
    if counts.robust_corrupted_correct is not None:
        found.append(Claim("VITO is more robust to corruptions than same-frame pretraining", "vito", "dt0",
                           mean_corruption_error(seeds["random"][seed_index]),
                           "mCE (corruption error / random init's; lower is better)", lower_is_better=True,
                           percent=False))
    if counts.shape_decisions is not None:
        found.append(Claim("VITO is more shape-biased than same-frame pretraining", "vito", "dt0", shape_bias_metric,
                           "shape bias", percent=False))
    if "knn_attention" in counts.correct:
        found.append(Claim("attention pooling beats average pooling (each model's own pooling)", "vito", "avgpool",
                           accuracy_metric("knn_attention"), "kNN top-1, VITO attention-pooled vs average "
                           "pooling", metric_of_worse=accuracy_metric("knn")))
    found.append(Claim("attention pooling beats average pooling (both average-pooled at evaluation)", "vito",
                       "avgpool", accuracy_metric("knn"), "kNN top-1"))
    if "vit" in seeds:  # the ViT rows (issue 28), against the ViT's own untrained floor
        found += [Claim("VITO on a ViT beats its random init (kNN)", "vit", "random_vit", accuracy_metric("knn"),
                        "kNN top-1"),
                  Claim("VITO on a ViT beats its random init (linear probe)", "vit", "random_vit",
                        accuracy_metric("linear"), "linear top-1")]
    return found


def judge(summary: DemoSummary, claim_index: int) -> JudgedClaim:
    """One claim: with one seed the error resamples videos (paired bootstrap); with several, the error of
    the mean of the per-seed differences."""
    seeds = summary.seeds
    count = len(seeds["vito"])
    rows = []
    for seed_index in range(count):
        claim = claims_of(summary, seed_index)[claim_index]
        better, worse = seeds[claim.better][seed_index], seeds[claim.worse][seed_index]
        rows.append(paired_bootstrap(claim.metric, better, claim.metric_of_worse or claim.metric, worse,
                                     better.per_video.videos, seed=seed_index))
    sign = -1.0 if claim.lower_is_better else 1.0
    differences = [sign * (first - second) for first, second, _ in rows]
    error = rows[0][2] if count == 1 else standard_error(differences)
    return JudgedClaim(claim, better=float(np.mean([row[0] for row in rows])),
                       worse=float(np.mean([row[1] for row in rows])), difference=float(np.mean(differences)),
                       error=error, seeds=count)


def judge_attention(summary: DemoSummary) -> Optional[AttentionClaim]:
    """The attention claim (None when VITO's attention was not scored): the first seed's best stage; the
    error pairs the clips (one seed) or spans the seeds' differences (several)."""
    vito = summary.variants["vito"]
    if not vito.attention_mass:
        return None
    stage, share = max(vito.attention_mass.items(), key=lambda item: item[1])
    baseline = summary.centred_gaussian_attention_mass
    runs = summary.seeds["vito"]
    if len(runs) > 1:
        shares = [run.attention_mass.get(stage, float("nan")) for run in runs]
        share, error = float(np.mean(shares)), standard_error([value - baseline for value in shares])
    else:
        metric = attention_mass_metric(stage)
        _, baseline, error = paired_bootstrap(metric, vito, metric, summary.gaussian_attention, len(vito.per_clip.J))
    return AttentionClaim(
        stage=stage, share=share, error=error, seeds=len(runs), gaussian_share=baseline,
        random_share=summary.variants["random"].attention_mass.get(stage, float("nan")),
        object_area_fraction=summary.object_area_fraction,
        iou=float(np.mean([run.attention_iou.get(stage, float("nan")) for run in runs])),
        gaussian_iou=summary.centred_gaussian_attention_iou)


def judge_claims(summary: DemoSummary) -> List[ClaimOutcome]:
    """Every claim this demo can judge, in the report's order."""
    judged: List[ClaimOutcome] = [judge(summary, index) for index in range(len(claims_of(summary, 0)))]
    attention = judge_attention(summary)
    if attention is not None:
        judged.append(attention)
    return judged
