"""Data where big corpora live: fsspec URLs (``https://``, ``s3://``, ``gs://``, ...) beside local paths.

``is_url(path)`` says whether a path names a remote object ("scheme://..."; ``file://`` and plain
paths stay local). ``RemoteFiles(url)`` reads whole small objects (``cat``) and byte ranges of
big ones (``read_range``) through fsspec, each request with a timeout and retries with backoff; a
read that keeps failing raises ``StoreError`` naming the object. ``RemoteSettings`` holds the
timeout and retries; without one, ``RemoteSettings.from_environment()`` (``VITO_FAST_REMOTE_TIMEOUT``
seconds, ``VITO_FAST_REMOTE_RETRIES``: decode worker processes inherit them). The timeout bounds
each wait for bytes (connecting, the answer, every read of the body), not a whole transfer, and
the protocol's own retries are turned off so that a stalled server costs ``timeout × (retries + 1)``
plus the backoff, never more. Credentials and endpoints come
the standard way (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...: fsspec's own). A protocol whose
package is missing says which extra installs it. ``BlockCache`` keeps the blocks ranged reads
touched on a local disk, least recently used out first past a size limit, so a second epoch reads
from disk.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vito_fast.errors import MissingExtra, StoreError

__all__ = ["is_url", "RemoteFiles", "RemoteSettings", "BlockCache", "join_url", "open_remote", "write_whole"]

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


@dataclass(frozen=True)
class RemoteSettings:
    """How requests to object storage behave: ``timeout`` seconds without a byte before a request is
    given up, ``retries`` attempts after the first, ``backoff`` seconds before the first retry, doubling."""

    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.2
    # set (to an id of its own) by each PairLoader: an object whose reads failed every retry is not tried
    # again by that loader's reads for QUARANTINE_SECONDS (None: every read tries)
    quarantine_scope: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.timeout > 0 or not (isinstance(self.retries, int) and self.retries >= 0) or self.backoff < 0:
            raise ValueError(f"RemoteSettings: need timeout > 0, retries >= 0 and backoff >= 0, got {self}")

    @classmethod
    def from_environment(cls) -> "RemoteSettings":
        """``VITO_FAST_REMOTE_TIMEOUT`` and ``VITO_FAST_REMOTE_RETRIES`` where set, else the defaults."""
        timeout = os.environ.get("VITO_FAST_REMOTE_TIMEOUT")
        retries = os.environ.get("VITO_FAST_REMOTE_RETRIES")
        return cls(timeout=cls.timeout if timeout is None else float(timeout),
                   retries=cls.retries if retries is None else int(retries))


class RemoteFiles:
    """Reads under one URL prefix through fsspec: ``cat(url)`` whole, ``read_range(url, offset, size)``.

    ``settings``: the timeout and retries (None: ``RemoteSettings.from_environment()``); ``cache``:
    a ``BlockCache`` that ranged reads go through.
    """

    def __init__(self, url: str, settings: Optional[RemoteSettings] = None, *, cache: Optional["BlockCache"] = None):
        settings = RemoteSettings.from_environment() if settings is None else settings
        self.url, self.settings, self.cache = url, settings, cache
        try:
            import fsspec
        except ImportError:
            raise MissingExtra(f"{url}: reading remote data needs fsspec: pip install 'vito_fast[remote]'") from None
        protocol = url.split("://", 1)[0]
        try:
            self.fs = fsspec.filesystem(protocol, **_filesystem_options(protocol, settings.timeout))
            if protocol in ("s3", "s3a"):  # s3fs tries each call 5 times on top of botocore: once here
                self.fs.retries = 1
        except ImportError as error:
            package, extra = PROTOCOL_PACKAGES.get(protocol, (str(error), "remote"))
            raise MissingExtra(f"{url}: the {protocol}:// protocol needs {package}: "
                              f"pip install 'vito_fast[{extra}]'") from None

    def _attempt(self, what: str, read, url: Optional[str] = None):
        """``read()`` with the retries; ``url``: the object, which a read that fails every retry quarantines."""
        if url is not None:
            self._refuse_quarantined(url, what)
        delay, retries = self.settings.backoff, self.settings.retries
        for attempt in range(retries + 1):
            try:
                return read()
            except Exception as error:  # network errors of every protocol: retried, then named
                if _not_found(error):
                    raise StoreError(f"{what}: not found", object_name=url) from None
                if attempt == retries:
                    if url is not None:
                        self._quarantine(url, error)
                    raise _failed(what, retries, error, url) from None
                time.sleep(delay)
                delay *= 2

    def _quarantine(self, url: str, error: BaseException) -> None:
        if self.settings.quarantine_scope is not None:
            _FAILED_AT[(self.settings.quarantine_scope, url)] = (time.monotonic(), _cause(error))

    def _refuse_quarantined(self, url: str, what: str) -> None:
        """StoreError when this loader's reads of ``url`` failed every retry less than QUARANTINE_SECONDS ago:
        a stalled or failing object then costs timeout x attempts once, not at every sample that reads it."""
        key = (self.settings.quarantine_scope, url)
        failed = _FAILED_AT.get(key) if self.settings.quarantine_scope is not None else None
        if failed is None:
            return
        since = time.monotonic() - failed[0]
        if since >= QUARANTINE_SECONDS:
            _FAILED_AT.pop(key, None)
            return
        raise StoreError(f"{what}: its reads failed {since:.0f} s ago ({failed[1]}); not tried again for "
                         f"{QUARANTINE_SECONDS - since:.0f} s", object_name=url)

    def cat(self, url: str) -> bytes:
        return self._attempt(url, lambda: self.fs.cat_file(url), url)

    def read_ranges(self, requests, what=None) -> list:
        """``read_range`` of many (url, offset, size) at once: without a cache, fsspec's ``cat_ranges``
        keeps every request in flight together (latency paid once, not per frame), and the ones that
        failed go out again together after the backoff (a stalled object costs ``timeout`` per attempt,
        not per frame). Returns bytes or the StoreError per request, in order."""
        requests = list(requests)
        what = what or [url for url, _, _ in requests]
        if self.cache is not None:
            return [self._read_or_error(url, offset, size, name) for (url, offset, size), name in zip(requests, what)]
        results: list = [None] * len(requests)
        for index, (url, _, _) in enumerate(requests):
            try:
                self._refuse_quarantined(url, what[index])
            except StoreError as error:
                results[index] = error
        pending, errors = [index for index in range(len(requests)) if results[index] is None], {}
        delay = self.settings.backoff
        for attempt in range(self.settings.retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            try:
                fetched = self.fs.cat_ranges([requests[index][0] for index in pending],
                                             [requests[index][1] for index in pending],
                                             [requests[index][1] + requests[index][2] for index in pending],
                                             on_error="return")
            except Exception as error:  # the batch call itself failed: every one of them again
                fetched = [error] * len(pending)
            for index, data in zip(pending, fetched):
                size = requests[index][2]
                if isinstance(data, bytes) and len(data) == size:
                    results[index] = data
                elif isinstance(data, BaseException) and _not_found(data):
                    results[index] = StoreError(f"{what[index]}: not found", object_name=requests[index][0])
                else:
                    errors[index] = data if isinstance(data, BaseException) else OSError(
                        f"only {len(data)} of {size} bytes at offset {requests[index][1]}; truncated")
            pending = [index for index in pending if results[index] is None]
            if not pending:
                break
        for index in pending:
            self._quarantine(requests[index][0], errors[index])
            results[index] = _failed(what[index], self.settings.retries, errors[index], requests[index][0])
        return results

    def _read_or_error(self, url: str, offset: int, size: int, what: str):
        try:
            return self.read_range(url, offset, size, what)
        except StoreError as error:
            return error

    def read_range(self, url: str, offset: int, size: int, what: Optional[str] = None) -> bytes:
        if self.cache is not None:
            data = self.cache.read(url, offset, size, lambda start, end: self._attempt(
                what or url, lambda: self.fs.cat_file(url, start=start, end=end), url))
        else:
            data = self._attempt(what or url, lambda: self.fs.cat_file(url, start=offset, end=offset + size), url)
        if len(data) != size:
            raise StoreError(f"{what or url}: only {len(data)} of {size} bytes at offset {offset}; truncated",
                             object_name=url)
        return data


QUARANTINE_SECONDS = 60.0  # see RemoteSettings.quarantine_scope
# (quarantine scope, url) -> (time.monotonic() of the read that failed every retry, its last error)
_FAILED_AT: dict = {}

_CACHES: dict = {}  # BlockCache.from_spec's, per process
_CACHES_LOCK = threading.Lock()


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

    @property
    def spec(self) -> tuple:
        """(folder, max_bytes, block_bytes): what another process needs to use the same cache."""
        return str(self.folder), self.max_bytes, self.block_bytes

    @classmethod
    def from_spec(cls, spec: tuple) -> "BlockCache":
        """The cache of ``spec`` (``BlockCache.spec``), one per process and spec."""
        with _CACHES_LOCK:
            if spec not in _CACHES:
                _CACHES[spec] = cls(*spec)
            return _CACHES[spec]

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
        write_whole(path, data)
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


def write_whole(path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: into a temporary file beside it (a dot name, which
    readers and ``BlockCache``'s eviction pass over), then renamed. When writing fails (a full disk,
    the folder gone) the temporary file is removed and the OSError raised."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def open_remote(url: str, block_size: int = VIDEO_BLOCK_BYTES, settings: Optional[RemoteSettings] = None):
    """A seekable binary file object of ``url`` (fsspec, ranged reads in ``block_size`` blocks), for PyAV.

    Opening and every block read take ``settings``' timeout and retries, as ``RemoteFiles`` does; a
    block that keeps failing raises ``StoreError`` from ``read`` (PyAV's error then names it).
    VideoError names the URL when it cannot be opened."""
    from vito_fast.errors import VideoError

    files = RemoteFiles(url, settings)
    try:
        file = files._attempt(url, lambda: files.fs.open(url, "rb", block_size=block_size, cache_type="readahead"))
    except StoreError as error:
        raise VideoError(str(error)) from None
    cache = getattr(file, "cache", None)
    if cache is not None:  # a file of known size: its block reads go through the retries
        fetch = cache.fetcher

        def fetch_whole(start: int, end: int) -> bytes:
            data = fetch(start, end)
            if len(data) != min(end, file.size) - start:
                raise OSError(f"{len(data)} of {min(end, file.size) - start} bytes at offset {start}; truncated")
            return data

        cache.fetcher = lambda start, end: files._attempt(f"{url}: bytes {start}..{end}",
                                                          lambda: fetch_whole(start, end))
    return file


def _not_found(error: BaseException) -> bool:
    """The object is not there (fsspec's FileNotFoundError, or aiohttp's 404 for a range of an object deleted)."""
    return isinstance(error, FileNotFoundError) or getattr(error, "status", None) == 404


def _cause(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip()[:200]}"


def _failed(what: str, retries: int, error: BaseException, url: Optional[str] = None) -> StoreError:
    return StoreError(f"{what}: failed {retries + 1} times, last: {_cause(error)}", object_name=url)


def _filesystem_options(protocol: str, timeout: float) -> dict:
    """fsspec options that bound each wait for bytes by ``timeout`` s and leave retrying to ``RemoteFiles``."""
    if protocol in ("http", "https"):
        return {"client_kwargs": {"timeout": _aiohttp_timeout(timeout)}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout,
                                  "retries": {"total_max_attempts": 1}}}
    return {}


def _aiohttp_timeout(seconds: float):
    try:
        import aiohttp
    except ImportError:
        raise MissingExtra("http(s):// needs aiohttp: pip install 'vito_fast[remote]'") from None
    # no total: a big object that keeps arriving is not cut off; a server that stops sending is
    return aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
