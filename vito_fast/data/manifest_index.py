"""A manifest as arrays, built once and kept: later runs and the other ranks map it instead of reading JSON.

``VideoFileSource`` holds a manifest as arrays (paths once per file, keyframe indices concatenated).
Building them from JSON takes seconds per million clips, in every rank and every run, and each rank
holds its own copy. ``manifest_arrays(manifest)`` builds them once and saves them in the cache
(``$VITO_FAST_CACHE_DIR`` or ``~/.cache/vito_fast``, ``manifests/``), keyed by the manifest's
resolved path (or URL), size and modification time: a manifest written again is read again. Later
opens map the saved arrays read-only (one file, ``numpy.memmap``), so the ranks of a node share one
copy in the page cache. One process builds while the others wait for it (a lock file); an index
that cannot be read is built again, and one that cannot be written (a read-only cache) is simply
not kept. A remote manifest whose store gives no modification time or ETag is never kept. The cache
holds at most ``CACHE_GB`` of indexes: the least recently used go first.
"""
from __future__ import annotations

import array
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from vito_fast.data.config import cache_folder

__all__ = ["ManifestArrays", "manifest_arrays", "build_manifest_arrays", "INDEX_VERSION"]

CACHE_GB = 8.0  # the kept indexes in all, least recently used dropped first ($VITO_FAST_MANIFEST_CACHE_GB)
INDEX_VERSION = 1  # bump when the arrays or their meaning change: older indexes are then rebuilt
# per clip; "keyframe_start" has one more entry, the keyframe arrays one entry per keyframe
CLIP_ARRAYS = ("path_id", "num_frames", "fps", "frame_hw", "first_frame", "indexed", "codec_id", "orientation",
               "file_bytes", "labels", "gop_end")
KEYFRAME_ARRAYS = ("keyframes", "keyframe_pts", "keyframe_bytes")


@dataclass
class ManifestArrays:
    """The manifest of ``VideoFileSource``: ``paths`` (each file once), ``codecs`` (FFmpeg's names, first
    seen first), ``classes`` (sorted labels) and ``arrays`` (``CLIP_ARRAYS``, ``KEYFRAME_ARRAYS`` and
    ``keyframe_start``). ``kept``: where the index lies (None: built here and not kept)."""

    paths: List[str]
    codecs: List[str]
    classes: List[str]
    arrays: Dict[str, np.ndarray]
    kept: Optional[Path] = None

    def __len__(self) -> int:
        return len(self.arrays["num_frames"])


def build_manifest_arrays(manifest) -> ManifestArrays:
    """The arrays of ``manifest`` (a path or URL), read from its JSON lines."""
    from vito_fast.data.manifest import iter_manifest

    paths: List[str] = []
    path_ids: Dict[str, int] = {}
    # typed arrays while reading: a list of a million Python numbers would outweigh the result
    columns = {name: array.array("d" if name == "fps" else "q")
               for name in ("path", "num_frames", "fps", "height", "width", "first", "indexed", "keyframe_count",
                            "codec", "orientation", "file_bytes")}
    codec_ids: Dict[str, int] = {}
    label_ids: Dict[Optional[str], int] = {}
    labels, keyframes, keyframe_pts = array.array("q"), array.array("q"), array.array("q")
    # byte offset of each keyframe, and per clip where its last GOP ends (-1: not recorded)
    keyframe_bytes, gop_end = array.array("q"), array.array("q")
    for record in iter_manifest(manifest):
        if record.path not in path_ids:
            path_ids[record.path] = len(paths)
            paths.append(record.path)
        # a clip's frame k is frame first + k of its file (split_into_clips' rounding)
        first = 0 if record.clip_start is None else int(np.ceil(record.clip_start * record.fps - 1e-6))
        indexed = record.keyframes is not None and record.keyframe_pts is not None
        for name, value in (("path", path_ids[record.path]), ("num_frames", record.num_frames),
                            ("fps", record.fps), ("height", record.height), ("width", record.width),
                            ("first", first), ("indexed", indexed),
                            ("keyframe_count", len(record.keyframes) if indexed else 0),
                            ("codec", codec_ids.setdefault(record.codec, len(codec_ids))),
                            ("orientation", sum(bit << index for index, bit in enumerate(record.orientation or ()))),
                            ("file_bytes", -1 if record.file_bytes is None else record.file_bytes)):
            columns[name].append(value)
        labels.append(label_ids.setdefault(None if record.label is None else str(record.label), len(label_ids)))
        if indexed:
            keyframes.extend(record.keyframes)
            keyframe_pts.extend(record.keyframe_pts)
            offsets = record.keyframe_bytes
            if offsets is None or len(offsets) != len(record.keyframes) + 1:
                offsets = [-1] * (len(record.keyframes) + 1)
            keyframe_bytes.extend(offsets[:-1])
            gop_end.append(offsets[-1])
        else:
            gop_end.append(-1)
    names = sorted(label for label in label_ids if label is not None)
    sorted_ids = {name: index for index, name in enumerate(names)}
    lookup = np.full(max(len(label_ids), 1), -1, dtype=np.int64)  # first-seen id -> sorted class id (-1: none)
    for label, seen in label_ids.items():
        if label is not None:
            lookup[seen] = sorted_ids[label]
    arrays = {
        "path_id": np.asarray(columns["path"], dtype=np.int64),
        "num_frames": np.asarray(columns["num_frames"], dtype=np.int64),
        "fps": np.asarray(columns["fps"], dtype=np.float64),
        "frame_hw": np.stack([np.asarray(columns["height"], dtype=np.int64),
                              np.asarray(columns["width"], dtype=np.int64)], axis=1).reshape(-1, 2),
        "first_frame": np.asarray(columns["first"], dtype=np.int64),
        "indexed": np.asarray(columns["indexed"], dtype=bool),
        "keyframe_start": np.concatenate([[0], np.cumsum(columns["keyframe_count"], dtype=np.int64)]).astype(np.int64),
        "keyframes": np.asarray(keyframes, dtype=np.int64),
        "keyframe_pts": np.asarray(keyframe_pts, dtype=np.int64),
        "keyframe_bytes": np.asarray(keyframe_bytes, dtype=np.int64),
        "gop_end": np.asarray(gop_end, dtype=np.int64),
        "file_bytes": np.asarray(columns["file_bytes"], dtype=np.int64),  # -1: not recorded
        "codec_id": np.asarray(columns["codec"], dtype=np.int64),
        "orientation": np.asarray(columns["orientation"], dtype=np.int64),  # bits: transpose, flip rows, columns
        "labels": lookup[np.asarray(labels, dtype=np.int64)],
    }
    return ManifestArrays(paths, list(codec_ids), names, arrays)


def _identity(manifest) -> Optional[str]:
    """What names this version of the manifest: its resolved path or URL, size and modification time (or
    ETag); None when there is no such mark (the index is then not kept)."""
    from vito_fast.storage.remote import RemoteFiles, is_url

    if is_url(manifest):
        try:
            info = RemoteFiles(str(manifest)).fs.info(str(manifest))
        except Exception:  # the build reads it and says what is wrong
            return None
        mark = next((info[key] for key in ("ETag", "etag", "LastModified", "last_modified", "mtime", "updated")
                     if info.get(key)), None)
        return None if mark is None or info.get("size") is None else f"{manifest}|{info['size']}|{mark}"
    try:
        stat = os.stat(manifest)
    except OSError:
        return None
    # the records' paths are the manifest's folder as given joined with theirs: a relative one is relative
    # to the working folder, which then names the index too
    given = str(manifest) if os.path.isabs(manifest) else f"{os.getcwd()}|{manifest}"
    return f"{Path(manifest).resolve()}|{given}|{stat.st_size}|{stat.st_mtime_ns}"


def _load(folder: Path) -> ManifestArrays:
    """The index in ``folder``, its arrays views of one read-only mapping of ``arrays.bin`` (one file
    descriptor, pages shared between processes); raises when it is incomplete or inconsistent."""
    meta = json.loads((folder / "index.json").read_text())
    if meta.get("version") != INDEX_VERSION:
        raise ValueError(f"index version {meta.get('version')}, not {INDEX_VERSION}")
    size = os.path.getsize(folder / "arrays.bin")
    if size != meta["bytes"]:
        raise ValueError(f"arrays.bin holds {size} bytes, not {meta['bytes']}")
    mapped = np.memmap(folder / "arrays.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    arrays = {}
    for name, (offset, dtype, shape) in meta["arrays"].items():
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = mapped[offset:offset + count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
    clips, keyframes = meta["clips"], meta["keyframes"]
    if set(arrays) != {*CLIP_ARRAYS, *KEYFRAME_ARRAYS, "keyframe_start"} \
            or any(len(arrays[name]) != clips for name in CLIP_ARRAYS) or len(arrays["keyframe_start"]) != clips + 1 \
            or any(len(arrays[name]) != keyframes for name in KEYFRAME_ARRAYS) \
            or len(meta["paths"]) != meta["files"] or int(arrays["keyframe_start"][-1]) != keyframes:
        raise ValueError("the index's arrays do not agree with each other")
    try:
        os.utime(folder / "index.json")  # last used now: the cache drops the least recently used first
    except OSError:
        pass  # a read-only cache still serves
    return ManifestArrays(meta["paths"], meta["codecs"], meta["classes"], arrays, kept=folder)


def _prune(root: Path, keep: Path) -> None:
    """Drop the least recently used indexes beyond ``CACHE_GB`` (``$VITO_FAST_MANIFEST_CACHE_GB``, default
    8) in all, never ``keep``; and folders an interrupted build left over an hour ago. A process that
    maps a dropped index keeps reading it (the file goes when the last mapping does)."""
    limit = float(os.environ.get("VITO_FAST_MANIFEST_CACHE_GB", CACHE_GB)) * 1e9
    kept = []
    for entry in os.scandir(root):
        path = Path(entry.path)
        try:
            if entry.name.startswith("."):
                if entry.is_dir() and time.time() - entry.stat().st_mtime > 3600:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            used = (path / "index.json").stat().st_mtime
            size = sum(item.stat().st_size for item in path.iterdir())
        except OSError:
            continue
        kept.append((used, size, path))
    total = 0
    for used, size, path in sorted(kept, key=lambda item: -item[0]):
        total += size
        if total > limit and path != keep:
            shutil.rmtree(path, ignore_errors=True)


def _save(index: ManifestArrays, folder: Path) -> None:
    """Write ``index`` into ``folder`` whole or not at all (built beside it, renamed into place): the
    arrays one after another in ``arrays.bin`` (each at a multiple of 64 bytes), what they are in
    ``index.json``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        layout, offset = {}, 0
        with open(building / "arrays.bin", "wb") as out:
            for name, values in index.arrays.items():
                values = np.ascontiguousarray(values)
                out.write(b"\0" * (-offset % 64))
                offset += -offset % 64
                layout[name] = [offset, values.dtype.str, list(values.shape)]
                out.write(values.tobytes())
                offset += values.nbytes
        meta = {"version": INDEX_VERSION, "clips": len(index), "keyframes": len(index.arrays["keyframes"]),
                "bytes": offset, "arrays": layout, "files": len(index.paths), "paths": index.paths,
                "codecs": index.codecs, "classes": index.classes}
        (building / "index.json").write_text(json.dumps(meta))
        os.rename(building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)  # gone already when the rename succeeded


def manifest_arrays(manifest, keep: bool = True) -> ManifestArrays:
    """The arrays of ``manifest``: its kept index where there is one for this version of it, else built
    from the JSON lines and kept (``keep``; see the module docstring)."""
    identity = _identity(manifest) if keep else None
    if identity is None:
        return build_manifest_arrays(manifest)
    digest = hashlib.sha256(f"{identity}|v{INDEX_VERSION}".encode()).hexdigest()[:24]
    folder = Path(cache_folder()) / "manifests" / digest
    kept = _kept(folder)
    if kept is not None:
        return kept
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.parent / f".{digest}.lock", "w")
    except OSError:  # a cache that cannot be written: build, keep nothing
        return build_manifest_arrays(manifest)
    with lock:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait, then map what it wrote
        kept = _kept(folder)
        if kept is not None:
            return kept
        index = build_manifest_arrays(manifest)
        try:
            _save(index, folder)
        except OSError:  # a full or read-only disk: this run uses what it built
            return index
        _prune(folder.parent, keep=folder)
    try:
        os.unlink(folder.parent / f".{digest}.lock")
    except OSError:
        pass
    kept = _kept(folder)
    return index if kept is None else kept


def _kept(folder: Path) -> Optional[ManifestArrays]:
    """The index kept in ``folder``, or None: none there, or a damaged one (removed, to be built again)."""
    if not (folder / "index.json").is_file():
        return None
    try:
        return _load(folder)
    except (OSError, ValueError, KeyError):
        shutil.rmtree(folder, ignore_errors=True)
        return None
