"""The built-in videos: what ``vito-fast pretrain`` trains on without ``--data`` and ``vito-fast demo`` uses.

    manifest = builtin_dataset("runs/demo")          # runs/demo/data/manifest.jsonl, generated once

One set of settings for both, so a demo's pretraining and a plain ``pretrain --preset demo`` see the
same videos. ``BuiltinVideos`` is ``VideoSettings`` (the generator's settings, each defined once
in ``videos``) with the built-in values; the demo's command line offers ``DEMO_OPTIONS`` of them,
its flags, types, defaults and help read from these dataclasses (``add_video_arguments``).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from vito_fast.synthetic.videos import VideoSettings

__all__ = ["BuiltinVideos", "DEMO_OPTIONS", "add_video_arguments", "videos_from_arguments", "builtin_dataset"]


@dataclass(frozen=True)
class BuiltinVideos(VideoSettings):
    """The built-in values of the generator's settings (``VideoSettings`` documents each one).

    What persists between frames Δt apart should be the objects, as in real footage: one background
    texture shared by all videos (0: one per video, which identifies the video), a camera that pans
    1.5-3 px a frame and a light whose colour changes over the clip. With a still camera and steady
    light, background and colours identify a video across time and nothing about the objects is learnt.
    Three transient objects per video (clutter that enters for a few frames) give pooling something to
    leave out, as passers-by do in real footage. Many short videos: more instances to tell apart and
    more clips to evaluate on. Objects at 1.4 × fill more of the 64-px views.
    """

    videos_per_class: int = 24
    num_frames: int = 16
    num_backgrounds: int = 1
    camera_speed: Tuple[float, float] = (1.5, 3.0)
    light_change: float = 0.4
    object_scale: float = 1.4
    clutter: int = 3

    def generate_kwargs(self) -> Dict[str, object]:
        """The ``generate_dataset`` keywords (``dataset.json`` keeps them too)."""
        return asdict(self)


# the settings `vito-fast demo` takes on its command line (--videos-per-class, ...)
DEMO_OPTIONS = ("videos_per_class", "num_frames", "num_backgrounds", "light_change", "camera_speed", "clutter",
                "focus_change")


def add_video_arguments(parser: argparse.ArgumentParser, names: Tuple[str, ...] = DEMO_OPTIONS) -> None:
    """``--videos-per-class N`` ...: one flag per setting in ``names``, with its built-in default."""
    described = {item.name: item for item in dataclasses.fields(VideoSettings)}
    defaults = BuiltinVideos()
    for name in names:
        default = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        what = described[name].metadata["help"]
        if isinstance(default, tuple):
            shown = " ".join(f"{value:g}" for value in default)
            parser.add_argument(flag, type=type(default[0]), nargs=len(default), default=default,
                                metavar=("LOW", "HIGH") if len(default) == 2 else None,
                                help=f"built-in videos: {what} (default {shown})")
        else:
            parser.add_argument(flag, type=type(default), default=default,
                                help=f"built-in videos: {what} (default {default:g})")


def videos_from_arguments(args: argparse.Namespace, names: Tuple[str, ...] = DEMO_OPTIONS) -> BuiltinVideos:
    """The ``BuiltinVideos`` that parsed ``add_video_arguments`` flags ask for."""
    return BuiltinVideos(**{name: tuple(value) if isinstance(value, list) else value
                            for name, value in ((name, getattr(args, name)) for name in names)})


def builtin_dataset(run_dir, *, settings: Optional[VideoSettings] = None, progress: bool = True) -> Path:
    """The built-in videos under RUN/data (generated once; deterministic); their manifest path."""
    from vito_fast.synthetic.videos import generate_dataset

    root = Path(run_dir) / "data"
    manifest = root / "manifest.jsonl"
    if manifest.exists():
        return manifest
    settings = BuiltinVideos() if settings is None else settings
    return Path(generate_dataset(root, settings, progress=progress).manifest_path)
