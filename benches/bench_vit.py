"""The VITO training step on ViT trunks beside a ResNet's (issue 28), in pairs/s, as the loop runs it.

    python benches/bench_vit.py                     # GPU: ViT-S/16, ViT-B/16, ResNet-50; 224 px, 256 pairs, bf16
    python benches/bench_vit.py --providers synthetic-eager --steps 12 --window 4     # CPU: reduced, see below
    python benches/gpu_pass.py --out DIR --only train_vit                             # the GPU pass's step

Each model runs ``bench_train.measure`` (``vito_fast.train.train`` on on-device synthetic pairs: both
branches, per-stage InfoNCE, backward, optimiser, EMA; the first logged window dropped), with its
preset's settings as overrides: ``vit_s16`` and ``vit_b16`` (AdamW, taps at blocks 8 and 12, drop path
0.1) and the paper's ResNet-50 (LARS, layer3 + layer4). Providers: ``synthetic-eager`` and
``synthetic-compiled`` (``torch.compile`` of the two trunks). On a CPU the models are the CPU-sized
pair instead: the ``vit_demo`` preset's tiny ViT (patch 8, 96 wide, 4 blocks) and the ``demo`` preset's
half-width ResNet-18, 64 px, 16 pairs, float32, with their trunks' weights and forward GFLOPs per image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402

CUDA = torch.cuda.is_available()
# name -> (arch, the preset whose settings it takes); the GPU's models and the CPU's
GPU_MODELS = {"resnet50": ("resnet50", "resnet50"), "vit_s16": ("vit_small_patch16_224", "vit_s16"),
              "vit_b16": ("vit_base_patch16_224", "vit_b16")}
CPU_MODELS = {"resnet18_w32": ("resnet18", "demo"), "vit_demo": ("vit_tiny_patch16_224", "vit_demo")}
# the GPU pass's dry run (CPU, toy sizes): the same code paths on a 2-block ViT
TOY_VIT = ["model.vit.patch_size=8", "model.vit.embed_dim=32", "model.vit.depth=2", "model.vit.num_heads=2",
           "model.stages=[block1,block2]"]


def preset_overrides(preset: str) -> List[str]:
    """A preset's settings as ``key=value`` overrides, but for the arch (``measure`` sets it) and the
    demo presets' data and training settings (the bench sets size, batch and steps)."""
    from vito_fast.train.config import PRESETS, flatten

    def plain(value):
        return "[" + ",".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else value

    return [f"{key}={plain(value)}" for key, value in flatten(PRESETS[preset]).items()
            if key.startswith(("model.", "optim.")) and key not in ("model.arch", "optim.warmup_steps")]


def trunk_size(arch: str, overrides: Sequence[str], size: int) -> Tuple[float, float]:
    """(trunk weights in millions, forward GFLOPs per image at size × size) of a config's online trunk."""
    from torch.utils.flop_counter import FlopCounterMode

    from vito_fast.model.vito import make_trunk
    from vito_fast.train.config import load_config

    model = load_config("demo", overrides=[f"model.arch={arch}", *overrides]).model
    trunk = make_trunk(model.arch, model.stages, model.width, model.vit)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        trunk(torch.randn(1, 3, size, size))
    return sum(p.numel() for p in trunk.parameters()) / 1e6, counter.get_total_flops() / 1e9


def measure_models(models: Dict[str, Tuple[str, str]], providers: Sequence[str], size: int, batch: int, steps: int,
                   window: int, extra: Dict[str, List[str]] = None, on_row=None) -> List[dict]:
    """One row per (model, provider): pairs/s, data wait, peak GB; ``on_row(row)`` as each arrives."""
    rows = []
    for name, (arch, preset) in models.items():
        overrides = preset_overrides(preset) + list((extra or {}).get(name, []))
        for provider in providers:
            row = {"model": name, "arch": arch, "provider": provider, "size": size, "batch": batch}
            try:
                row.update(bench_train.measure(provider, arch, size, batch, steps, window, None, overrides),
                           status="ok")
            except Exception as error:  # noqa: BLE001 - a model that fails is a row, the others still run
                row.update(status="failed", error=f"{type(error).__name__}: {str(error)[:200]}")
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def gpu_step(ctx) -> None:
    """The GPU pass's ``train_vit`` step: ResNet-50 eager, then ViT-S/16 and ViT-B/16 eager and compiled
    (dry run: ResNet-18 and a 2-block ViT, eager, at toy sizes on the CPU), one row each as it is measured."""
    sizes = ctx.sizes
    if ctx.dry_run:
        models = {"resnet": (sizes.train_arch, "resnet50"), "vit_s16": ("vit_small_patch16_224", "vit_s16")}
        extra = {"vit_s16": TOY_VIT}
    else:
        models, extra = GPU_MODELS, {}
    # the dry run (in CI) checks the ViT's path eagerly: tracing it for torch.compile takes 12 s of CPU there
    vit_providers = ["synthetic-eager"] + ([] if ctx.dry_run else ["synthetic-compiled"])
    plan = [("resnet" if ctx.dry_run else "resnet50", ["synthetic-eager"])] + \
        [(name, vit_providers) for name in models if name.startswith("vit")]

    def row(measured: dict) -> None:
        ctx.row(**{key: (value if not isinstance(value, float) else round(value, 3))
                   for key, value in measured.items()})

    for name, providers in plan:
        measure_models({name: models[name]}, providers, sizes.train_size, sizes.train_batch, sizes.train_steps,
                       sizes.train_window, extra, on_row=row)


def table(rows: List[dict], sizes: Dict[str, Tuple[float, float]]) -> List[str]:
    baseline = {row["provider"]: row["pairs_per_s"] for row in rows
                if row["model"].startswith("resnet") and row["status"] == "ok"}
    lines = ["| model | trunk weights (M) | GFLOPs / image | provider | pairs/s | vs the ResNet | peak GPU GB |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for row in rows:
        weights, flops = sizes.get(row["model"], (float("nan"), float("nan")))
        if row["status"] != "ok":
            lines.append(f"| {row['model']} | {weights:.2f} | {flops:.3f} | {row['provider']} | – | – | {row['error']} |")
            continue
        ratio = row["pairs_per_s"] / baseline[row["provider"]] if row["provider"] in baseline else float("nan")
        peak = "–" if row["peak_gb"] != row["peak_gb"] else f"{row['peak_gb']:.1f}"
        lines.append(f"| {row['model']} | {weights:.2f} | {flops:.3f} | {row['provider']} | {row['pairs_per_s']:.1f} | "
                     f"{ratio:.2f}× | {peak} |")
    return lines


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", default="synthetic-eager,synthetic-compiled" if CUDA else "synthetic-eager")
    parser.add_argument("--size", type=int, default=224 if CUDA else 64)
    parser.add_argument("--batch", type=int, default=256 if CUDA else 16)
    parser.add_argument("--steps", type=int, default=60 if CUDA else 24)
    parser.add_argument("--window", type=int, default=20 if CUDA else 6)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on a CPU (train.cpu_threads)")
    args = parser.parse_args(list(argv))
    models = GPU_MODELS if CUDA else CPU_MODELS
    extra = {} if CUDA else {name: [f"train.cpu_threads={args.threads}"] for name in models}
    sizes = {name: trunk_size(arch, preset_overrides(preset), args.size) for name, (arch, preset) in models.items()}
    rows = measure_models(models, args.providers.split(","), args.size, args.batch, args.steps, args.window, extra)
    print(bench_train.environment())
    print(f"{args.size} px, {args.batch} pairs a step, {args.steps} steps, windows of {args.window} (first dropped)")
    print("\n".join(table(rows, sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
