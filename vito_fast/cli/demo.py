"""`vito-fast demo`: built-in data → pretrain VITO and ablations → evaluate → Markdown report with plots.

    vito-fast demo [--out vito-demo] [--seeds N] [--minutes M]

Runs a fixed schedule (1200 steps per variant) that fits 15 minutes on a 2-core CPU, fewer steps
only when the machine is too slow for the budget (the report says so), and uses a GPU when there is
one. The report (OUT/report.md) compares random init, VITO, VITO with Δt = 0 and, when the
model offers it, VITO with average pooling; and VITO on a tiny timm ViT against its own random init
(``--no-vit`` leaves those two rows out); OUT/results.json holds every number.
"""
from __future__ import annotations

import argparse
import sys
from typing import List

from vito_fast.synthetic.builtin import add_video_arguments, videos_from_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vito-fast demo",
                                     description="Generate the built-in videos, pretrain, evaluate and report.")
    parser.add_argument("--out", default="vito-demo", help="output folder (default vito-demo)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock budget (default 15 per seed): the default steps are cut only if they "
                             "would overrun it")
    parser.add_argument("--steps", type=int, default=None,
                        help="pretraining steps per variant and seed (default 1200, fewer if over the budget)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every variant with N seeds; claims then take their error across seeds "
                             "(default 1: a paired bootstrap over videos)")
    add_video_arguments(parser)  # --videos-per-class, --num-frames, ... (synthetic.builtin.DEMO_OPTIONS)
    parser.add_argument("--eval-videos", type=int, default=16,
                        help="videos for propagation and the attention scores (default 16)")
    parser.add_argument("--no-vit", action="store_true",
                        help="leave out the ViT rows (a tiny timm ViT and its random init; they need timm)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for every variant, e.g. data.batch_size=32 model.arch=resnet34")
    return parser


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    from vito_fast.demo import DemoSettings, run_demo

    settings = DemoSettings(out_dir=args.out, minutes=args.minutes, steps=args.steps, seeds=args.seeds,
                            videos=videos_from_arguments(args), eval_videos=args.eval_videos,
                            overrides=list(args.overrides), progress=not args.quiet, vit=not args.no_vit)
    try:
        summary = run_demo(settings)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"vito-fast demo: {error}", file=sys.stderr)
        return 1
    from vito_fast.demo.claims import Verdict, judge_claims

    print("vito-fast demo")
    print(f"  {'variant':<10} {'kNN':>7} {'linear':>7} {'J':>6}  attention on objects (IoU)")
    for name, result in summary.variants.items():
        attention = ", ".join(f"{stage} {100 * mass:.0f}% ({result.attention_iou[stage]:.2f})"
                              for stage, mass in result.attention_mass.items()) or "n/a (average pooling)"
        print(f"  {name:<10} {100 * result.knn:6.1f}% {100 * result.linear:6.1f}% "
              f"{result.propagation_J:6.3f}  {attention}")
    print(f"  centred Gaussian: {100 * summary.centred_gaussian_attention_mass:.0f}% on objects "
          f"(IoU {summary.centred_gaussian_attention_iou:.2f}); objects cover "
          f"{100 * summary.object_area_fraction:.0f}% of the frames")
    judged = judge_claims(summary)
    shown = sum(item.verdict is Verdict.SHOWN for item in judged)
    print(f"  claims shown beyond twice their standard error: {shown} of {len(judged)}")
    for item in judged:
        print(f"    {item.verdict.value:<16} {item.title}")
    print(f"  report: {args.out}/report.md ({summary.seconds:.0f} s)")
    return 0
