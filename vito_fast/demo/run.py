"""``run_demo``: the built-in videos, then per seed the untrained floor and every variant trained and scored."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from vito_fast.demo.data import evaluation_data, gaussian_attention
from vito_fast.demo.evaluate import evaluate_run, stages_of
from vito_fast.demo.report import write_report
from vito_fast.demo.results import DemoSummary, VariantResult
from vito_fast.demo.settings import (SHORT_RUN_OPTIMISER, VARIANTS, VIT_FLOORS, VIT_PRESET, DemoSettings,
                                     choose_steps, vit_overrides)
from vito_fast.eval.features import load_manifest_frames


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


def run_name(variant: str, seed_index: int) -> str:
    """Folder of a variant's run under OUT/runs: the first seed keeps the bare name."""
    return variant if seed_index == 0 else f"{variant}-seed{seed_index}"


def timm_missing() -> Optional[str]:
    """Why the ViT rows cannot run here (None: timm imports)."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return "the ViT rows were skipped: they need timm (pip install 'vito_fast[vit]')"
    return None


def run_demo(settings: DemoSettings) -> DemoSummary:
    """Run everything and write OUT/report.md, OUT/results.json and the PNGs; returns the results."""
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
    vit_note = timm_missing() if settings.vit else None
    with_vit = settings.vit and vit_note is None
    vit_base = vit_overrides(base)  # the ViT rows: their preset's model and optimiser
    estimate = seconds_per_step(load_config(preset="demo", overrides=base))
    vit_estimate = seconds_per_step(load_config(preset=VIT_PRESET, overrides=vit_base)) if with_vit else 0.0
    steps, budget_note = choose_steps(settings, estimate, deadline - time.perf_counter(), vit_estimate)
    schedule = [f"train.steps={steps}", f"train.checkpoint_every={steps}", f"optim.warmup_steps={max(1, steps // 10)}"]
    base += schedule
    vit_base += schedule
    # 3. Per seed: the untrained floor, then pretraining and evaluation of every variant (ResNets, then ViTs).
    names = ("random", *VARIANTS) + (tuple(name for pair in VIT_FLOORS.items() for name in pair[::-1])
                                     if with_vit else ())
    seeds: Dict[str, List[VariantResult]] = {name: [] for name in names}
    losses: Dict[str, List[float]] = {}
    examples = {}
    for seed_index in range(settings.seeds):
        seed = [f"train.seed={settings.seed + seed_index}"]
        floors = {"random": ("demo", base + seed)}
        trained = {name: ("demo", base + seed + overrides) for name, overrides in VARIANTS.items()}
        if with_vit:
            floors.update({floor: (VIT_PRESET, vit_base + seed) for floor in VIT_FLOORS.values()})
            trained.update({name: (VIT_PRESET, vit_base + seed) for name in VIT_FLOORS})
        for name, (preset, overrides) in floors.items():
            random_dir = out / "runs" / run_name(name, seed_index)
            write_untrained_run(load_config(preset=preset, overrides=overrides), random_dir)
            result, pictures = evaluate_run(random_dir, data, seed=settings.seed)
            result.steps, result.final_loss, result.run = 0, None, str(random_dir)
            seeds[name].append(result)
            examples.setdefault(name, pictures)
        for name, (preset, overrides) in trained.items():
            run_dir = out / "runs" / run_name(name, seed_index)
            train_started = time.perf_counter()
            outcome = train(load_config(preset=preset, overrides=overrides), run_dir)
            train_seconds = time.perf_counter() - train_started
            result, pictures = evaluate_run(run_dir, data, seed=settings.seed)
            result.steps, result.run = outcome.step, str(run_dir)
            result.final_loss = outcome.losses[-1] if outcome.losses else None
            result.train_seconds = round(train_seconds, 1)
            seeds[name].append(result)
            losses.setdefault(name, outcome.losses)
            examples.setdefault(name, pictures)
    stages = stages_of(seeds["vito"][0:1]) or ["frame"]  # the Gaussian is the same map at every stage
    gaussian = gaussian_attention(data.clips, stages)
    summary = DemoSummary(
        settings=settings, steps=steps, estimated_seconds_per_step=estimate,
        budget_note="; ".join(note for note in (budget_note, vit_note) if note) or None,
        config_overrides=base[1:], seeds=seeds, num_classes=len(dataset.class_names), gaussian_attention=gaussian,
        centred_gaussian_attention_iou=float(np.mean(gaussian.per_clip.attention_iou[stages[0]])),
        centred_gaussian_attention_mass=float(np.mean(gaussian.per_clip.attention_mass[stages[0]])),
        object_area_fraction=data.object_area_fraction(), losses=losses,
        seconds=round(time.perf_counter() - started, 1))
    write_report(out, summary, examples, dataset.class_names)
    return summary
