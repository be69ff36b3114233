"""Data where big corpora live: fsspec URLs (``https://``, ``s3://``, ``gs://``, ...) beside local paths.

``is_url(path)`` says whether a path names a remote object ("scheme://..."; ``file://`` and plain
paths stay local). ``RemoteFiles(url)`` reads whole small objects (``cat``) and byte ranges of
big ones (``read_range``) through fsspec, each request with a timeout and retries with backoff; a
read that keeps failing raises ``StoreError`` naming the object. Credentials and endpoints come
the standard way (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...: fsspec's own). A protocol whose
package is missing says which extra installs it.
"""
from __future__ import annotations

import time
from typing import Optional

from vito_fast.errors import StoreError

__all__ = ["is_url", "RemoteFiles", "join_url", "open_remote"]

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

    def __init__(self, url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 0.2):
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
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

    def read_range(self, url: str, offset: int, size: int, what: Optional[str] = None) -> bytes:
        data = self._attempt(what or url, lambda: self.fs.cat_file(url, start=offset, end=offset + size))
        if len(data) != size:
            raise StoreError(f"{what or url}: only {len(data)} of {size} bytes at offset {offset}; truncated")
        return data


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
