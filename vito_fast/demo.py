"""The built-in demo: generate the synthetic videos, pretrain VITO and its ablations, evaluate, report.

    run_demo(DemoSettings(out_dir="vito-demo"))   # what `vito-fast demo` runs (15 minutes a seed)

Variants (each pretrained for the same number of steps, from the same initialisation):

- ``random``   the untrained model (a step-0 checkpoint): the floor every method must clear;
- ``vito``     the demo preset: frame pairs Δt apart (uniform in the configured range), attention pools;
- ``avgpool``  the same with average pooling instead of attention (``model.pooling=average``);
- ``dt0``      the same with Δt = 0: both views from one frame (image-level BYOL-style augmentation).

Evaluations (``vito_fast.demo_eval``, frozen features): kNN and linear-probe top-1 on frames,
cross-validated over folds of whole videos, on average- and attention-pooled features; robustness
(mCE under 5 corruptions × 5 severities, against random init); shape bias on cue-conflict twins;
label-propagation J; and the share of the attention on the objects. Every score is kept per video,
so each claim's error is a paired bootstrap over videos, or, with ``seeds`` > 1, the standard error
across seeds (``vito_fast.demo_report``). The schedule is fixed (``DEFAULT_STEPS`` per variant), so
the claims do not depend on the machine's speed; it is cut, and the report says so, only when a
timed step says the runs would overrun the time budget.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from vito_fast.eval.features import load_manifest_frames
from vito_fast.synthetic.builtin import BuiltinVideos


# LARS moves each layer by about lr · trust_coefficient of its norm per step: with the preset's
# η = 1e-3 and lr = 0.0625 a 50-step run changes the weights by 0.3% and learns nothing measurable.
# Measured here (40 steps, 4 videos): propagation J 0.35 → 0.47 and linear 22% → 47% with these;
# base_lr 16 overshoots (kNN below chance). The user's overrides come after and win.
SHORT_RUN_OPTIMISER = ["optim.trust_coefficient=0.02", "optim.base_lr=4.0"]


@dataclass
class DemoSettings:
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


# Config overrides of each trained variant (the random-init floor is not trained).
VARIANTS: Dict[str, List[str]] = {
    "vito": [],
    "avgpool": ["model.pooling=average"],
    "dt0": ["data.views.delta_seconds=[0.0,0.0]"],
}


def seconds_per_step(config) -> float:
    """Time of one training step (forward, backward, EMA) of the config's model on random inputs."""
    from vito_fast.model.vito import VITO

    device = "cuda" if config.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = VITO.from_config(config.model).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    views = torch.randn(2, config.data.batch_size, 3, config.data.image_size, config.data.image_size, device=device)
    timings = []
    for _ in range(8):  # the first two warm up; the fastest of the rest (what the machine can do when
        # nothing else runs: a passing load must not cut the schedule, see choose_steps)
        started = time.perf_counter()
        loss, _ = model(views[0], views[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_target(0.99)
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    return float(np.min(timings[2:]))


def write_untrained_run(config, run_dir: Path) -> None:
    """A step-0 checkpoint of the model as `train` initialises it (seed ``train.seed``)."""
    from vito_fast.model.vito import VITO
    from vito_fast.train.checkpoint import save_model_checkpoint

    torch.manual_seed(config.train.seed)
    save_model_checkpoint(run_dir, model=VITO.from_config(config.model), config=config)


# The default schedule, the same on every machine (a CPU step of the demo preset: 0.13 s on the 2-core
# CPU of benches/RESULTS.md, data loading included), so that a loaded machine shows what a quiet one does.
DEFAULT_STEPS = 1200
# A training step in a run, data loading and start-up included, over ``seconds_per_step`` (model only):
# measured 2.3x on the 2-core CPU; and the seconds of one run's evaluations (measured 7-9 s).
STEP_OVERHEAD = 2.5
EVALUATION_SECONDS = 15.0


def _run_name(variant: str, seed_index: int) -> str:
    """Folder of a variant's run under OUT/runs: the first seed keeps the bare name."""
    return variant if seed_index == 0 else f"{variant}-seed{seed_index}"


def choose_steps(settings: DemoSettings, estimate: float, seconds_left: float) -> Tuple[int, Optional[str]]:
    """(pretraining steps per variant and seed, a note when the time budget cut them).

    The default is a fixed ``DEFAULT_STEPS``, so that the claims do not depend on the machine's
    speed; it is lowered only when the estimate says the runs would overrun the budget.
    """
    if settings.steps is not None:
        return settings.steps, None
    runs = len(VARIANTS) * settings.seeds
    reserve = EVALUATION_SECONDS * (runs + settings.seeds)
    affordable = int(max(0.0, seconds_left - reserve) / (STEP_OVERHEAD * estimate * runs))
    if affordable >= DEFAULT_STEPS:
        return DEFAULT_STEPS, None
    steps = max(3, affordable)
    return steps, (f"this machine affords {steps} of the default {DEFAULT_STEPS} steps per run within "
                   f"{settings.budget_minutes():g} minutes (an estimated {estimate:.3f} s per step): claims that need the "
                   "full schedule may not show; give --minutes more, or run on a GPU")


def run_demo(settings: DemoSettings) -> Dict[str, object]:
    """Run everything and write OUT/report.md, OUT/results.json and the PNGs; returns the results."""
    from vito_fast.demo_eval import evaluate_run, evaluation_data, gaussian_attention_result, stages_of
    from vito_fast.synthetic.videos import SyntheticDataset, generate_dataset
    from vito_fast.train.config import load_config
    from vito_fast.train.loop import train

    if settings.seeds < 1:
        raise ValueError(f"demo: seeds must be at least 1, not {settings.seeds}")
    started = time.perf_counter()
    deadline = started + 60 * settings.budget_minutes()
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # 1. Data: the built-in videos (reused when a previous demo left the same settings).
    data_root = out / "data"
    wanted = settings.data_settings()
    index_path = data_root / "dataset.json"
    previous = json.loads(index_path.read_text())["settings"] if index_path.is_file() else {}
    if all(previous.get(key) == (list(value) if isinstance(value, tuple) else value) for key, value in wanted.items()):
        dataset = SyntheticDataset.open(data_root)
    else:
        for stale in data_root.glob("cue_conflict_*.npz"):
            stale.unlink()
        dataset = generate_dataset(data_root, **wanted, progress=settings.progress)
    frames = load_manifest_frames(dataset.manifest_path, frames_per_clip=min(settings.eval_frames_per_clip,
                                                                             settings.videos.num_frames),
                                  class_names=dataset.class_names)
    data = evaluation_data(dataset, frames, eval_videos=settings.eval_videos, progress=settings.progress)
    # 2. Variants and the step count.
    base = ["data.path=" + str(dataset.manifest_path), "train.image_every=0",
            f"train.progress={str(settings.progress).lower()}", *SHORT_RUN_OPTIMISER, *settings.overrides]
    estimate = seconds_per_step(load_config(preset="demo", overrides=base))
    steps, budget_note = choose_steps(settings, estimate, deadline - time.perf_counter())
    base += [f"train.steps={steps}", f"train.checkpoint_every={steps}", f"optim.warmup_steps={max(1, steps // 10)}"]
    # 3. Per seed: the untrained floor, then pretraining and evaluation of every variant.
    seeds: Dict[str, List[Dict[str, object]]] = {name: [] for name in ("random", *VARIANTS)}
    losses: Dict[str, List[float]] = {}
    examples = {}
    for seed_index in range(settings.seeds):
        seeded = base + [f"train.seed={settings.seed + seed_index}"]
        random_dir = out / "runs" / _run_name("random", seed_index)
        write_untrained_run(load_config(preset="demo", overrides=seeded), random_dir)
        result, pictures = evaluate_run(random_dir, data, seed=settings.seed)
        result.update(steps=0, final_loss=None, run=str(random_dir))
        seeds["random"].append(result)
        examples.setdefault("random", pictures)
        for name, overrides in VARIANTS.items():
            run_dir = out / "runs" / _run_name(name, seed_index)
            train_started = time.perf_counter()
            outcome = train(load_config(preset="demo", overrides=seeded + overrides), run_dir)
            train_seconds = time.perf_counter() - train_started
            result, pictures = evaluate_run(run_dir, data, seed=settings.seed)
            result.update(steps=outcome.step, final_loss=outcome.losses[-1] if outcome.losses else None,
                          train_seconds=round(train_seconds, 1), run=str(run_dir))
            seeds[name].append(result)
            losses.setdefault(name, outcome.losses)
            examples.setdefault(name, pictures)
    masks = [instances > 0 for _, instances in data.clips.values()]
    stages = stages_of(seeds["vito"][0:1]) or ["frame"]  # the Gaussian is the same map at every stage
    gaussian = gaussian_attention_result(data.clips, stages)
    summary = {"settings": settings.record(), "steps": steps, "estimated_seconds_per_step": estimate,
               "budget_note": budget_note, "config_overrides": base[1:],
               "variants": {name: runs[0] for name, runs in seeds.items()},
               "seeds": seeds, "num_classes": len(dataset.class_names),
               "gaussian_attention": gaussian,
               "centred_gaussian_attention_iou": float(np.mean(gaussian["per_clip"][f"attention_iou_{stages[0]}"])),
               "centred_gaussian_attention_mass": float(np.mean(gaussian["per_clip"][f"attention_mass_{stages[0]}"])),
               "object_area_fraction": float(np.mean([mask.mean() for mask in masks])), "losses": losses,
               "seconds": round(time.perf_counter() - started, 1)}
    from vito_fast.demo_report import write_report

    write_report(out, summary, examples, dataset.class_names)
    return summary
