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
import mmap
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vito_fast.data.clip_decode import DaliClipExtractor, ExtractedClip, clip_bounds, extract_clip_pyav
from vito_fast.data.manifest import ClipRecord, read_manifest
from vito_fast.errors import StoreError, VideoError

FORMAT_NAME, FORMAT_VERSION = "vito_fast.frame_store", 1
INDEX_NAME = "index.json"
PathLike = Union[str, os.PathLike]


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
