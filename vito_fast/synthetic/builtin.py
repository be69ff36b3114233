"""The built-in videos: what ``vito-fast pretrain`` trains on without ``--data`` and ``vito-fast demo`` uses.

    manifest = builtin_dataset("runs/demo")          # runs/demo/data/manifest.jsonl, generated once

One set of settings for both, so a demo's pretraining and a plain ``pretrain --preset demo`` see the
same videos.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class BuiltinVideos:
    """Settings of the built-in videos (``generate_dataset`` keywords).

    What persists between frames Δt apart should be the objects, as in real footage: one background
    texture shared by all videos (0: one per video, which identifies the video), a camera that pans
    1.5-3 px a frame and a light whose colour changes over the clip. With a still camera and steady
    light, background and colours identify a video across time and nothing about the objects is learnt.
    Three transient objects per video (clutter that enters for a few frames) give pooling something to
    leave out, as passers-by do in real footage. A drifting focus (``focus_change``) was tried for
    shape bias and left off: 600 steps at 3 px learnt little (kNN 35%, from 30% at random init).
    """

    videos_per_class: int = 24  # many short videos: more instances to tell apart, more clips to evaluate on
    num_frames: int = 16
    num_backgrounds: int = 1
    camera_speed: Tuple[float, float] = (1.5, 3.0)
    light_change: float = 0.4
    object_scale: float = 1.4  # objects fill more of the 64-px views
    clutter: int = 3  # transient objects per video: what pooling should learn to leave out (see generate_dataset)
    focus_change: float = 0.0  # blur of a drifting focus, pixels at 96 px (see generate_dataset)
    seed: int = 0

    def generate_kwargs(self) -> Dict[str, object]:
        """The ``generate_dataset`` keywords (``dataset.json`` keeps them too)."""
        settings = asdict(self)
        settings["camera_speed"] = tuple(settings["camera_speed"])
        return settings


def builtin_dataset(run_dir, *, settings: Optional[BuiltinVideos] = None, progress: bool = True) -> Path:
    """The built-in videos under RUN/data (generated once; deterministic); their manifest path."""
    from vito_fast.synthetic.videos import generate_dataset

    root = Path(run_dir) / "data"
    manifest = root / "manifest.jsonl"
    if manifest.exists():
        return manifest
    settings = BuiltinVideos() if settings is None else settings
    return Path(generate_dataset(root, **settings.generate_kwargs(), progress=progress).manifest_path)
