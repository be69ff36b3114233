"""Synthetic test videos whose pixels say which frame they are.

Every frame carries its frame number as a binary code in large squares (black = 0, white = 1),
so the number survives lossy codecs, chroma subsampling and downscaling by a factor of ~4::

    write_video(tmp_path / "a.webm", codec="vp9", width=64, height=48, fps=25, num_frames=50)
    image = ...  # any RGB or grey uint8 array of a frame, at any resolution
    assert decode_frame_number(image) == 17

The code grid is ``CODE_GRID`` (columns, rows) cells over the whole frame, read row-major, most
significant bit first; a 4x3 grid counts up to 4095 frames. With ``xy_gradient=True`` the red
channel also rises from 0 (left) to 255 (right) and green from 0 (top) to 255 (bottom) inside
each cell's margin, so crop tests can read back where a pixel came from (see ``decode_position``).

Broken files for scan tests: ``write_truncated_copy`` (cut mid-stream), ``write_zero_byte_file``,
``write_text_file`` (text with a video suffix), ``write_audio_only`` (no video stream),
``write_empty_video_stream`` (a video stream with zero frames) and ``write_variable_frame_rate``.
Unusual but valid files: ``write_video(..., rotation=90)`` (a display matrix; ``shown_image``
is what players show), ``write_late_start_copy`` (an MP4 edit list hides the first frames) and
``write_resolution_change`` (the frame size changes mid-stream).

Import from tests as ``from videos import write_video`` (pytest puts tests/ on sys.path because the
folder has no ``__init__.py``).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is not installed: the test videos are written with it")

PathLike = Union[str, os.PathLike]

CODE_GRID: Tuple[int, int] = (4, 3)  # columns, rows of code cells
BLACK, WHITE = 16, 235  # video-range levels: survive the YUV round trip unclipped

# codec name -> (PyAV encoder, pixel format, encoder options) that encode fast and deterministically
ENCODERS = {
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "vp8": ("libvpx", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "1M"}),
    "h264": ("libx264", "yuv420p", {"preset": "ultrafast", "crf": "18"}),
    "mjpeg": ("mjpeg", "yuvj420p", {"q:v": "2"}),
}


def encoder_available(codec: str) -> bool:
    """Whether PyAV's bundled FFmpeg can encode ``codec`` ("vp9", "h264", "vp8", "mjpeg")."""
    try:
        av.codec.Codec(ENCODERS[codec][0], "w")
    except Exception:
        return False
    return True


def max_frame_number(grid: Tuple[int, int] = CODE_GRID) -> int:
    """The largest frame number the code grid can hold."""
    return 2 ** (grid[0] * grid[1]) - 1


def frame_image(index: int, width: int, height: int, *, grid: Tuple[int, int] = CODE_GRID,
                xy_gradient: bool = False) -> np.ndarray:
    """RGB uint8 image (height, width, 3) showing ``index`` as a binary code in grid cells."""
    if not 0 <= index <= max_frame_number(grid):
        raise ValueError(f"frame_image: frame number {index} does not fit a {grid} code grid")
    columns, rows = grid
    bits = [(index >> (columns * rows - 1 - cell)) & 1 for cell in range(columns * rows)]
    cell_levels = np.array([WHITE if bit else BLACK for bit in bits], dtype=np.uint8).reshape(rows, columns)
    row_of_pixel = np.minimum(np.arange(height) * rows // height, rows - 1)
    column_of_pixel = np.minimum(np.arange(width) * columns // width, columns - 1)
    grey = cell_levels[row_of_pixel][:, column_of_pixel]
    image = np.repeat(grey[:, :, None], 3, axis=2)
    if xy_gradient:
        # Colour only the red/green of the cell margins so the code at cell centres stays grey.
        x_ramp = np.linspace(0, 255, width).astype(np.uint8)
        y_ramp = np.linspace(0, 255, height).astype(np.uint8)
        margin = _cell_margin_mask(width, height, grid)
        image[..., 0] = np.where(margin, x_ramp[None, :], image[..., 0])
        image[..., 1] = np.where(margin, y_ramp[:, None], image[..., 1])
    return image


def _cell_margin_mask(width: int, height: int, grid: Tuple[int, int]) -> np.ndarray:
    """True outside the central half of each code cell."""
    columns, rows = grid
    x_in_cell = (np.arange(width) * columns / width) % 1.0
    y_in_cell = (np.arange(height) * rows / height) % 1.0
    x_margin = (x_in_cell < 0.25) | (x_in_cell > 0.75)
    y_margin = (y_in_cell < 0.25) | (y_in_cell > 0.75)
    return x_margin[None, :] | y_margin[:, None]


def decode_frame_number(image: np.ndarray, *, grid: Tuple[int, int] = CODE_GRID) -> int:
    """Read back the frame number written by ``frame_image`` from an RGB/grey uint8 image.

    Averages the central quarter of each cell and thresholds at mid-grey, so blur, ringing and
    resizing do not matter as long as a cell stays a few pixels wide.
    """
    grey = image.astype(np.float32)
    if grey.ndim == 3:
        grey = grey[..., :3].mean(axis=2) if grey.shape[2] >= 3 else grey[..., 0]
    height, width = grey.shape
    columns, rows = grid
    number = 0
    for row in range(rows):
        for column in range(columns):
            top, bottom = int((row + 0.375) * height / rows), int((row + 0.625) * height / rows) + 1
            left, right = int((column + 0.375) * width / columns), int((column + 0.625) * width / columns) + 1
            bit = grey[top:bottom, left:right].mean() > (BLACK + WHITE) / 2
            number = (number << 1) | int(bit)
    return number


def decode_position(pixel_rgb: Sequence[int], width: int, height: int) -> Tuple[float, float]:
    """(x, y) in source pixels of a margin pixel of an ``xy_gradient`` frame (±~2 px after coding)."""
    return pixel_rgb[0] / 255.0 * (width - 1), pixel_rgb[1] / 255.0 * (height - 1)


def write_video(path: PathLike, *, codec: str = "vp9", width: int = 64, height: int = 48,
                fps: Union[int, Fraction] = 25, num_frames: int = 50, gop: Optional[int] = None,
                xy_gradient: bool = False, frame_numbers: Optional[Iterable[int]] = None,
                encoder_options: Optional[dict] = None, pixel_format: Optional[str] = None,
                rotation: int = 0, mirror: bool = False) -> Path:
    """Encode a constant-frame-rate video whose frame i shows the number i (or frame_numbers[i]).

    The container follows the suffix (.webm, .mp4, .mkv, .avi). Frame i has pts i in a 1/fps time
    base, so its presentation time is exactly i / fps seconds. ``encoder_options`` override the
    fast defaults in ENCODERS (e.g. ``{"preset": "medium", "bf": "3"}`` for H.264 with B-frames);
    ``pixel_format`` the codec's default one (libx264's 4:2:0 and 4:2:2 formats need even sizes).
    ``rotation`` (degrees counter-clockwise) and ``mirror`` write a display matrix: players show
    ``shown_image(frame_image(...), rotation, mirror)``.
    """
    path = Path(path)
    encoder, default_format, options = ENCODERS[codec]
    pixel_format = pixel_format or default_format
    options = {**options, **(encoder_options or {})}
    numbers = list(range(num_frames)) if frame_numbers is None else list(frame_numbers)
    rate = Fraction(fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        stream.codec_context.time_base = 1 / rate
        if gop is not None:
            stream.codec_context.gop_size = gop
        if rotation or mirror:
            stream.set_display_rotation(rotation, hflip=mirror)
        for position, number in enumerate(numbers):
            frame = av.VideoFrame.from_ndarray(frame_image(number, width, height, xy_gradient=xy_gradient),
                                               format="rgb24")
            frame.pts = position
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame.reformat(format=pixel_format)))
        container.mux(stream.encode(None))
    return path


def write_small_clips(folder: PathLike, count: int = 6) -> List[Path]:
    """``folder/clip{i}.webm`` for i < count: 64x48 VP9, 10 fps, 2 s, a keyframe every 5 frames (the
    remote-data tests' corpus: a few kB each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / f"clip{index}.webm", codec="vp9", width=64, height=48, fps=10, num_frames=20, gop=5)
            for index in range(count)]


def write_noisy_video(path: PathLike, num_frames: int, gop: int, width: int = 160, height: int = 128,
                      codec: str = "vp9") -> Path:
    """Moving noise: GOPs of tens of kB, as camera footage has (the clips of ``write_video`` compress to a
    few kB, which one block holds whole). "vp9" (WebM) or "h264" (MP4 with B-frames, its moov written
    last, as FFmpeg writes without faststart), 10 fps, a keyframe every ``gop`` frames."""
    path = Path(path)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (2 * height, 2 * width, 3), dtype=np.uint8)
    if codec == "vp9":
        encoder, options = "libvpx-vp9", {"crf": "30", "g": str(gop), "keyint_min": str(gop), "deadline": "realtime",
                                          "cpu-used": "8"}
    else:
        encoder, options = "libx264", {"crf": "30", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                                       "bf": "2", "preset": "veryfast"}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=10, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            image = np.ascontiguousarray(np.roll(texture, (3 * index, 5 * index), axis=(0, 1))[:height, :width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def shown_image(image: np.ndarray, rotation: int = 0, mirror: bool = False) -> np.ndarray:
    """What players show of a stored frame written with ``rotation``/``mirror``: turned, then mirrored."""
    shown = np.rot90(image, rotation // 90)  # np.rot90 turns counter-clockwise, as the display matrix
    return shown[:, ::-1] if mirror else shown


def write_variable_frame_rate(path: PathLike, *, codec: str = "h264", width: int = 64, height: int = 48,
                              num_frames: int = 40, durations: Sequence[int] = (3, 9)) -> Path:
    """A video whose frame durations cycle through ``durations`` in 1/90 s (default: 1/30 s, 1/10 s)."""
    path = Path(path)
    encoder, pixel_format, options = ENCODERS[codec]
    time_base = Fraction(1, 90)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=30, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        stream.codec_context.time_base = time_base
        pts = 0
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(index, width, height), format="rgb24")
            frame = frame.reformat(format=pixel_format)
            frame.pts, frame.time_base = pts, time_base
            container.mux(stream.encode(frame))
            pts += durations[index % len(durations)]
        container.mux(stream.encode(None))
    return path


def write_late_start_copy(source: PathLike, destination: PathLike, skip_frames: int = 3) -> Path:
    """Copy an .mp4 with its timestamps moved ``skip_frames`` frames earlier: an edit list hides them.

    The MP4 muxer writes an edit list that starts at time 0, so the first ``skip_frames`` frames
    (the first keyframe among them) stay in the file, marked to discard: decoders need them to
    decode the next frames but never show them, as in a clip cut from a longer video without
    re-encoding. Frame k as shown is frame k + skip_frames of the source.
    """
    destination = Path(destination)
    with av.open(str(source)) as source_container, av.open(str(destination), "w") as target:
        source_stream = source_container.streams.video[0]
        stream = target.add_stream_from_template(source_stream)
        step = int(1 / (source_stream.time_base * source_stream.average_rate))
        for packet in source_container.demux(source_stream):
            if packet.dts is None:
                continue  # the flush packet
            packet.pts -= skip_frames * step
            packet.dts -= skip_frames * step
            packet.stream = stream
            target.mux(packet)
    return destination


def write_resolution_change(path: PathLike, *, sizes: Sequence[Tuple[int, int]] = ((96, 64), (48, 32)),
                            frames_each: int = 6, fps: int = 25) -> Path:
    """A VP9 .webm whose frame size changes mid-stream: ``frames_each`` frames at each (width, height).

    Made by concatenating the packets of separate encodes (each starts with a keyframe, which
    carries its size); the header declares the first size. Frame i shows the number i.
    """
    path = Path(path)
    parts = [write_video(path.with_name(f"{path.stem}.part{index}.webm"), codec="vp9", width=width, height=height,
                         fps=fps, num_frames=frames_each,
                         frame_numbers=range(index * frames_each, (index + 1) * frames_each))
             for index, (width, height) in enumerate(sizes)]
    with av.open(str(path), "w") as target:
        stream = None
        for index, part in enumerate(parts):
            with av.open(str(part)) as source:
                source_stream = source.streams.video[0]
                stream = stream or target.add_stream_from_template(source_stream)
                shift = int(index * frames_each / (fps * source_stream.time_base))
                for packet in source.demux(source_stream):
                    if packet.dts is None:
                        continue  # the flush packet
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = stream
                    target.mux(packet)
            part.unlink()
    return path


def write_truncated_copy(source: PathLike, destination: PathLike, keep_fraction: float = 0.5) -> Path:
    """Copy the first ``keep_fraction`` of a file's bytes: a download cut off mid-stream."""
    data = Path(source).read_bytes()
    destination = Path(destination)
    destination.write_bytes(data[: int(len(data) * keep_fraction)])
    return destination


def write_zero_byte_file(path: PathLike) -> Path:
    """An empty file with a video suffix."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_text_file(path: PathLike) -> Path:
    """A text file named like a video (``notes.mp4``)."""
    path = Path(path)
    path.write_text("this is not a video, just some notes saved with the wrong name\n" * 20)
    return path


def write_audio_only(path: PathLike, seconds: float = 1.0) -> Path:
    """A file with one audio stream (a 440 Hz tone) and no video stream (.webm: Opus, .mp4: AAC)."""
    path = Path(path)
    sample_rate = 48000
    codec = "libopus" if path.suffix in (".webm", ".mkv", ".ogg") else "aac"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        samples_per_frame = stream.codec_context.frame_size or 1024
        total = int(seconds * sample_rate)
        for start in range(0, total, samples_per_frame):
            time = (np.arange(start, start + samples_per_frame) / sample_rate).astype(np.float32)
            wave = (0.2 * np.sin(2 * np.pi * 440 * time)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_empty_video_stream(path: PathLike, *, codec: str = "mjpeg", width: int = 64, height: int = 48) -> Path:
    """A container that declares a video stream but holds no frames.

    Use an .avi path: MP4/MOV drop a track without samples and Matroska writes no readable header.
    """
    path = Path(path)
    encoder, pixel_format, options = ENCODERS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=25, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        container.start_encoding()  # write the header although no packet follows
    return path


def read_frame_numbers(path: PathLike) -> list:
    """Decode a whole video with PyAV and return the frame number shown by each frame."""
    with av.open(str(path)) as container:
        return [decode_frame_number(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
