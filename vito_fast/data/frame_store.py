"""Frame store: clips pre-extracted at a fixed rate as JPEG frames in tar shards, plus an index.

Layout of a store folder::

    shard-00000.tar    plain (ustar) tar; member "<manifest index:08d>/<frame:06d>.jpg" per frame
    shard-00000.json   that shard's clips (JSON, with per-frame lists), written only after the tar is complete
    ...
    index.json         the index header, written last (atomically) when every clip is done
    index-<id>.*.npy   the index arrays (frame offsets and sizes, per-clip metadata); see frame_store_index

Per clip the index holds its ``shard``, the ``source`` video, ``label``, ``clip_start``/``clip_end``,
``source_fps``, the stored ``width`` and ``height``, and per stored frame k the JPEG payload's byte
range inside the shard, ``source_times[k]`` (seconds from the video start of the source frame
shown) and ``source_frames[k]`` (its index in the video). Stored frame k is the source frame on
screen at ``clip_start + k / fps``. Clips a decoder could not read are listed under ``skipped``.

Every file is written under a temporary name and renamed, so an interrupted extraction leaves only
complete shards, each with its sidecar; running it again skips them and produces byte-identical
shards and index. Reading (:class:`FrameStore`) is ``os.pread`` on one descriptor per shard: a
truncated or missing shard raises StoreError naming it, never SIGBUS.
"""
from __future__ import annotations

import os
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vito_fast.data.frame_store_index import (FORMAT_NAME, FORMAT_VERSION, INDEX_NAME, clip_documents, read_index,
                                              source_path, upgrade_store)
from vito_fast.errors import StoreError

__all__ = ["FrameStore", "StoredClip", "upgrade_store",
           "FORMAT_NAME", "FORMAT_VERSION", "INDEX_NAME"]
PathLike = Union[str, os.PathLike]


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


class _PerClip:
    """``view[clip]``: the slice of a per-frame array that belongs to ``clip`` (CSR rows)."""

    def __init__(self, first_frame: np.ndarray, values: np.ndarray):
        self.first_frame, self.values = first_frame, values

    def __getitem__(self, clip: int) -> np.ndarray:
        return self.values[int(self.first_frame[clip]): int(self.first_frame[clip + 1])]

    def __len__(self) -> int:
        return len(self.first_frame) - 1


class _ShardFiles:
    """Read-only descriptors of the shards, opened on first use; at most ``max_open`` stay open.

    A descriptor is closed (least recently used first) only while no read holds it, so a thread
    never preads from a number the kernel has handed to another file.
    """

    def __init__(self, paths: Sequence[Path], max_open: int):
        self.paths, self.max_open = list(paths), max_open
        self._open: "OrderedDict[int, int]" = OrderedDict()  # shard -> descriptor, oldest first
        self._users: Dict[int, int] = {}
        self._lock = threading.Lock()

    def acquire(self, shard: int, what: str) -> int:
        with self._lock:
            if shard in self._open:
                self._open.move_to_end(shard)
            else:
                try:
                    self._open[shard] = os.open(self.paths[shard], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except OSError as error:
                    problem = "missing" if isinstance(error, FileNotFoundError) else f"cannot be opened: {error}"
                    raise StoreError(f"{self.paths[shard]}: shard {problem} (needed for {what})",
                                     object_name=str(self.paths[shard])) from None
            self._users[shard] = self._users.get(shard, 0) + 1
            if len(self._open) > self.max_open:
                idle = [other for other in self._open if not self._users.get(other)]
                for other in idle[: len(self._open) - self.max_open]:
                    os.close(self._open.pop(other))
            return self._open[shard]

    @property
    def open_count(self) -> int:
        """Descriptors open now."""
        return len(self._open)

    def release(self, shard: int) -> None:
        with self._lock:
            self._users[shard] -= 1

    def close(self) -> None:
        with self._lock:
            for descriptor in self._open.values():
                os.close(descriptor)
            self._open.clear()


class FrameStore:
    """Read-only view of a frame store; frames are read with ``os.pread`` (no shard is memory-mapped).

    ``store.frame_bytes(clip, k)`` is the JPEG of stored frame k as ``bytes``;
    ``store.read_frames(pairs)`` reads many (clip, frame) pairs at once on a small thread pool.
    ``store.arrays`` holds the index arrays (names and dtypes in :mod:`frame_store_index`),
    memory-mapped for a version-2 index: per-clip figures for all clips come without a Python loop,
    e.g. frames per clip ``np.diff(store.arrays["first_frame"])``. A version-1 index opens too
    (converted in memory, with a warning that names the upgrade command).
    """

    def __init__(self, path: PathLike, *, threads: int = 4, max_open_shards: int = 256, cache=None,
                 remote_settings=None):
        index = read_index(path)
        self.path, self.version, self.header, self.arrays = index.path.parent, index.version, index.header, index.arrays
        self.url = self.header.get("url")  # a store on object storage (``storage.remote.is_url``): ranged reads
        self._remote = None
        if self.url is not None:
            from vito_fast.storage.remote import RemoteFiles

            # cache: a remote.BlockCache, or None; remote_settings: a remote.RemoteSettings (None: the environment's)
            self._remote = RemoteFiles(self.url, remote_settings, cache=cache)
        self.fps, self.short_side, self.quality = self.header["fps"], self.header["short_side"], self.header["quality"]
        self.shards: List[dict] = self.header["shards"]
        self.skipped: List[dict] = self.header.get("skipped", [])
        self.label_names: List[str] = self.header["labels"]
        self._first = self.arrays["first_frame"]
        self._offsets = _PerClip(self._first, self.arrays["frame_offsets"])
        self._sizes = _PerClip(self._first, self.arrays["frame_sizes"])
        self._files = _ShardFiles([self.path / shard["name"] for shard in self.shards], max_open_shards)
        self.threads = threads
        self._pool, self._pool_pid, self._document = None, None, None

    def __len__(self) -> int:
        return int(self.header["num_clips"])

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the shard descriptors and the read threads (the store can still be read: they reopen)."""
        self._files.close()
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool = None

    @property
    def index(self) -> dict:
        """The whole index as a version-1 document (per-clip dicts with lists): for tools and tests.

        Built on first use, by a Python loop over every frame: slow and large on a big store.
        """
        if self._document is None:
            header = {key: value for key, value in self.header.items()
                      if key not in ("version", "num_clips", "num_frames", "num_sources", "labels", "array_prefix")}
            self._document = {**header, "version": 1, "clips": clip_documents(self.arrays, self.label_names)}
        return self._document

    def num_frames(self, clip: int) -> int:
        return int(self._first[clip + 1] - self._first[clip])

    def source(self, clip: int) -> str:
        return source_path(self.arrays, clip)

    def shard_path(self, clip: int):
        """The clip's shard: a Path, or the shard's URL for a store on object storage."""
        if self.url is not None:
            return self._shard_url(int(self.arrays["shard"][clip]))
        return self._files.paths[int(self.arrays["shard"][clip])]

    def _shard_url(self, shard: int) -> str:
        return f"{self.url}/{self.shards[shard]['name']}"

    def frame_offsets(self, clip: int) -> np.ndarray:
        """(num_frames,) byte offsets of the clip's JPEGs in its shard (read-only)."""
        return self._offsets[clip]

    def frame_sizes(self, clip: int) -> np.ndarray:
        """(num_frames,) byte sizes of the clip's JPEGs (read-only)."""
        return self._sizes[clip]

    @property
    def open_shards(self) -> int:
        """Shard descriptors open now (at most ``max_open_shards`` plus those in use)."""
        return self._files.open_count

    def clip(self, clip: int) -> StoredClip:
        arrays, frames = self.arrays, slice(int(self._first[clip]), int(self._first[clip + 1]))
        label = int(arrays["label"][clip])
        return StoredClip(self.source(clip), None if label < 0 else self.label_names[label],
                          float(arrays["clip_start"][clip]), float(arrays["clip_end"][clip]),
                          float(arrays["source_fps"][clip]), int(arrays["width"][clip]), int(arrays["height"][clip]),
                          int(arrays["shard"][clip]), frames.stop - frames.start,
                          arrays["source_times"][frames].tolist(), arrays["source_frames"][frames].tolist())

    # ------------------------------------------------------------------------- reading frames

    def _pread(self, descriptor: int, shard: int, offset: int, size: int, clip: int, frame: int) -> bytes:
        try:
            data = os.pread(descriptor, size, offset)
            while 0 < len(data) < size:  # a regular file returns less only at its end, but be exact
                more = os.pread(descriptor, size - len(data), offset + len(data))
                if not more:
                    break
                data += more
        except OSError as error:
            raise StoreError(f"{self._files.paths[shard]}: cannot read clip {clip} frame {frame}: {error}",
                             object_name=str(self._files.paths[shard])) from None
        if len(data) != size:
            raise StoreError(f"{self._files.paths[shard]}: clip {clip} frame {frame}: only {len(data)} of {size} "
                             f"bytes at offset {offset}; the shard is truncated", object_name=str(self._files.paths[shard]))
        return data

    def _read_requests(self, requests: Sequence[tuple]) -> List[Union[bytes, StoreError]]:
        """Read (clip, frame, shard, offset, size) requests in order, holding each shard's descriptor once."""
        out: List[Union[bytes, StoreError]] = []
        if self._remote is not None:  # ranged reads all in flight at once, each retried; a failing frame is its error
            return self._remote.read_ranges(
                [(self._shard_url(shard), offset, size) for _, _, shard, offset, size in requests],
                [f"{self._shard_url(shard)}: clip {clip} frame {frame}" for clip, frame, shard, _, _ in requests])
        held: Dict[int, int] = {}
        try:
            for clip, frame, shard, offset, size in requests:
                try:
                    if shard not in held:
                        held[shard] = self._files.acquire(shard, f"clip {clip} frame {frame}")
                    out.append(self._pread(held[shard], shard, offset, size, clip, frame))
                except StoreError as error:
                    out.append(error)
        finally:
            for shard in held:
                self._files.release(shard)
        return out

    def _locate(self, pairs: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, offset, size) per (clip, frame) row; IndexError names a row out of range."""
        clips, frames = pairs[:, 0], pairs[:, 1]
        bad_clip = (clips < 0) | (clips >= len(self))
        counts = np.zeros_like(frames)
        counts[~bad_clip] = self._first[clips[~bad_clip] + 1] - self._first[clips[~bad_clip]]
        bad = bad_clip | (frames < 0) | (frames >= counts)
        if bad.any():
            clip, frame = pairs[np.argmax(bad)]
            raise IndexError(f"{self.path}: clip {clip} frame {frame} is not in the store "
                             f"({len(self)} clips)")
        rows = self._first[clips] + frames
        return (self.arrays["shard"][clips].astype(np.int64), self.arrays["frame_offsets"][rows],
                self.arrays["frame_sizes"][rows].astype(np.int64))

    def frame_bytes(self, clip: int, frame_index: int) -> bytes:
        """The JPEG bytes of stored frame ``frame_index`` of ``clip``; StoreError names the shard if unreadable."""
        return self.read_frames([(clip, frame_index)])[0]

    def read_frames(self, pairs, *, raise_errors: bool = True) -> List[Union[bytes, StoreError]]:
        """The JPEG bytes of every (clip, frame) row of ``pairs`` ((P, 2) ints), in order.

        Reads run on ``threads`` threads (``os.pread`` releases the GIL) when there are many. With
        ``raise_errors=False`` a frame that cannot be read is its StoreError in the list instead.
        """
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        shards, offsets, sizes = (column.tolist() for column in self._locate(pairs))
        requests = list(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), shards, offsets, sizes))
        if self.threads <= 1 or len(requests) < 4 * self.threads:
            results = self._read_requests(requests)
        else:  # one chunk per thread: a task per frame would cost more than the read
            step = -(-len(requests) // self.threads)
            chunks = [requests[start: start + step] for start in range(0, len(requests), step)]
            results = [data for part in self._thread_pool().map(self._read_requests, chunks) for data in part]
        if raise_errors:
            for data in results:
                if isinstance(data, StoreError):
                    raise data
        return results

    def _thread_pool(self):
        if self._pool is None or self._pool_pid != os.getpid():  # a forked child has no threads
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="frame-store-read")
            self._pool_pid = os.getpid()
        return self._pool

    def validate(self, check_jpeg: bool = True) -> None:
        """Check every shard against the index: size, tar headers, JPEG markers; StoreError names the shard."""
        if self.url is not None:
            raise StoreError(f"{self.url}: validate a store where it was written, before it is uploaded")
        for shard in self.shards:
            shard_path = self.path / shard["name"]
            if not shard_path.is_file():
                raise StoreError(f"{shard_path}: shard listed in the index is missing")
            actual = shard_path.stat().st_size
            if actual != shard["bytes"]:
                raise StoreError(f"{shard_path}: {actual} bytes, the index expects {shard['bytes']}")
        manifest_index = self.arrays["manifest_index"]
        for clip in range(len(self)):
            shard, shard_path = int(self.arrays["shard"][clip]), self.shard_path(clip)
            descriptor = self._files.acquire(shard, f"clip {clip}")
            try:
                for k, (offset, size) in enumerate(zip(self._offsets[clip].tolist(), self._sizes[clip].tolist())):
                    where = f"{shard_path}: clip {clip} frame {k}"
                    if offset < 512 or offset + size > self.shards[shard]["bytes"]:
                        raise StoreError(f"{where}: bytes {offset}..{offset + size} lie outside the shard")
                    data = self._pread(descriptor, shard, offset - 512, size + 512, clip, k)
                    try:
                        header = tarfile.TarInfo.frombuf(data[:512], "utf-8", "strict")
                    except tarfile.TarError as error:
                        raise StoreError(f"{where}: no tar header before the payload ({error})") from None
                    if header.size != size or header.name != f"{int(manifest_index[clip]):08d}/{k:06d}.jpg":
                        raise StoreError(f"{where}: tar header {header.name} ({header.size} bytes) does not match")
                    if check_jpeg and (data[512:514] != b"\xff\xd8" or data[-2:] != b"\xff\xd9"):
                        raise StoreError(f"{where}: the payload is not a complete JPEG")
            finally:
                self._files.release(shard)
