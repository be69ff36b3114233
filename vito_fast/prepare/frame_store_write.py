"""Writing a frame store: decode clips (in parallel), append their JPEGs to tar shards, write the index.

See :mod:`vito_fast.data.frame_store` for the layout. Each shard gets a JSON sidecar with its
clips once the tar is complete; the version-2 index (:mod:`frame_store_index`) is built from the
sidecars and written last.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from vito_fast._spawn import main_left_alone
from vito_fast.prepare.clip_decode import DaliClipExtractor, ExtractedClip, clip_bounds, extract_clip_pyav
from vito_fast.data.frame_store_index import arrays_from_clips, write_index, write_json_atomically
from vito_fast.data.config import usable_cores
from vito_fast.data.manifest import ClipRecord, read_manifest
from vito_fast.errors import StoreError, VideoError

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
                   workers: Optional[int] = None, progress: bool = True, part=None) -> Path:
    """Extract every clip of a manifest into a frame store in ``out_dir``; returns the index path.

    ``device="cpu"`` decodes with PyAV in ``workers`` processes (default: CPU count; 1 = in this
    process), ``"gpu"`` with DALI's NVDEC decoder, ``"dali-cpu"`` with DALI's CPU decoder (VP8,
    VP9 and MJPEG only; the same code path as "gpu", so it is what CPU tests exercise). A shard is
    closed once it holds ``shard_bytes`` (clips never span shards). Finished shards of an earlier
    interrupted run with the same manifest and settings are kept. ``part`` (a ``parts.Part``):
    extract only that contiguous block of the manifest's clips (they keep their manifest index), for
    ``prepare merge`` to join the parts' stores.
    """
    records = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    if device not in ("cpu", "gpu", "dali-cpu"):
        raise ValueError(f"extract_frames: device must be 'cpu', 'gpu' or 'dali-cpu', not {device!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"fps": fps, "short_side": short_side, "quality": quality, "device": device}
    digest = _settings_digest(records, settings)  # of the whole manifest: the parts of one extraction share it
    start, stop = 0, len(records)
    if part is not None:
        from vito_fast.prepare.parts import part_bounds

        start, stop = part_bounds(len(records), part)
    sidecars = _finished_shards(folder, digest)
    next_clip = sidecars[-1]["end_clip"] if sidecars else start
    for stale in folder.glob("*.tmp"):
        stale.unlink()

    from tqdm import tqdm

    remaining = records[next_clip:stop]
    bar = tqdm(total=stop - start, initial=next_clip - start, desc="frames", unit="clip", disable=not progress)
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
            if writer.bytes_written >= shard_bytes or manifest_index == stop - 1:
                sidecar = {"settings_digest": digest, "name": writer.name, "bytes": writer.finish(),
                           "first_clip": first_clip, "end_clip": manifest_index + 1, "clips": clips,
                           "skipped": skipped}
                write_json_atomically(folder / writer.name.replace(".tar", ".json"), sidecar)
                sidecars.append(sidecar)
                writer, clips, skipped = None, [], []
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        results.close()  # stops the decoding workers now, not when the generator is collected
        bar.close()
    arrays, labels = arrays_from_clips([clip for s in sidecars for clip in s["clips"]])
    header = {**settings, "settings_digest": digest,
              "shards": [{"name": s["name"], "bytes": s["bytes"]} for s in sidecars],
              "skipped": [entry for s in sidecars for entry in s["skipped"]]}
    if part is not None:
        header["part"] = {"index": part.index, "count": part.count, "first_clip": start, "end_clip": stop,
                          "manifest_clips": len(records)}
    return write_index(folder, header, arrays, labels)


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
    workers = usable_cores() if workers is None else workers
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
            with main_left_alone():  # submit starts the processes: the caller's script is not run again
                window.append(executor.submit(_extract_or_error, record, fps, short_side, quality))
            if len(window) >= 2 * workers:  # decode ahead, but never hold more than a few clips
                yield window.pop(0).result()
        while window:
            yield window.pop(0).result()
    finally:  # on an interrupt, drop the clips not started yet
        executor.shutdown(wait=True, cancel_futures=True)
