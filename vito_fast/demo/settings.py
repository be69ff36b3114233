"""What a demo runs: its settings, the variants and the schedule (fixed steps, cut only to fit the budget)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from vito_fast.synthetic.builtin import BuiltinVideos

# LARS moves each layer by about lr · trust_coefficient of its norm per step: with the preset's
# η = 1e-3 and lr = 0.0625 a 50-step run changes the weights by 0.3% and learns nothing measurable.
# Measured here (40 steps, 4 videos): propagation J 0.35 → 0.47 and linear 22% → 47% with these;
# base_lr 16 overshoots (kNN below chance). The user's overrides come after and win.
SHORT_RUN_OPTIMISER = ["optim.trust_coefficient=0.02", "optim.base_lr=4.0"]

# Config overrides of each trained variant (the random-init floor is not trained).
VARIANTS: Dict[str, List[str]] = {
    "vito": [],
    "avgpool": ["model.pooling=average"],
    "dt0": ["data.views.delta_seconds=[0.0,0.0]"],
}

# The ViT rows (issue 28): timm's ViT family cut to the vit_demo preset's size (patch 8, 96 wide, 4 blocks;
# its step costs about what the ResNet's does), trained with the same schedule, data and seeds, against an
# untrained ViT of its own. They take the vit_demo preset's model and optimiser (AdamW): the ResNet rows'
# short-run LARS values, and model.* / optim.* overrides given to the demo, do not apply to them.
VIT_PRESET = "vit_demo"
VIT_FLOORS: Dict[str, str] = {"vit": "random_vit"}  # trained ViT variant -> its untrained floor


def floor_of(variant: str) -> str:
    """The untrained run a variant is measured against: the ViT's own for the ViT rows (a floor, its own)."""
    if variant in VIT_FLOORS.values():
        return variant
    return VIT_FLOORS.get(variant, "random")


def vit_overrides(overrides: List[str]) -> List[str]:
    """Of the overrides every ResNet variant gets, those the ViT rows take too (not model.* or optim.*)."""
    return [item for item in overrides if not item.startswith(("model.", "optim."))]


# The default schedule, the same on every machine (a CPU step of the demo preset: 0.13 s on the 2-core
# CPU of benches/RESULTS.md, data loading included), so that a loaded machine shows what a quiet one does.
DEFAULT_STEPS = 1200
# A training step in a run, data loading and start-up included, over ``seconds_per_step`` (model only):
# measured 2.3x on the 2-core CPU; and the seconds of one run's evaluations (measured 7-9 s).
STEP_OVERHEAD = 2.5
EVALUATION_SECONDS = 15.0


@dataclass
class DemoSettings:
    """What one demo runs: the options of `vito-fast demo`."""

    out_dir: str = "vito-demo"
    minutes: Optional[float] = None  # wall-clock budget for the whole demo; None: 15 per seed
    # the built-in videos (vito_fast.synthetic.builtin holds the values and why they are so); their
    # seed is `seed` below
    videos: BuiltinVideos = field(default_factory=BuiltinVideos)
    eval_frames_per_clip: int = 8
    steps: Optional[int] = None  # pretraining steps per variant; None: DEFAULT_STEPS, fewer if over budget
    seeds: int = 1  # training seeds per variant; with 2 or more, claims take their error across seeds
    overrides: List[str] = field(default_factory=list)  # extra config overrides for every variant
    eval_videos: int = 16  # videos used for propagation and the attention scores, spread over the classes
    vit: bool = True  # also the ViT rows (VIT_PRESET, needs timm: skipped, and said so, without it)
    seed: int = 0
    progress: bool = True

    def budget_minutes(self) -> float:
        return self.minutes if self.minutes is not None else 15.0 * self.seeds

    def data_settings(self) -> Dict[str, object]:
        """The ``generate_dataset`` keywords of the built-in videos (``dataset.json`` keeps them too)."""
        return dataclasses.replace(self.videos, seed=self.seed).generate_kwargs()

    def record(self) -> Dict[str, object]:
        """The settings as one flat dict (results.json's "settings": the videos' beside the demo's)."""
        flat = dataclasses.asdict(self)
        flat.update(flat.pop("videos"), seed=self.seed)
        return flat


def choose_steps(settings: DemoSettings, estimate: float, seconds_left: float,
                 vit_estimate: float = 0.0) -> Tuple[int, Optional[str]]:
    """(pretraining steps per variant and seed, a note when the time budget cut them).

    The default is a fixed ``DEFAULT_STEPS``, so that the claims do not depend on the machine's
    speed; it is lowered only when the estimate says the runs would overrun the budget. ``estimate``
    is a ResNet variant's model-only step, ``vit_estimate`` the ViT row's (0: no ViT rows).
    """
    if settings.steps is not None:
        return settings.steps, None
    runs = len(VARIANTS) * settings.seeds
    vit_runs = len(VIT_FLOORS) * settings.seeds if vit_estimate > 0 else 0
    reserve = EVALUATION_SECONDS * (runs + settings.seeds + 2 * vit_runs)
    affordable = int(max(0.0, seconds_left - reserve) / (STEP_OVERHEAD * (estimate * runs + vit_estimate * vit_runs)))
    if affordable >= DEFAULT_STEPS:
        return DEFAULT_STEPS, None
    steps = max(3, affordable)
    return steps, (f"this machine affords {steps} of the default {DEFAULT_STEPS} steps per run within "
                   f"{settings.budget_minutes():g} minutes (an estimated {estimate:.3f} s per step): claims that "
                   "need the full schedule may not show; give --minutes more, or run on a GPU")
