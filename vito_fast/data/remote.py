"""Data where big corpora live: fsspec URLs (``https://``, ``s3://``, ``gs://``, ...) beside local paths.

``is_url(path)`` says whether a path names a remote object ("scheme://..."; ``file://`` and plain
paths stay local). ``RemoteFiles(url)`` reads whole small objects (``cat``) and byte ranges of
big ones (``read_range``) through fsspec, each request with a timeout and retries with backoff; a
read that keeps failing raises ``StoreError`` naming the object. Credentials and endpoints come
the standard way (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...: fsspec's own). A protocol whose
package is missing says which extra installs it. ``BlockCache`` keeps the blocks ranged reads
touched on a local disk, least recently used out first past a size limit, so a second epoch reads
from disk.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Optional

from vito_fast.errors import StoreError

__all__ = ["is_url", "RemoteFiles", "BlockCache", "join_url", "open_remote"]

# A video read from the network: fsspec's read-ahead cache in blocks of this size. A sample seeks to
# the keyframe before its frame and decodes a GOP: a few blocks, not the whole object.
VIDEO_BLOCK_BYTES = 1 << 20

# protocol -> (the package fsspec needs for it, the extra of vito_fast that installs it)
PROTOCOL_PACKAGES = {"http": ("aiohttp", "remote"), "https": ("aiohttp", "remote"), "s3": ("s3fs", "s3"),
                     "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def is_url(path) -> bool:
    """True for "scheme://..." other than ``file://`` (a remote object fsspec reads)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


class RemoteFiles:
    """Reads under one URL prefix through fsspec: ``cat(url)`` whole, ``read_range(url, offset, size)``.

    ``timeout``: seconds per request; ``retries``: attempts after the first, ``backoff`` s doubling.
    """

    def __init__(self, url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 0.2,
                 cache: Optional["BlockCache"] = None):
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.cache = cache
        try:
            import fsspec
        except ImportError:
            raise ImportError(f"{url}: reading remote data needs fsspec: pip install 'vito_fast[remote]'") from None
        protocol = url.split("://", 1)[0]
        options = {}
        if protocol in ("http", "https"):
            options = {"client_kwargs": {"timeout": _aiohttp_timeout(timeout)}}
        try:
            self.fs = fsspec.filesystem(protocol, **options)
        except ImportError as error:
            package, extra = PROTOCOL_PACKAGES.get(protocol, (str(error), "remote"))
            raise ImportError(f"{url}: the {protocol}:// protocol needs {package}: "
                              f"pip install 'vito_fast[{extra}]'") from None

    def _attempt(self, what: str, read):
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return read()
            except FileNotFoundError:
                raise StoreError(f"{what}: not found") from None
            except Exception as error:  # network errors of every protocol: retried, then named
                if attempt == self.retries:
                    raise StoreError(f"{what}: failed {self.retries + 1} times, last: "
                                     f"{type(error).__name__}: {str(error).strip()[:200]}") from None
                time.sleep(delay)
                delay *= 2

    def cat(self, url: str) -> bytes:
        return self._attempt(url, lambda: self.fs.cat_file(url))

    def read_ranges(self, requests, what=None) -> list:
        """``read_range`` of many (url, offset, size) at once: without a cache, one ``cat_ranges`` call that
        keeps every request in flight together (latency paid once, not per frame); a request that fails
        there is retried alone. Returns bytes or the StoreError per request, in order."""
        requests = list(requests)
        what = what or [url for url, _, _ in requests]
        results: list = [None] * len(requests)
        if self.cache is None and len(requests) > 1:
            try:
                fetched = self.fs.cat_ranges([url for url, _, _ in requests], [offset for _, offset, _ in requests],
                                             [offset + size for _, offset, size in requests], on_error="return")
            except Exception:  # the batch call itself failed: each request on its own below
                fetched = [None] * len(requests)
            for index, ((_, _, size), data) in enumerate(zip(requests, fetched)):
                if isinstance(data, bytes) and len(data) == size:
                    results[index] = data
        for index, (url, offset, size) in enumerate(requests):
            if results[index] is None:
                try:
                    results[index] = self.read_range(url, offset, size, what[index])
                except StoreError as error:
                    results[index] = error
        return results

    def read_range(self, url: str, offset: int, size: int, what: Optional[str] = None) -> bytes:
        if self.cache is not None:
            data = self.cache.read(url, offset, size, lambda start, end: self._attempt(
                what or url, lambda: self.fs.cat_file(url, start=start, end=end)))
        else:
            data = self._attempt(what or url, lambda: self.fs.cat_file(url, start=offset, end=offset + size))
        if len(data) != size:
            raise StoreError(f"{what or url}: only {len(data)} of {size} bytes at offset {offset}; truncated")
        return data


class BlockCache:
    """Blocks of remote objects on a local disk: ``folder/<digest of the URL>/<block number>``.

    ``read(url, offset, size, fetch)`` assembles the range from ``block_bytes`` blocks, fetching the
    missing ones with ``fetch(start, end)`` (one request for the run from the first missing block to
    the last; the object's last block may be short) and writing each under a temporary name, then
    renaming it. Past ``max_bytes`` the least recently used blocks are deleted. Safe across threads
    and processes that share the folder (a block is whole or absent)."""

    def __init__(self, folder, max_bytes: int, block_bytes: int = 1 << 20):
        if max_bytes < block_bytes:
            raise ValueError(f"BlockCache: max_bytes {max_bytes} is below one block ({block_bytes})")
        self.folder, self.max_bytes, self.block_bytes = Path(folder), int(max_bytes), int(block_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._written = 0  # bytes written since the last eviction pass
        self.hits = self.misses = 0

    def _block_path(self, url: str, block: int) -> Path:
        return self.folder / hashlib.sha256(url.encode()).hexdigest()[:24] / f"{block:09d}"

    def read(self, url: str, offset: int, size: int, fetch) -> bytes:
        first, last = offset // self.block_bytes, (offset + size - 1) // self.block_bytes
        blocks, missing = {}, []
        for block in range(first, last + 1):
            path = self._block_path(url, block)
            try:
                blocks[block] = path.read_bytes()
                os.utime(path)  # recently used
                self.hits += 1
            except FileNotFoundError:
                missing.append(block)
        if missing:
            self.misses += len(missing)
            start = missing[0] * self.block_bytes
            data = fetch(start, (missing[-1] + 1) * self.block_bytes)  # shorter where the object ends
            for block in range(missing[0], missing[-1] + 1):
                piece = data[(block - missing[0]) * self.block_bytes:(block - missing[0] + 1) * self.block_bytes]
                if block in missing:
                    self._store(self._block_path(url, block), piece)
                blocks[block] = piece
        joined = b"".join(blocks[block] for block in range(first, last + 1))
        skip = offset - first * self.block_bytes
        return joined[skip:skip + size]

    def _store(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        with self._lock:
            self._written += len(data)
            if self._written < self.max_bytes // 8:
                return
            self._written = 0
        self.evict()

    def evict(self) -> None:
        """Delete the least recently used blocks until the cache holds at most ``max_bytes``."""
        entries = []
        for path in self.folder.glob("*/*"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if not path.name.startswith("."):
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda entry: entry[0]):
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
                total -= size
            except FileNotFoundError:
                pass

    @property
    def size_bytes(self) -> int:
        """Bytes the cache holds now."""
        return sum(path.stat().st_size for path in self.folder.glob("*/*") if not path.name.startswith("."))


def open_remote(url: str, block_size: int = VIDEO_BLOCK_BYTES):
    """A seekable binary file object of ``url`` (fsspec, ranged reads in ``block_size`` blocks), for PyAV."""
    files = RemoteFiles(url)
    try:
        return files.fs.open(url, "rb", block_size=block_size, cache_type="readahead")
    except FileNotFoundError:
        from vito_fast.errors import VideoError

        raise VideoError(f"{url}: not found") from None


def _aiohttp_timeout(seconds: float):
    try:
        import aiohttp
    except ImportError:
        raise ImportError("http(s):// needs aiohttp: pip install 'vito_fast[remote]'") from None
    return aiohttp.ClientTimeout(total=seconds)
