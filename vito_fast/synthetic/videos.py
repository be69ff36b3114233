"""Built-in synthetic videos: textured objects of K classes moving over textured backgrounds.

Each video shows one *main* object whose class is the video's label, and (in about half of the
videos) a smaller *distractor* object of another class that passes in front of or behind it. A
class is a shape together with a texture family (disc + stripes, square + checkerboard, triangle +
dots, star + rings, ...); colours, texture frequency and phase, size, motion, scaling and rotation
are drawn per object (colours from a small palette shared by all classes), so neither a class nor
one object can be told apart by colour alone. The background is a
low-frequency colour field with a fine texture, panned by a slowly moving camera.

Layout of a generated dataset (``root``)::

    manifest.jsonl        one ClipRecord per video (label = class name); read_manifest() reads it
    dataset.json          settings, class names and one entry per video (what SyntheticDataset.open reads)
    videos/<name>.webm    the encoded videos (VP9 by default)
    masks/<name>.npz      per-frame masks of the *visible* pixels, each (T, H, W) uint8:
                            instances: 0 background, 1 main object, 2 distractor
                            classes:   0 background, class id + 1 of the object seen there
                          plus centers (T, objects, 2) as (x, y) pixels and radii (T, objects)

Everything is a pure function of ``seed``: masks are identical array for array, and the frames
before encoding are identical, so the decoded videos show the same content (VP9 is encoded on one
thread, which makes the bytes reproducible too in practice)::

    dataset = generate_dataset("data/synthetic", num_classes=4, videos_per_class=8)
    masks = dataset.load_masks(0)             # (48, 96, 96) uint8 instance ids
    frames = dataset.load_frames(0)           # (48, 96, 96, 3) uint8 decoded RGB
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from vito_fast.data.manifest import ClipRecord, write_manifest
from vito_fast.synthetic.render import (CAMERA_SPEED, CLASS_DEFINITIONS, background_textures, render_clip,
                                        shared_background)

PathLike = Union[str, os.PathLike]

# codec -> (PyAV encoder, pixel format, options, file suffix): fast, single-threaded, high quality
VIDEO_ENCODERS: Dict[str, Tuple[str, str, Dict[str, str], str]] = {
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "12", "b": "0",
                                      "threads": "1", "row-mt": "0"}, ".webm"),
    "vp8": ("libvpx", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "6", "b": "2M",
                                  "threads": "1"}, ".webm"),
    "h264": ("libx264", "yuv420p", {"preset": "ultrafast", "crf": "12", "threads": "1"}, ".mp4"),
    "mjpeg": ("mjpeg", "yuvj420p", {"q:v": "2", "threads": "1"}, ".avi"),
}

INSTANCE_MAIN, INSTANCE_DISTRACTOR = 1, 2
DISTRACTOR_PROBABILITY = 0.5
NUM_BACKGROUNDS = 4  # background textures shared by all the videos (0: one of its own per video)


@dataclass
class SyntheticVideo:
    """One generated video: its files (absolute paths), label and what it contains."""

    path: str
    mask_path: str
    label: str
    class_id: int
    num_frames: int
    distractor_class_id: Optional[int] = None  # None: the main object is alone


@dataclass
class SyntheticDataset:
    """A generated dataset on disk (see the module docstring for the layout)."""

    root: Path
    manifest_path: Path
    class_names: List[str]
    videos: List[SyntheticVideo] = field(default_factory=list)

    def load_masks(self, index: int, kind: str = "instances") -> np.ndarray:
        """Masks of video ``index``: (T, H, W) uint8; kind "instances" (0/1/2) or "classes" (0 or id+1)."""
        if kind not in ("instances", "classes"):
            raise ValueError(f"load_masks: kind must be 'instances' or 'classes', not {kind!r}")
        with np.load(self.videos[index].mask_path) as arrays:
            return arrays[kind]

    def load_object_tracks(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Centres (T, objects, 2) as (x, y) pixels and radii (T, objects) of video ``index``'s objects."""
        with np.load(self.videos[index].mask_path) as arrays:
            return arrays["centers"], arrays["radii"]

    def load_frames(self, index: int) -> np.ndarray:
        """Decoded RGB frames of video ``index``: (T, H, W, 3) uint8."""
        return decode_video_frames(self.videos[index].path)

    @property
    def labels(self) -> List[int]:
        """Class id of every video, in order."""
        return [video.class_id for video in self.videos]

    @classmethod
    def open(cls, root: PathLike) -> "SyntheticDataset":
        """Open a dataset written by ``generate_dataset`` (reads ``root/dataset.json``)."""
        root = Path(root)
        index_path = root / "dataset.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path}: no synthetic dataset here; run generate_dataset first")
        index = json.loads(index_path.read_text())
        videos = [SyntheticVideo(**{**entry, "path": str(root / entry["path"]),
                                    "mask_path": str(root / entry["mask_path"])}) for entry in index["videos"]]
        return cls(root, root / "manifest.jsonl", list(index["class_names"]), videos)


# ----------------------------------------------------------------------------- generation


def class_names(num_classes: int) -> List[str]:
    """Names of the first ``num_classes`` classes ("disc-stripes", "square-checker", ...)."""
    if not 1 <= num_classes <= len(CLASS_DEFINITIONS):
        raise ValueError(f"synthetic data: num_classes must be in 1..{len(CLASS_DEFINITIONS)}, not {num_classes}")
    return [f"{shape}-{texture}" for shape, texture in CLASS_DEFINITIONS[:num_classes]]


@dataclass(frozen=True)
class VideoSettings:
    """Everything ``generate_dataset`` draws a data set with; ``dataset.json`` keeps it ("settings").

    ``size`` is (height, width), both even. Videos are ordered class by class; video i of the
    whole set is drawn from the random stream (seed, i), so it does not depend on the others.

    ``num_backgrounds`` > 0: every video's camera pans over one of that many background textures
    (texture k drawn from the stream (seed, -1 - k) mod 2**32, the choice and the camera's start from
    (seed, i, 1)), shared by all classes, so that only the objects tell videos and classes apart;
    0: a background of its own per video (then the background alone identifies a video: a shortcut
    for instance discrimination that needs no object). ``object_scale`` multiplies the objects' radii.

    What changes *over time* within a video, as in real footage: ``camera_speed`` (low, high), the
    pan in pixels per frame at 96 px (each video draws its speed uniformly; the default is a slow
    drift), and ``light_change``, the amplitude of a slow change of the light's colour (a gain per
    channel of 1 ± light_change over a cycle of about one clip, the whole frame; 0: constant light).
    Frames far apart in time then differ in their background and colours but not in their objects'
    shape and texture, which is what pairs of frames Δt apart teach a model to rely on.

    ``clutter``: transient objects per video (small objects of random classes that enter for 2 to
    T/4 frames and move fast, drawn from the stream (seed, i, 2), so that the rest of the video is
    the same as without them). What persists is the main object; pooling has something to choose.
    ``focus_change``: the focus drifts over each video, blurring frames by a Gaussian of 0 up to that
    many pixels at 96 px (schedule from the stream (seed, i, 3)): fine texture comes and goes between
    frames, outlines stay. ``texture_fade``: the main object's texture contrast drops by up to that
    share over each video (schedule from the stream (seed, i, 4)), its outline stays.

    Each field's ``metadata["help"]`` is its one-line description (command-line help reads it).
    """

    num_classes: int = field(default=4, metadata={"help": "classes (a shape with a texture family each)"})
    videos_per_class: int = field(default=8, metadata={"help": "videos per class"})
    num_frames: int = field(default=48, metadata={"help": "frames per video"})
    fps: float = field(default=12, metadata={"help": "frames per second"})
    size: Tuple[int, int] = field(default=(96, 96), metadata={"help": "frame height and width, both even"})
    seed: int = field(default=0, metadata={"help": "everything is a pure function of it"})
    codec: str = field(default="vp9", metadata={"help": f"one of {', '.join(sorted(VIDEO_ENCODERS))}"})
    num_backgrounds: int = field(default=NUM_BACKGROUNDS,
                                 metadata={"help": "background textures shared by the videos (0: one per video)"})
    object_scale: float = field(default=1.0, metadata={"help": "multiplies the objects' radii (0.25 to 2)"})
    camera_speed: Tuple[float, float] = field(default=CAMERA_SPEED,
                                              metadata={"help": "camera pan, pixels per frame at 96 px (low, high)"})
    light_change: float = field(default=0.0,
                                metadata={"help": "how much the light's colour changes over a video (0: steady)"})
    clutter: int = field(default=0, metadata={"help": "transient objects per video (0: none)"})
    focus_change: float = field(default=0.0,
                                metadata={"help": "blur of a drifting focus, pixels at 96 px (0: always sharp)"})
    texture_fade: float = field(default=0.0,
                                metadata={"help": "share of the main object's texture contrast that fades (0: none)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(self.size))
        object.__setattr__(self, "camera_speed", tuple(self.camera_speed))
        class_names(self.num_classes)  # raises naming num_classes
        height, width = self.size
        if height % 2 or width % 2 or height < 16 or width < 16:
            raise ValueError(f"generate_dataset: size must be even and at least 16x16, not {self.size}")
        if self.codec not in VIDEO_ENCODERS:
            raise ValueError(f"generate_dataset: codec must be one of {sorted(VIDEO_ENCODERS)}, not {self.codec!r}")
        if self.num_backgrounds < 0 or not 0.25 <= self.object_scale <= 2.0:
            raise ValueError(f"generate_dataset: need num_backgrounds >= 0 and object_scale in [0.25, 2], "
                             f"got {self.num_backgrounds}, {self.object_scale}")
        if not 0 <= self.texture_fade <= 1:
            raise ValueError(f"generate_dataset: texture_fade must be in [0, 1], not {self.texture_fade}")
        if not 0 <= self.focus_change <= 4:
            raise ValueError(f"generate_dataset: focus_change must be in [0, 4] pixels, not {self.focus_change}")
        if not 0 <= self.clutter <= 8:
            raise ValueError(f"generate_dataset: clutter must be in 0..8 transient objects per video, "
                             f"not {self.clutter}")
        if self.num_frames < 2 or self.videos_per_class < 1:
            raise ValueError("generate_dataset: need num_frames >= 2 and videos_per_class >= 1")
        if not 0 <= self.camera_speed[0] <= self.camera_speed[1] <= 8 or not 0 <= self.light_change <= 0.5:
            raise ValueError(f"generate_dataset: need 0 <= camera_speed low <= high <= 8 and light_change in "
                             f"[0, 0.5], got {self.camera_speed}, {self.light_change}")

    def to_json(self) -> Dict[str, object]:
        """The settings as JSON values (tuples as lists), the form ``dataset.json`` keeps."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    @classmethod
    def from_json(cls, values: Dict[str, object]) -> "VideoSettings":
        """Settings from ``dataset.json``; a setting an older data set does not name takes its default
        (what the generator did before the setting existed)."""
        known = {item.name for item in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in known})


def generate_dataset(out_dir: PathLike, settings: Optional[VideoSettings] = None, *, progress: bool = True,
                     **options) -> SyntheticDataset:
    """Render, encode and index ``num_classes * videos_per_class`` videos under ``out_dir``.

    ``settings`` (default ``VideoSettings()``) with ``options`` (its fields by name) replaced: see
    ``VideoSettings`` for what each does. Existing files of the same names are overwritten.
    """
    settings = replace(settings or VideoSettings(), **options)
    num_classes, num_frames, size, seed, codec = (settings.num_classes, settings.num_frames, settings.size,
                                                  settings.seed, settings.codec)
    videos_per_class, fps, camera_speed = settings.videos_per_class, settings.fps, settings.camera_speed
    height, width = size
    names = class_names(num_classes)
    root = Path(out_dir).resolve()
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    suffix = VIDEO_ENCODERS[codec][3]
    from tqdm import tqdm

    videos: List[SyntheticVideo] = []
    records: List[ClipRecord] = []
    textures = background_textures(seed, settings.num_backgrounds, size, num_frames, camera_speed[1])
    jobs = [(class_id, number) for class_id in range(num_classes) for number in range(videos_per_class)]
    for video_index, (class_id, number) in enumerate(tqdm(jobs, desc="synthetic", unit="video", disable=not progress)):
        rng = np.random.default_rng([seed, video_index])
        distractor = None
        if num_classes > 1 and rng.random() < DISTRACTOR_PROBABILITY:
            distractor = int((class_id + rng.integers(1, num_classes)) % num_classes)
        clip = render_clip(rng, class_id, distractor, shared_background=shared_background(textures, seed, video_index),
                           **_clip_settings(settings, video_index))
        name = f"{names[class_id]}_{number:03d}"
        video_path = root / "videos" / f"{name}{suffix}"
        mask_path = root / "masks" / f"{name}.npz"
        encode_video(video_path, clip.frames, fps=fps, codec=codec)
        np.savez_compressed(mask_path, instances=clip.instances, classes=clip.classes,
                            centers=clip.centers, radii=clip.radii)
        videos.append(SyntheticVideo(str(video_path), str(mask_path), names[class_id], class_id, num_frames,
                                     distractor))
        records.append(ClipRecord(path=str(video_path.relative_to(root)), num_frames=num_frames, fps=float(fps),
                                  width=width, height=height, codec=codec, duration=num_frames / fps,
                                  label=names[class_id]))
    manifest_path = write_manifest(root / "manifest.jsonl", records)
    index = {
        "settings": settings.to_json(),
        "class_names": names,
        "videos": [{**asdict(video), "path": os.path.relpath(video.path, root),
                    "mask_path": os.path.relpath(video.mask_path, root)} for video in videos],
    }
    (root / "dataset.json").write_text(json.dumps(index, indent=1) + "\n")
    return SyntheticDataset(root, manifest_path, names, videos)


def _clip_settings(settings: VideoSettings, video_index: int) -> Dict[str, object]:
    """``render_clip``'s keywords for video ``video_index``: the settings and the video's own streams."""
    seed = settings.seed
    return dict(num_frames=settings.num_frames, size=settings.size, object_scale=settings.object_scale,
                camera_speed=settings.camera_speed, light_change=settings.light_change, num_classes=settings.num_classes,
                clutter=settings.clutter, clutter_rng=np.random.default_rng([seed, video_index, 2]),
                focus_change=settings.focus_change, focus_rng=np.random.default_rng([seed, video_index, 3]),
                texture_fade=settings.texture_fade, fade_rng=np.random.default_rng([seed, video_index, 4]))


def conflicting_texture(class_id: int, video_index: int, num_classes: int) -> int:
    """The texture class of a video's cue-conflict twin: another class, cycling through them all."""
    return (class_id + 1 + video_index % (num_classes - 1)) % num_classes


def render_cue_conflict(root: PathLike, video_index: int) -> Tuple[np.ndarray, int, int]:
    """(frames (T, H, W, 3) uint8, shape class, texture class) of video ``video_index`` of the data set
    at ``root`` re-rendered with its main object wearing another class's texture.

    The same random stream as ``generate_dataset`` (same motion, colours, distractor, background and
    masks), passed through the data set's codec, so only the texture differs from the ordinary clip.
    """
    import tempfile

    root = Path(root)
    index = json.loads((root / "dataset.json").read_text())
    settings = VideoSettings.from_json(index["settings"])
    num_classes, seed = settings.num_classes, settings.seed
    if num_classes < 2:
        raise ValueError(f"render_cue_conflict: {root} has one class; a cue conflict needs two")
    class_id = index["videos"][video_index]["class_id"]
    texture_class = conflicting_texture(class_id, video_index, num_classes)
    textures = background_textures(seed, settings.num_backgrounds, settings.size, settings.num_frames,
                                   settings.camera_speed[1])
    rng = np.random.default_rng([seed, video_index])
    distractor = None
    if rng.random() < DISTRACTOR_PROBABILITY:
        distractor = int((class_id + rng.integers(1, num_classes)) % num_classes)
    clip = render_clip(rng, class_id, distractor, shared_background=shared_background(textures, seed, video_index),
                       texture_class_id=texture_class, **_clip_settings(settings, video_index))
    with tempfile.TemporaryDirectory() as folder:
        path = encode_video(Path(folder) / f"conflict{VIDEO_ENCODERS[settings.codec][3]}", clip.frames,
                            fps=settings.fps, codec=settings.codec)
        frames = decode_video_frames(path)
    return frames, class_id, texture_class


# ----------------------------------------------------------------------------- video files


def encode_video(path: PathLike, frames: np.ndarray, *, fps: float, codec: str = "vp9") -> Path:
    """Encode RGB frames (T, H, W, 3) uint8 into ``path`` with PyAV (one encoder thread)."""
    import av

    encoder, pixel_format, options, _ = VIDEO_ENCODERS[codec]
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        stream.codec_context.thread_count = 1
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame = frame.reformat(format=pixel_format)
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decode_video_frames(path: PathLike) -> np.ndarray:
    """Decode every frame of a video with PyAV: (T, H, W, 3) uint8 RGB."""
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no frames decode")
    return np.stack(frames)
