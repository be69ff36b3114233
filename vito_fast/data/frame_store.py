"""Frame store: clips pre-extracted at a fixed rate as JPEG frames in tar shards, plus an index.

Layout of a store folder::

    shard-00000.tar    plain (ustar) tar; member "<manifest index:08d>/<frame:06d>.jpg" per frame
    shard-00000.json   that shard's part of the index, written only after the tar is complete
    ...
    index.json         the whole index, written last (atomically) when every clip is done

``index.json`` (format "vito_fast.frame_store", version 1) holds the store settings (``fps``,
``short_side``, ``quality``, ``device``), ``shards`` (name, bytes) and ``clips``: per clip its ``shard``, the
``source`` video, ``label``, ``clip_start``/``clip_end``, ``source_fps``, the stored ``width`` and
``height``, and per stored frame k: ``frame_offsets[k]``/``frame_sizes[k]`` (the JPEG payload's
byte range inside the shard), ``source_times[k]`` (seconds from the video start of the source
frame shown) and ``source_frames[k]`` (its index in the video). Stored frame k is the source frame
on screen at ``clip_start + k / fps``. Clips a decoder could not read are listed under ``skipped``.

Every file is written under a temporary name and renamed, so an interrupted extraction leaves only
complete shards, each with its sidecar; running it again skips them and produces byte-identical
shards and index.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vito_fast.data.manifest import ClipRecord, read_manifest
from vito_fast.errors import StoreError, VideoError

FORMAT_NAME, FORMAT_VERSION = "vito_fast.frame_store", 1
INDEX_NAME = "index.json"
PathLike = Union[str, os.PathLike]


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
    import av
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()  # keeps its scaler between frames: 3x faster than frame.reformat
    targets = sample_times(record, fps)
    width, height = output_size(record.width, record.height, short_side)
    jpegs, times, numbers = [], [], []
    try:
        with av.open(record.path, "r", metadata_errors="ignore") as container:
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
                    rgb = reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                               interpolation="AREA")
                    held_jpeg = (frame, _encode_jpeg(rgb.to_ndarray(), quality))
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
        self.encoders = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)

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


# ----------------------------------------------------------------------------- writing shards


class ShardWriter:
    """Append JPEG payloads to ``<name>.tmp`` as tar members; ``finish`` renames it to ``<name>``."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = folder, name
        self.temporary = folder / f"{name}.tmp"
        self.file = open(self.temporary, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)

    def add_frame(self, member: str, payload: bytes) -> Tuple[int, int]:
        """Add one member; returns (byte offset, size) of its payload inside the tar."""
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        header_bytes = len(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        offset = self.tar.offset + header_bytes
        self.tar.addfile(info, io.BytesIO(payload))
        return offset, len(payload)

    @property
    def bytes_written(self) -> int:
        return self.tar.offset

    def finish(self) -> int:
        """Close the tar, make it durable and give it its final name; returns its size."""
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temporary, self.folder / self.name)
        return (self.folder / self.name).stat().st_size

    def abort(self) -> None:
        """Drop the half-written shard (the tar is not closed: no end blocks into a partial file)."""
        self.file.close()
        self.temporary.unlink(missing_ok=True)


def _write_json_atomically(path: Path, document: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(document, handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _settings_digest(records: Sequence[ClipRecord], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for record in records:
        digest.update(record.to_json().encode() + b"\n")
    return digest.hexdigest()


def _finished_shards(folder: Path, digest: str) -> List[dict]:
    """Sidecars of the complete shards 0, 1, ... that belong to this manifest and these settings."""
    sidecars = []
    while True:
        name = f"shard-{len(sidecars):05d}"
        sidecar_path, tar_path = folder / f"{name}.json", folder / f"{name}.tar"
        if not sidecar_path.is_file() or not tar_path.is_file():
            return sidecars
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        if sidecar.get("settings_digest") != digest:
            raise StoreError(f"{sidecar_path}: made from another manifest or other settings; "
                             "extract into an empty folder")
        if tar_path.stat().st_size != sidecar["bytes"]:
            return sidecars  # a shard replaced behind our back: redo it and what follows
        sidecars.append(sidecar)


def extract_frames(manifest: Union[PathLike, Sequence[ClipRecord]], out_dir: PathLike, *, fps: float = 8,
                   short_side: int = 256, quality: int = 90, device: str = "cpu", shard_bytes: int = 512 << 20,
                   workers: Optional[int] = None, progress: bool = True) -> Path:
    """Extract every clip of a manifest into a frame store in ``out_dir``; returns the index path.

    ``device="cpu"`` decodes with PyAV in ``workers`` processes (default: CPU count; 1 = in this
    process), ``"gpu"`` with DALI's NVDEC decoder, ``"dali-cpu"`` with DALI's CPU decoder (VP8,
    VP9 and MJPEG only; the same code path as "gpu", so it is what CPU tests exercise). A shard is
    closed once it holds ``shard_bytes`` (clips never span shards). Finished shards of an earlier
    interrupted run with the same manifest and settings are kept.
    """
    records = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    if device not in ("cpu", "gpu", "dali-cpu"):
        raise ValueError(f"extract_frames: device must be 'cpu', 'gpu' or 'dali-cpu', not {device!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"fps": fps, "short_side": short_side, "quality": quality, "device": device}
    digest = _settings_digest(records, settings)
    sidecars = _finished_shards(folder, digest)
    next_clip = sidecars[-1]["end_clip"] if sidecars else 0
    for stale in folder.glob("*.tmp"):
        stale.unlink()

    from tqdm import tqdm

    remaining = records[next_clip:]
    bar = tqdm(total=len(records), initial=next_clip, desc="frames", unit="clip", disable=not progress)
    writer: Optional[ShardWriter] = None
    results = _extract_in_order(remaining, fps, short_side, quality, device, workers)
    try:
        clips, skipped, frames_done = [], [], 0
        for offset, result in enumerate(results):
            manifest_index = next_clip + offset
            if writer is None:
                writer, first_clip = ShardWriter(folder, f"shard-{len(sidecars):05d}.tar"), manifest_index
            if isinstance(result, VideoError):
                skipped.append({"manifest_index": manifest_index, "source": records[manifest_index].path,
                                "error": str(result)})
            else:
                clips.append(_store_clip(writer, records[manifest_index], manifest_index, result, len(sidecars)))
                frames_done += len(result.jpegs)
            bar.update(1)
            bar.set_postfix(frames_per_s=f"{frames_done / max(bar.format_dict['elapsed'], 1e-9):.0f}")
            if writer.bytes_written >= shard_bytes or manifest_index == len(records) - 1:
                sidecar = {"settings_digest": digest, "name": writer.name, "bytes": writer.finish(),
                           "first_clip": first_clip, "end_clip": manifest_index + 1, "clips": clips,
                           "skipped": skipped}
                _write_json_atomically(folder / writer.name.replace(".tar", ".json"), sidecar)
                sidecars.append(sidecar)
                writer, clips, skipped = None, [], []
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        results.close()  # stops the decoding workers now, not when the generator is collected
        bar.close()
    index = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **settings, "settings_digest": digest,
             "shards": [{"name": s["name"], "bytes": s["bytes"]} for s in sidecars],
             "clips": [clip for s in sidecars for clip in s["clips"]],
             "skipped": [entry for s in sidecars for entry in s["skipped"]]}
    _write_json_atomically(folder / INDEX_NAME, index)
    return folder / INDEX_NAME


def _store_clip(writer: ShardWriter, record: ClipRecord, manifest_index: int, clip: ExtractedClip,
                shard: int) -> dict:
    offsets, sizes = [], []
    for k, jpeg in enumerate(clip.jpegs):
        offset, size = writer.add_frame(f"{manifest_index:08d}/{k:06d}.jpg", jpeg)
        offsets.append(offset)
        sizes.append(size)
    start, end = clip_bounds(record)
    return {"manifest_index": manifest_index, "shard": shard, "source": record.path, "label": record.label,
            "clip_start": start, "clip_end": end, "source_fps": record.fps, "width": clip.width,
            "height": clip.height, "frame_offsets": offsets, "frame_sizes": sizes,
            "source_times": clip.source_times, "source_frames": clip.source_frames}


def _extract_or_error(record: ClipRecord, fps: float, short_side: int, quality: int):
    try:
        return extract_clip_pyav(record, fps, short_side, quality)
    except VideoError as error:
        return error


def _extract_in_order(records: Sequence[ClipRecord], fps, short_side, quality, device, workers):
    """Yield an ExtractedClip (or the VideoError) per record, in order, decoding ahead in parallel."""
    if device in ("gpu", "dali-cpu"):
        extractor = DaliClipExtractor(short_side, quality, device="mixed" if device == "gpu" else "cpu")
        for record in records:
            try:
                yield extractor(record, fps)
            except VideoError as error:
                yield error
        return
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers <= 1:
        for record in records:
            yield _extract_or_error(record, fps, short_side, quality)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    window: List = []
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for record in records:
            window.append(executor.submit(_extract_or_error, record, fps, short_side, quality))
            if len(window) >= 2 * workers:  # decode ahead, but never hold more than a few clips
                yield window.pop(0).result()
        while window:
            yield window.pop(0).result()
    finally:  # on an interrupt, drop the clips not started yet
        executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- reading a store


@dataclass
class StoredClip:
    """Metadata of one clip in a frame store (times in seconds from the source video's start)."""

    source: str
    label: Optional[str]
    clip_start: float
    clip_end: float
    source_fps: float
    width: int
    height: int
    shard: int
    num_frames: int
    source_times: List[float]
    source_frames: List[int]


class FrameStore:
    """Read-only view of a frame store; shards are memory-mapped on first use.

    ``store.frame_bytes(clip, k)`` is a zero-copy memoryview of the JPEG of stored frame k.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        index_path = self.path / INDEX_NAME if self.path.is_dir() else self.path
        self.path = index_path.parent
        if not index_path.is_file():
            raise StoreError(f"{index_path}: no frame store index; the extraction has not finished "
                             "(run `vito-fast prepare frames` again to resume it)")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT_NAME or index.get("version") != FORMAT_VERSION:
            raise StoreError(f"{index_path}: not a {FORMAT_NAME} v{FORMAT_VERSION} index")
        self.index = index
        self.fps, self.short_side, self.quality = index["fps"], index["short_side"], index["quality"]
        self.shards = index["shards"]
        self._clips = index["clips"]
        self._offsets = [np.asarray(clip["frame_offsets"], dtype=np.int64) for clip in self._clips]
        self._sizes = [np.asarray(clip["frame_sizes"], dtype=np.int64) for clip in self._clips]
        self._maps: Dict[int, mmap.mmap] = {}

    def __len__(self) -> int:
        return len(self._clips)

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for mapping in self._maps.values():
            mapping.close()
        self._maps.clear()

    def clip(self, clip: int) -> StoredClip:
        entry = self._clips[clip]
        return StoredClip(entry["source"], entry["label"], entry["clip_start"], entry["clip_end"],
                          entry["source_fps"], entry["width"], entry["height"], entry["shard"],
                          len(entry["frame_sizes"]), entry["source_times"], entry["source_frames"])

    def num_frames(self, clip: int) -> int:
        return len(self._sizes[clip])

    def _shard_map(self, shard: int) -> mmap.mmap:
        if shard not in self._maps:
            shard_path = self.path / self.shards[shard]["name"]
            try:
                with open(shard_path, "rb") as handle:
                    self._maps[shard] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as error:
                raise StoreError(f"{shard_path}: cannot map the shard: {error}") from error
        return self._maps[shard]

    def frame_bytes(self, clip: int, frame_index: int) -> memoryview:
        """The JPEG bytes of stored frame ``frame_index`` of ``clip`` (a view into the mapped shard)."""
        offset, size = int(self._offsets[clip][frame_index]), int(self._sizes[clip][frame_index])
        return memoryview(self._shard_map(self._clips[clip]["shard"]))[offset: offset + size]

    def validate(self, check_jpeg: bool = True) -> None:
        """Check every shard against the index: size, tar headers, JPEG markers; StoreError names the shard."""
        for shard_number, shard in enumerate(self.shards):
            shard_path = self.path / shard["name"]
            if not shard_path.is_file():
                raise StoreError(f"{shard_path}: shard listed in the index is missing")
            actual = shard_path.stat().st_size
            if actual != shard["bytes"]:
                raise StoreError(f"{shard_path}: {actual} bytes, the index expects {shard['bytes']}")
        for clip_number, entry in enumerate(self._clips):
            shard_path = self.path / self.shards[entry["shard"]]["name"]
            data = self._shard_map(entry["shard"])
            for k, (offset, size) in enumerate(zip(self._offsets[clip_number], self._sizes[clip_number])):
                where = f"{shard_path}: clip {clip_number} frame {k}"
                if offset < 512 or offset + size > len(data):
                    raise StoreError(f"{where}: bytes {offset}..{offset + size} lie outside the shard")
                try:
                    header = tarfile.TarInfo.frombuf(data[offset - 512: offset], "utf-8", "strict")
                except tarfile.TarError as error:
                    raise StoreError(f"{where}: no tar header before the payload ({error})") from None
                if header.size != size or header.name != f"{entry['manifest_index']:08d}/{k:06d}.jpg":
                    raise StoreError(f"{where}: tar header {header.name} ({header.size} bytes) does not match")
                if check_jpeg and (data[offset: offset + 2] != b"\xff\xd8" or data[offset + size - 2: offset + size] != b"\xff\xd9"):
                    raise StoreError(f"{where}: the payload is not a complete JPEG")
