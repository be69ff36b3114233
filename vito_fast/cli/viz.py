"""`vito-fast viz attention`: a run's attention maps of every scale over the frames of a video.

    vito-fast viz attention RUN/ VIDEO -o attention.png [--gif attention.gif] [--frames 8]

RUN is a run directory of ``vito-fast pretrain`` (or a ``vito-fast export --format vito`` file):
the attention pools are learned, so exported torchvision weights are not enough. The PNG shows
the frames on the first row and one row of overlays per scale; the GIF runs through the whole
clip. A JSON summary is written next to the PNG (``attention.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from vito_fast.cli._args import EXIT_FAILURE, EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vito-fast viz", description="Render what a trained model attends to.")
    commands = parser.add_subparsers(dest="what", metavar="WHAT", title="renderings", required=True)
    attention = commands.add_parser("attention", help="attention maps of each scale overlaid on video frames")
    attention.add_argument("run", metavar="RUN", help="run directory of `vito-fast pretrain` (with checkpoint.pt)")
    attention.add_argument("video", metavar="VIDEO", help="a video file PyAV can decode")
    attention.add_argument("-o", "--output", required=True, help="PNG to write")
    attention.add_argument("--gif", default=None, help="also write a GIF across the whole clip")
    attention.add_argument("--frames", type=int, default=8, help="evenly spaced frames in the PNG (default 8)")
    attention.add_argument("--image-size", type=int, default=None,
                           help="short side fed to the model (default: the run's data.image_size)")
    attention.add_argument("--display-height", type=int, default=160, help="frame height in the images (default 160)")
    attention.add_argument("--alpha", type=float, default=0.75, help="overlay opacity where attention is highest")
    attention.add_argument("--normalise", choices=("uniform", "minmax"), default="uniform",
                           help="colour by attention ÷ uniform on a shared log scale (default) or stretch each map to [0, 1]")
    attention.add_argument("--device", default="auto", help="cpu, cuda or auto")
    return parser


def resize_frames(frames: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    return np.stack([np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR)) for frame in frames])


def render_attention(args) -> Dict:
    from vito_fast.synthetic.videos import decode_video_frames
    from vito_fast.train.run_folder import RunFolder
    from vito_fast.eval.encoder import load_encoder
    from vito_fast.eval.features import attention_of_frames
    from vito_fast.eval.viz import attention_overlay_frames, attention_panel, save_gif, save_png

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    if not Path(args.run).is_file():
        RunFolder.of(args.run).require_checkpoint()  # names the run when it has none
    encoder = load_encoder(args.run, pooling="attention", device=device)
    image_size = args.image_size or int((encoder.run_config or {}).get("data", {}).get("image_size", 224))
    frames = decode_video_frames(args.video)
    attention = attention_of_frames(encoder, frames, image_size)
    chosen = np.unique(np.linspace(0, len(frames) - 1, min(args.frames, len(frames))).round().astype(int))
    shown = resize_frames(frames, args.display_height)
    panel = attention_panel(shown[chosen], {stage: maps[chosen] for stage, maps in attention.items()},
                            alpha=args.alpha, normalise=args.normalise)
    png = save_png(panel, args.output)
    summary = {"run": str(args.run), "video": str(args.video), "png": str(png), "frames": chosen.tolist(),
               "num_frames": len(frames), "image_size": image_size,
               "attention_shape": {stage: list(maps.shape[1:]) for stage, maps in attention.items()},
               # how peaked each scale's attention is: 1 = uniform, larger = more concentrated
               "peak_over_uniform": {stage: float(maps.reshape(len(maps), -1).max(axis=1).mean() * maps[0].size)
                                     for stage, maps in attention.items()}}
    if args.gif:
        summary["gif"] = str(save_gif(attention_overlay_frames(shown, attention, alpha=args.alpha,
                                                                             normalise=args.normalise), args.gif))
    return summary


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = render_attention(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"vito-fast viz {args.what}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print("vito-fast viz attention")
    for stage, shape in summary["attention_shape"].items():
        print(f"  {stage}: {shape[0]}x{shape[1]} attention, peak {summary['peak_over_uniform'][stage]:.1f}x uniform")
    print(f"  frames {summary['frames']} of {summary['num_frames']} -> {summary['png']}"
          + (f", {summary['gif']}" if "gif" in summary else ""))
    json_path = Path(args.output).with_suffix(".json")
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    return EXIT_OK
