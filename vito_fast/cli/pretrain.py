"""``vito-fast pretrain``: pretrain an encoder on frame pairs (one process, or every rank under torchrun).

    vito-fast pretrain --preset demo --out runs/demo                       # built-in data, a few minutes on a CPU
    vito-fast pretrain --preset demo --data manifest.jsonl --out runs/a --steps 500 optim.base_lr=0.5
    vito-fast pretrain --resume runs/a                                     # continue where it stopped
    vito-fast pretrain --resume runs/a --steps 1000                        # extend a finished run
    torchrun --nproc_per_node 8 -m vito_fast pretrain --preset resnet50 --data store/ --out runs/r50
    torchrun --nproc_per_node 8 -m vito_fast pretrain --preset vit_s16 --data store/ --out runs/vits16   # timm ViT-S/16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from vito_fast.cli._args import EXIT_FAILURE, EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vito-fast pretrain",
        description="Pretrain a ResNet or a timm ViT on video frame pairs with multi-scale contrastive attention "
                    "pooling (VITO). Settings: a preset, then --config YAML, then key=value overrides.",
        epilog="Overrides are dotted keys of the config tree, e.g. model.arch=resnet34 data.batch_size=64 "
               "optim.base_lr=0.5 train.compile=true data.source=synthetic. The run directory gets "
               "checkpoint.pt, config.yaml, metrics.jsonl and tensorboard/.")
    parser.add_argument("--preset", choices=None, default=None,
                        help="demo (half-width ResNet-18, 64 px, CPU in minutes; the default); resnet50 (the paper's "
                             "setting: ResNet-50, LARS, BYOL/DetCon's schedule); vit_s16 / vit_b16 (timm's "
                             "vit_small/base_patch16_224 as DINO and MoCo v3 train them: AdamW, warm-up and cosine, "
                             "MoCo v3's lr, DINO's weight decay 0.04 -> 0.4 and drop path 0.1; taps at blocks 8 "
                             "and 12; needs timm); vit_demo (a 4-block ViT at 64 px for CPUs)")
    parser.add_argument("--config", metavar="YAML", help="a YAML file with any part of the config tree")
    parser.add_argument("--data", metavar="PATH",
                        help="a manifest (.jsonl) or a frame store; 'synthetic' for on-device random pairs; "
                             "omitted: the built-in synthetic videos, generated under RUN/data")
    parser.add_argument("--out", metavar="RUN", help="run directory (default: the --resume directory)")
    parser.add_argument("--steps", type=int, help="total optimisation steps (train.steps)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its checkpoint (a new "
                        "--steps extends it: the schedules follow the new total from the resumed step)")
    parser.add_argument("--allow-config-change", nargs="+", default=[], metavar="KEY",
                        help="with --resume: accept these config keys differing from the checkpoint's")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def resolve_config(args: argparse.Namespace):
    """preset / YAML / checkpoint's config, then the command line's overrides."""
    from vito_fast.train.config import from_dict, load_config
    from vito_fast.train.run_folder import RunFolder

    overrides = list(args.overrides)
    if args.data is not None:
        overrides += ["data.source=synthetic"] if args.data == "synthetic" else ["data.source=loader", f"data.path={args.data}"]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.resume and args.preset is None and args.config is None:
        return load_config(base=from_dict(RunFolder.of(args.resume).saved_config()), overrides=overrides)
    return load_config(args.preset or "demo", args.config, overrides)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from vito_fast.train.checkpoint import ConfigMismatchError
    from vito_fast.train.loop import NonFiniteLossError, train
    from vito_fast.train.run_folder import RunFolder

    run_dir = args.out or args.resume
    if run_dir is None:
        print("vito-fast pretrain: pass --out RUN/ (or --resume RUN/)", file=sys.stderr)
        return EXIT_USAGE
    if args.resume and args.out and Path(args.resume).resolve() != Path(args.out).resolve():
        print(f"vito-fast pretrain: --resume {args.resume} and --out {args.out} differ; a run resumes in "
              f"its own directory", file=sys.stderr)
        return EXIT_USAGE
    run = RunFolder.of(run_dir)
    if args.resume and not run.has_checkpoint():
        print(f"vito-fast pretrain: {run.checkpoint} does not exist; nothing to resume", file=sys.stderr)
        return EXIT_FAILURE
    if not args.resume and run.has_checkpoint():
        print(f"vito-fast pretrain: {run_dir} already holds a checkpoint; continue it with --resume "
              f"{run_dir} or choose another --out", file=sys.stderr)
        return EXIT_USAGE
    # keys given after --allow-config-change that hold a value are overrides, not keys
    args.overrides += [item for item in args.allow_config_change if "=" in item]
    args.allow_config_change = [item for item in args.allow_config_change if "=" not in item]
    try:
        config = resolve_config(args)
        if args.allow_config_change and not args.resume:
            print("vito-fast pretrain: --allow-config-change only applies with --resume", file=sys.stderr)
            return EXIT_USAGE
        result = train(config, run_dir, resume=bool(args.resume), allow_config_change=args.allow_config_change)
    except (ConfigMismatchError, NonFiniteLossError, ValueError, FileNotFoundError, RuntimeError, ImportError) as error:
        print(f"vito-fast pretrain: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"vito-fast pretrain: interrupted; resume with --resume {run_dir}", file=sys.stderr)
        return 130
    if is_main_process():
        print(next_steps(config, Path(run_dir), result.step < config.train.steps))
    return 0


def is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def next_steps(config, run_dir: Path, stopped_early: bool) -> str:
    """The commands that look at a run's result (printed when pretrain ends), each one that works on
    this run's data: attention pictures where the model pools by attention and there is a video,
    kNN where every clip of the manifest has a label, shape bias on the built-in videos."""
    lines = ["next:"]
    if stopped_early:
        lines.append(f"  vito-fast pretrain --resume {run_dir}                      # continue to train.steps")
    manifest = None
    if config.data.source == "loader":
        path = Path(config.data.path) if config.data.path else run_dir / "data" / "manifest.jsonl"
        manifest = path if path.is_file() else None
    video, labelled = _first_video_and_labels(manifest) if manifest is not None else (None, False)
    if video is not None and config.model.pooling == "attention":
        lines.append(f"  vito-fast viz attention {run_dir} {video} -o {run_dir / 'attention.png'}")
    if labelled:
        lines.append(f"  vito-fast eval knn --run {run_dir} --manifest {manifest}")
    if manifest is not None and (manifest.parent / "dataset.json").is_file():  # the built-in videos
        lines.append(f"  vito-fast eval shape-bias --run {run_dir} --synthetic {manifest.parent}")
    lines.append(f"  vito-fast export {run_dir} -o {run_dir / 'encoder.pth'}                # torchvision or timm names")
    lines.append("  vito-fast demo                                              # VITO against baselines, with a report")
    if not labelled:
        lines.append(f"  # to score the features, with labelled frames of your own: vito-fast eval knn --run {run_dir} "
                     "--manifest LABELLED.jsonl (a label per clip) or --images DIR (a folder per class)")
    return "\n".join(lines)


def _first_video_and_labels(manifest: Path) -> Tuple[Optional[str], bool]:
    """(the first clip's path, whether every clip has a label); (None, False) when it cannot be read."""
    from vito_fast.data.manifest import iter_manifest

    try:
        records = iter(iter_manifest(manifest))
        first = next(records)
        return first.path, first.label is not None and all(record.label is not None for record in records)
    except (StopIteration, OSError, ValueError):
        return None, False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
