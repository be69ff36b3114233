"""Videos inside WebDataset / video2dataset tar shards, read by range without extracting.

A shard is an uncompressed tar whose members are grouped into samples by key (the member's name up
to the first dot of its base name: ``000123.mp4``, ``000123.json``, ``000123.txt`` make sample
``000123``). A video member is addressed by one string that every reader takes where it takes a
path, and that says where its bytes lie::

    TAR#MEMBER@OFFSET+SIZE      e.g.  s3://corpus/shards/00007.tar#000123.mp4@1536+2097152

(``TAR`` a local path or any URL; OFFSET and SIZE in bytes, the member's data within the tar).
``open_video(path)`` gives PyAV what it opens: the path of a file on disk, or a seekable file object
for a URL or a member (ranged reads of only that window); ``read_video_bytes(path)`` reads a whole
video for decoders that take encoded bytes (DALI's). ``index_tar(tar)`` lists a shard's members by
reading its headers (a remote shard through read-ahead blocks: a few requests, not a download);
``expand_shards("shards/{00000..00099}.tar")`` expands WebDataset's brace notation.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import io
import itertools
import json
import os
import re
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from vito_fast.storage.ranged_file import ByteWindow
from vito_fast.errors import StoreError, VideoError

__all__ = ["TruncatedMember", "TarMember", "member_path", "parse_member", "open_video", "open_container",
           "read_video_bytes", "video_stem", "remote_requests", "index_tar",
           "expand_shards", "is_shard", "sample_key", "ShardIndex"]

_MEMBER = re.compile(r"(?P<tar>.+?\.tar)#(?P<name>.+)@(?P<offset>\d+)\+(?P<size>\d+)")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
# read-ahead while reading headers: the small members of a sample (json, txt) share one block
_INDEX_BLOCK_BYTES = 1 << 20
# metadata members kept with the index (WebDataset's captions, JSON fields and class numbers)
_TEXT_SUFFIXES, _TEXT_BYTES = (".json", ".txt", ".cls"), 1 << 20


class TruncatedMember(VideoError):
    """The tar ends inside the member (a shard cut short by a failed upload or copy)."""


@dataclass(frozen=True)
class TarMember:
    """A member's data inside a tar: ``tar`` (path or URL), its ``name``, ``offset`` and ``size`` in bytes."""

    tar: str
    name: str
    offset: int
    size: int

    @property
    def path(self) -> str:
        return member_path(self.tar, self.name, self.offset, self.size)


def member_path(tar: str, name: str, offset: int, size: int) -> str:
    """``TAR#MEMBER@OFFSET+SIZE``: the string readers take for a member of a shard."""
    return f"{tar}#{name}@{int(offset)}+{int(size)}"


def parse_member(path) -> Optional[TarMember]:
    """The member a ``member_path`` names, or None for a plain file or URL."""
    match = _MEMBER.fullmatch(str(path))
    if match is None:
        return None
    return TarMember(match["tar"], match["name"], int(match["offset"]), int(match["size"]))


def video_stem(path) -> str:
    """The video's name without folder and suffix: a member's own (``000123`` of ``...tar#000123.mp4@...``)."""
    member = parse_member(path)
    name = member.name if member is not None else str(path)
    return name.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


def is_shard(path) -> bool:
    """True for a tar shard (``.tar``, local or URL); compressed tars cannot be read by range."""
    return str(path).lower().endswith(".tar")


def sample_key(name: str) -> str:
    """WebDataset's grouping key: the member's name up to the first dot of its base name."""
    folder, _, base = name.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{folder}/{stem}" if folder else stem


def expand_shards(pattern: str) -> List[str]:
    """WebDataset's brace notation: ``a/{000..002}.tar`` → ``a/000.tar``, ``a/001.tar``, ``a/002.tar``
    (zero padding kept; several ranges multiply out). A pattern without braces is returned alone."""
    ranges = _BRACES.findall(pattern)
    if not ranges:
        return [pattern]
    pieces = _BRACES.split(pattern)  # text, first, last, text, first, last, text
    choices = []
    for first, last in ranges:
        if int(last) < int(first):
            raise ValueError(f"{pattern}: the range {{{first}..{last}}} runs backwards")
        width = len(first) if first.startswith("0") else 0
        choices.append([f"{number:0{width}d}" for number in range(int(first), int(last) + 1)])
    texts = pieces[0::3]
    return ["".join(text + number for text, number in zip(texts, numbers)) + texts[-1]
            for numbers in itertools.product(*choices)]


# ----------------------------------------------------------------------------- reading


class _Window(ByteWindow):
    """Bytes [offset, offset + size) of a seekable binary file, as a file of its own (PyAV opens it)."""

    def __init__(self, file, offset: int, size: int, name: str):
        super().__init__(size, name)
        self._file, self._offset = file, offset

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._position))
        if not count:
            return 0
        self._file.seek(self._offset + self._position)
        data = self._file.read(count)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _open_local(path: str):
    """A binary file object of a local path; VideoError names it when it cannot be opened."""
    try:
        return open(path, "rb")
    except OSError as error:
        raise VideoError(f"{path}: cannot open it: {error.strerror or error}") from None


def open_video(path: str, cache: Optional[tuple] = None, size: Optional[int] = None,
               settings=None, fresh: bool = False) -> Union[str, io.RawIOBase]:
    """What PyAV opens for ``path``: the path itself for a file on disk, else a seekable file object
    (a ``RangedFile`` of a URL or of a remote member's window, which fetches GOPs on ``hint``; a window
    of a local tar). Raises VideoError naming the path when it cannot be opened, or when the tar ends
    inside the member (a truncated shard). ``cache``: a ``remote.BlockCache.spec`` that remote reads go
    through (a later epoch reads its blocks from disk); ``size``: a URL's bytes when known (no request for
    them); ``settings``: the ``remote.RemoteSettings`` of its reads (None: the environment's); ``fresh``: ask a
    URL's size even when this process has seen it (the object may have been replaced since: a scan)."""
    from vito_fast.storage.remote import is_url

    member = parse_member(path)
    if member is None:
        return _ranged_file(path, path, size=size, cache=cache, settings=settings, fresh=fresh) if is_url(path) else path
    if is_url(member.tar):  # the member's size is known: no request before its first bytes
        return _ranged_file(member.tar, path, member.offset, member.size, cache, settings)
    file = _open_local(member.tar)
    available = _size_of(file)
    if available is not None and member.offset + member.size > available:
        file.close()
        raise TruncatedMember(f"{path}: the tar ends {member.offset + member.size - available} bytes inside this "
                              f"member (a truncated shard)")
    return _Window(file, member.offset, member.size, path)


@contextlib.contextmanager
def open_container(path: str):
    """``with open_container(path) as container``: PyAV's container of a file, URL or tar member."""
    import av

    source = open_video(path, fresh=True)
    try:
        with av.open(source, "r", metadata_errors="ignore") as container:
            yield container
    finally:
        if not isinstance(source, str):
            source.close()


def remote_requests(spans_by_path) -> List[Tuple[str, int, int]]:
    """The (url, offset, size) reads of the byte spans ``[(path, [(start, end), ...]), ...]`` of videos (spans
    within each video; a member's lie within its tar), for the remote ones (URLs, members of remote
    shards), each once; local paths give none."""
    from vito_fast.storage.remote import is_url

    requests = []
    for path, spans in spans_by_path:
        member = parse_member(path)
        url, base = (member.tar, member.offset) if member is not None else (path, 0)
        if is_url(url):
            requests += [(url, base + start, end - start) for start, end in spans if end > start]
    return list(dict.fromkeys(requests))


# objects' sizes seen by this process: reopening a remote video asks for its size once
_OBJECT_SIZES: "collections.OrderedDict[str, int]" = collections.OrderedDict()


def _ranged_file(url: str, name: str, offset: int = 0, size: Optional[int] = None, cache: Optional[tuple] = None,
                 settings=None, fresh: bool = False):
    """A ``RangedFile`` of bytes [offset, offset + size) of the object at ``url`` (size None: the object's)."""
    from vito_fast.storage.ranged_file import RangedFile
    from vito_fast.storage.remote import BlockCache, RemoteFiles

    files = RemoteFiles(url, settings, cache=None if cache is None else BlockCache.from_spec(cache))
    if size is None and not fresh:
        size = _OBJECT_SIZES.get(url)
    if size is None:
        try:
            size = _OBJECT_SIZES[url] = files.fs.size(url)
        except FileNotFoundError:
            raise VideoError(f"{name}: not found") from None
        except Exception as error:  # no access, network
            raise VideoError(f"{name}: cannot open it: {type(error).__name__}: {error}") from None
        if len(_OBJECT_SIZES) > 100_000:
            _OBJECT_SIZES.popitem(last=False)

    def read_ranges(spans):
        from vito_fast.storage.read_ahead import take_held

        wanted = [(url, offset + start, length) for start, length in spans]
        pieces = take_held(wanted)  # fetched ahead for this sample
        missing = [index for index, piece in enumerate(pieces) if piece is None]
        if missing:
            fetched = files.read_ranges([wanted[index] for index in missing], what=[name] * len(missing))
            for index, piece in zip(missing, fetched):
                if isinstance(piece, Exception):
                    raise piece
                pieces[index] = piece
        return pieces

    return RangedFile(read_ranges, size, name)


def _size_of(file) -> Optional[int]:
    size = getattr(file, "size", None)  # fsspec files know their size
    if size is None:
        try:
            size = file.seek(0, io.SEEK_END)
            file.seek(0)
        except (OSError, ValueError):
            return None
    return int(size)


def read_video_bytes(path: str, size: Optional[int] = None) -> bytes:
    """The encoded bytes of a whole video (a file, a URL, or a member of a tar: one ranged read); ``size``:
    a URL's bytes when known (what was fetched ahead for it is then taken: ``read_ahead``).
    Raises VideoError naming the path when they cannot be read whole."""
    from vito_fast.storage.read_ahead import take_held
    from vito_fast.storage.remote import RemoteFiles, is_url

    member = parse_member(path)
    source = path if member is None else member.tar
    if is_url(source):
        start, length = (0, size) if member is None else (member.offset, member.size)
        if length:
            (held,) = take_held([(source, start, int(length))])
            if held is not None:
                return held
    try:
        if is_url(source):
            files = RemoteFiles(source)
            return files.cat(source) if member is None else files.read_range(source, member.offset, member.size, path)
        with open(source, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # a pipe or device: no video file to read
                raise VideoError(f"{path}: not a regular file")
            if member is None:
                return handle.read()
            handle.seek(member.offset)
            data = handle.read(member.size)
    except StoreError as error:
        raise VideoError(str(error)) from None
    except OSError as error:
        raise VideoError(f"{path}: cannot read it: {error.strerror or error}") from None
    if len(data) != member.size:
        raise TruncatedMember(f"{path}: only {len(data)} of {member.size} bytes: the tar ends inside this member "
                              f"(a truncated shard)")
    return data


# ----------------------------------------------------------------------------- indexing shards


@dataclass
class ShardIndex:
    """A shard's members in tar order; ``texts``: the bytes of its metadata members (``.json``, ``.txt``,
    ``.cls``), read with the headers they sit beside; ``truncated``: the tar ends inside the last member."""

    tar: str
    members: List[TarMember]
    texts: Dict[str, bytes] = field(default_factory=dict)
    truncated: bool = False

    @functools.cached_property
    def samples(self) -> Dict[str, Dict[str, TarMember]]:
        """key → {extension ("mp4", "json", ...) → member}, keys in tar order."""
        grouped: Dict[str, Dict[str, TarMember]] = {}
        for member in self.members:
            base = member.name.rpartition("/")[2]
            extension = base.split(".", 1)[1].lower() if "." in base else ""
            grouped.setdefault(sample_key(member.name), {})[extension] = member
        return grouped


@functools.lru_cache(maxsize=4096)
def index_tar(tar: str) -> ShardIndex:
    """The regular-file members of a tar shard (local or URL) and where their data lies, from its headers.

    A tar that ends inside a member lists that member too, marked ``truncated`` (its readers then
    report it); a compressed or unreadable tar raises VideoError naming it. Cached per process:
    ``prepare scan`` lists a shard once for its videos and once for their metadata.
    """
    if not is_shard(tar):
        raise VideoError(f"{tar}: a shard must be an uncompressed .tar (compressed tars cannot be read by range; "
                         f"repack it with `tar -cf`)")
    from vito_fast.storage.remote import is_url, open_remote

    file = open_remote(tar, block_size=_INDEX_BLOCK_BYTES) if is_url(tar) else _open_local(tar)
    members: List[TarMember] = []
    texts: Dict[str, bytes] = {}
    truncated = False
    try:
        size = _size_of(file)
        try:
            archive = tarfile.open(fileobj=file, mode="r:")
        except tarfile.TarError as error:
            raise VideoError(f"{tar}: not a readable tar ({error})") from None
        while True:
            try:
                info = archive.next()
            except tarfile.TarError:  # a header cut short: the tar ends here
                truncated = True
                break
            if info is None:
                break
            if info.isfile():
                members.append(TarMember(tar, info.name, info.offset_data, info.size))
                if size is not None and info.offset_data + info.size > size:
                    truncated = True
                    break
                if info.name.lower().endswith(_TEXT_SUFFIXES) and info.size <= _TEXT_BYTES:
                    texts[info.name] = archive.extractfile(info).read()  # in the read-ahead block already
    finally:
        file.close()
    return ShardIndex(tar, members, texts, truncated)


def read_sample_metadata(video: TarMember, index: ShardIndex) -> Tuple[dict, Optional[str]]:
    """The JSON fields and the caption (the ``.txt`` member, else the JSON's "caption") of a video's sample."""
    sample = index.samples.get(sample_key(video.name), {})

    def text(extension: str) -> Optional[str]:
        member = sample.get(extension)
        try:
            return None if member is None else index.texts[member.name].decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None  # metadata is optional: a sample without it keeps its video

    try:
        fields = json.loads(text("json") or "{}")
    except json.JSONDecodeError:
        fields = {}
    fields = fields if isinstance(fields, dict) else {}
    caption = (text("txt") or "").strip() or None
    if caption is None and isinstance(fields.get("caption"), str):
        caption = fields["caption"].strip() or None
    return fields, caption
