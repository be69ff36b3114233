"""Decoding one clip into the frames a frame store keeps: PyAV on the CPU, DALI on CPU or GPU.

Stored frame k of a clip is the source frame on screen at ``clip_start + k / fps``, resized so that
its short side is ``short_side`` (never upscaled) and encoded as JPEG.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from vito_fast.data.config import usable_cores
from vito_fast.data.manifest import ClipRecord
from vito_fast.storage.shards import open_container
from vito_fast.errors import VideoError


def output_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side``; never upscales."""
    scale = short_side / min(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def clip_bounds(record: ClipRecord) -> Tuple[float, float]:
    """(start, end) seconds of a record, whole video when clip_start/clip_end are unset."""
    start = record.clip_start if record.clip_start is not None else 0.0
    end = record.clip_end if record.clip_end is not None else start + record.duration
    return start, end


def sample_times(record: ClipRecord, fps: float) -> List[float]:
    """Times (seconds from the video start) of the frames stored for a clip: start + k / fps."""
    start, end = clip_bounds(record)
    count = max(1, math.ceil((end - start) * fps - 1e-6))
    return [start + k / fps for k in range(count)]


@dataclass
class ExtractedClip:
    """JPEG frames of one clip, in order, with the source frame each one shows."""

    jpegs: List[bytes]
    source_times: List[float]
    source_frames: List[int]
    width: int
    height: int


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def extract_clip_pyav(record: ClipRecord, fps: float, short_side: int, quality: int) -> ExtractedClip:
    """Decode one clip with PyAV on the CPU and JPEG-encode the frames on screen at the sample times."""
    from av.video.reformatter import VideoReformatter

    from vito_fast.data.video_source import display_orientation, upright

    reformatter = VideoReformatter()  # keeps its scaler between frames: 3x faster than frame.reformat
    targets = sample_times(record, fps)
    width, height = output_size(record.width, record.height, short_side)
    jpegs, times, numbers = [], [], []
    try:
        with open_container(record.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            time_base = stream.time_base
            origin = stream.start_time or 0
            if targets[0] > 0:  # lands on the keyframe at or before the first sample time
                container.seek(origin + int(targets[0] / time_base), stream=stream, backward=True)
            held, held_jpeg, k = None, None, 0

            def emit(frame, frame_time):
                nonlocal held_jpeg, k
                if held_jpeg is None or held_jpeg[0] is not frame:
                    # scaled as stored, then turned as shown (width/height are the shown sizes)
                    turned = display_orientation(frame)[0]
                    rgb = reformatter.reformat(frame, width=height if turned else width,
                                               height=width if turned else height, format="rgb24",
                                               interpolation="AREA")
                    held_jpeg = (frame, _encode_jpeg(upright(rgb.to_ndarray(), frame), quality))
                jpegs.append(held_jpeg[1])
                times.append(round(frame_time, 6))
                numbers.append(int(round(frame_time * record.fps)))
                k += 1

            for frame in container.decode(stream):
                frame_time = float((frame.pts - origin) * time_base)
                # every sample time before this frame shows the frame held so far
                while k < len(targets) and targets[k] < frame_time - 1e-6:
                    emit(held[0] if held else frame, held[1] if held else frame_time)
                if k >= len(targets):
                    break
                held = (frame, frame_time)
            while held is not None and k < len(targets):
                emit(*held)
    except Exception as error:
        raise VideoError(f"{record.path}: decoding for the frame store failed: {error}") from error
    if not jpegs:
        raise VideoError(f"{record.path}: no frame decodes in [{targets[0]:.3f} s, ...)")
    return ExtractedClip(jpegs, times, numbers, width, height)


class DaliClipExtractor:
    """Decode clips with DALI (``device="mixed"``: NVDEC on the GPU; ``"cpu"``: VP8/VP9/MJPEG only).

    Source frames are picked by index assuming a constant frame rate (the scan rejects variable
    rates by default): stored frame k shows frame ``floor(t_k * source_fps)``.
    """

    def __init__(self, short_side: int, quality: int, device: str = "mixed", num_threads: int = 2):
        try:
            from nvidia.dali import fn, pipeline_def, types
        except ImportError as error:
            raise VideoError("frame extraction with DALI needs NVIDIA DALI: "
                             "pip install nvidia-dali-cuda130 (or use --device cpu)") from error
        if device == "mixed":
            import torch

            if not torch.cuda.is_available():
                raise VideoError("--device gpu needs a CUDA GPU, and none is visible; use --device cpu")
        self.short_side, self.quality, self.cached_file = short_side, quality, ("", None)
        from concurrent.futures import ThreadPoolExecutor

        # PIL releases the GIL while it encodes: JPEG encoding of a clip's frames runs on all cores
        self.encoders = ThreadPoolExecutor(max_workers=usable_cores())

        @pipeline_def(batch_size=1, num_threads=num_threads, device_id=0 if device == "mixed" else None,
                      prefetch_queue_depth=1)
        def clip_pipeline():
            # fed per clip with feed_input (no source callback, so nothing is read ahead)
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            frames = fn.external_source(name="frames", dtype=types.INT32)
            size = fn.external_source(name="size", dtype=types.FLOAT)
            video = fn.decoders.video(encoded, device=device, frames=frames)
            return fn.resize(video, resize_x=size[0], resize_y=size[1], antialias=True)

        self.pipeline = clip_pipeline()
        try:
            self.pipeline.build()
        except Exception as error:
            raise VideoError(f"DALI cannot build a video decoding pipeline on {device}: {error}") from error

    def _file_bytes(self, path: str) -> np.ndarray:
        """The encoded file, read once for all the clips cut from it (records come in file order)."""
        if self.cached_file[0] != path:
            self.cached_file = (path, np.fromfile(path, dtype=np.uint8))
        return self.cached_file[1]

    def __call__(self, record: ClipRecord, fps: float) -> ExtractedClip:
        targets = sample_times(record, fps)
        last_frame = math.ceil(clip_bounds(record)[1] * record.fps - 1e-6) - 1
        indices = [min(last_frame, int(math.floor(t * record.fps + 1e-6))) for t in targets]
        width, height = output_size(record.width, record.height, self.short_side)
        try:
            self.pipeline.feed_input("encoded", [self._file_bytes(record.path)])
            self.pipeline.feed_input("frames", [np.asarray(indices, dtype=np.int32)])
            self.pipeline.feed_input("size", [np.asarray([width, height], dtype=np.float32)])
            (video,) = self.pipeline.run()
        except Exception as error:
            raise VideoError(f"{record.path}: DALI cannot decode it: {error}") from error
        frames = np.asarray(video.as_cpu()[0]) if hasattr(video, "as_cpu") else np.asarray(video[0])
        jpegs = list(self.encoders.map(lambda frame: _encode_jpeg(np.ascontiguousarray(frame), self.quality), frames))
        times = [round(index / record.fps, 6) for index in indices]
        return ExtractedClip(jpegs, times, indices, frames.shape[2], frames.shape[1])
