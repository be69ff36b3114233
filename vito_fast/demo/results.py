"""The demo's results, typed: one run's evaluation (``VariantResult``) and the whole demo (``DemoSummary``).

``to_json()`` gives each as OUT/results.json holds it, with the keys and their order unchanged since the
demo first wrote the file, so older results and the figures in benches/RESULTS.md stay comparable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from vito_fast.demo.settings import DemoSettings


@dataclass
class PerVideoCounts:
    """Counts per video (in the order of the evaluation's videos): what a claim's bootstrap resamples."""

    frames: List[float]  # probe frames of each video
    correct: Dict[str, List[float]]  # probe ("knn", "linear", "knn_attention", ...) -> frames it gets right
    robust_frames: Optional[List[float]] = None  # frames classified under corruption; None: not measured
    robust_clean_correct: Optional[List[float]] = None
    robust_corrupted_correct: Optional[List[List[float]]] = None  # (videos, corruptions), all severities summed
    shape_decisions: Optional[List[float]] = None  # cue-conflict twins classified by shape; None: no twins
    texture_decisions: Optional[List[float]] = None
    conflict_frames: Optional[List[float]] = None

    @property
    def videos(self) -> int:
        return len(self.frames)

    def to_json(self) -> Dict[str, object]:
        table: Dict[str, object] = {"frames": self.frames}
        table.update({f"{probe}_correct": counts for probe, counts in self.correct.items()})
        for name in ("robust_frames", "robust_clean_correct", "robust_corrupted_correct", "shape_decisions",
                     "texture_decisions", "conflict_frames"):
            if getattr(self, name) is not None:
                table[name] = getattr(self, name)
        return table


@dataclass
class ClipScores:
    """Scores per evaluation clip: propagation J and, per stage, the attention's IoU and share on the objects."""

    J: List[float] = field(default_factory=list)
    attention_iou: Dict[str, List[float]] = field(default_factory=dict)
    attention_mass: Dict[str, List[float]] = field(default_factory=dict)

    def to_json(self) -> Dict[str, List[float]]:
        table = {"J": self.J}
        for stage in self.attention_iou:
            table[f"attention_iou_{stage}"] = self.attention_iou[stage]
            table[f"attention_mass_{stage}"] = self.attention_mass[stage]
        return table


@dataclass
class GaussianAttention:
    """A pseudo-run whose attention is a centred Gaussian on every clip: the attention claim's baseline."""

    per_clip: ClipScores  # the same scores under every stage's name; no J

    def to_json(self) -> Dict[str, object]:
        table = {}
        for stage in self.per_clip.attention_mass:
            table[f"attention_mass_{stage}"] = self.per_clip.attention_mass[stage]
            table[f"attention_iou_{stage}"] = self.per_clip.attention_iou[stage]
        return {"per_clip": table}


@dataclass
class RobustnessResult:
    """Linear-probe accuracy on the robustness frames, clean and under the built-in corruptions."""

    clean: float
    by_corruption: Dict[str, Dict[int, float]]  # corruption -> severity -> accuracy
    corrupted: float  # over every corruption and severity

    def to_json(self) -> Dict[str, object]:
        return {"clean": self.clean, "by_corruption": self.by_corruption, "corrupted": self.corrupted}


@dataclass
class VariantResult:
    """One run's evaluation (``demo.evaluate.evaluate_run``): totals, their errors over videos, and the
    per-video and per-clip counts the claims resample. Accuracies are shares in [0, 1]."""

    knn: float
    knn_se: float
    linear: float
    linear_se: float
    propagation_J: float
    propagation_J_se: float
    per_video: PerVideoCounts
    per_clip: ClipScores
    knn_attention: Optional[float] = None  # on attention-pooled features; None: the run pools by average
    knn_attention_se: Optional[float] = None
    linear_attention: Optional[float] = None
    linear_attention_se: Optional[float] = None
    robustness: Optional[RobustnessResult] = None
    attention_iou: Dict[str, float] = field(default_factory=dict)  # stage -> mean over the clips
    attention_iou_se: Dict[str, float] = field(default_factory=dict)
    attention_mass: Dict[str, float] = field(default_factory=dict)
    attention_mass_se: Dict[str, float] = field(default_factory=dict)
    # the run: its training steps (0: the untrained floor), last loss, training time and folder
    steps: int = 0
    final_loss: Optional[float] = None
    train_seconds: Optional[float] = None
    run: str = ""

    def to_json(self) -> Dict[str, object]:
        record: Dict[str, object] = {"knn": self.knn, "knn_se": self.knn_se, "linear": self.linear,
                                     "linear_se": self.linear_se}
        if self.knn_attention is not None:
            record.update(knn_attention=self.knn_attention, knn_attention_se=self.knn_attention_se,
                          linear_attention=self.linear_attention, linear_attention_se=self.linear_attention_se)
        if self.robustness is not None:
            record["robustness"] = self.robustness.to_json()
        record.update(propagation_J=self.propagation_J, propagation_J_se=self.propagation_J_se,
                      attention_iou=self.attention_iou, attention_iou_se=self.attention_iou_se,
                      attention_mass=self.attention_mass, attention_mass_se=self.attention_mass_se,
                      per_video=self.per_video.to_json(), per_clip=self.per_clip.to_json(), steps=self.steps,
                      final_loss=self.final_loss)
        if self.train_seconds is not None:
            record["train_seconds"] = self.train_seconds
        record["run"] = self.run
        return record


@dataclass
class DemoSummary:
    """Everything one demo measured (``run_demo`` returns it; OUT/results.json is its ``to_json()``)."""

    settings: DemoSettings
    steps: int  # pretraining steps per variant and seed
    estimated_seconds_per_step: float  # model only, what the schedule was chosen by
    budget_note: Optional[str]  # why the steps were cut; None: the default schedule ran
    config_overrides: List[str]  # of every variant
    seeds: Dict[str, List[VariantResult]]  # variant -> one result per training seed
    num_classes: int
    gaussian_attention: GaussianAttention
    centred_gaussian_attention_iou: float  # the Gaussian's mean over the clips
    centred_gaussian_attention_mass: float
    object_area_fraction: float  # share of the frames the objects cover, mean over the clips
    losses: Dict[str, List[float]]  # variant -> first seed's training loss per step
    seconds: float  # the whole demo

    @property
    def variants(self) -> Dict[str, VariantResult]:
        """Each variant's first seed (what the report's table shows)."""
        return {name: runs[0] for name, runs in self.seeds.items()}

    def to_json(self) -> Dict[str, object]:
        return {"settings": self.settings.record(), "steps": self.steps,
                "estimated_seconds_per_step": self.estimated_seconds_per_step, "budget_note": self.budget_note,
                "config_overrides": self.config_overrides,
                "variants": {name: result.to_json() for name, result in self.variants.items()},
                "seeds": {name: [result.to_json() for result in runs] for name, runs in self.seeds.items()},
                "num_classes": self.num_classes, "gaussian_attention": self.gaussian_attention.to_json(),
                "centred_gaussian_attention_iou": self.centred_gaussian_attention_iou,
                "centred_gaussian_attention_mass": self.centred_gaussian_attention_mass,
                "object_area_fraction": self.object_area_fraction, "losses": self.losses, "seconds": self.seconds}
