"""Reading ahead of the loader: the remote bytes of the next batches, fetched while this one decodes.

A loader's order is a pure function of (seed, epoch, step, rank), so while batch k is read the
samples of batches k + 1 ... k + ``depth`` are already known. For a manifest of remote videos (URLs,
members of remote tar shards) ``ReadAhead`` keeps a spool in shared memory (a folder under
/dev/shm, one folder per batch ahead). For each batch ahead the host hands its decode jobs to a
fetcher (a decode worker's read-ahead thread; a thread of the trainer with no workers), which
fetches every byte span their frames will need (each file's opening, the GOPs of its frames: the
scan's keyframe byte index) in one round trip and writes each span to a file of that batch's
folder (``spool``). When the batch is decoded its jobs name the folder, and whichever process runs
a job takes the spans from there (``take``) instead of the network: the network's latency is paid
while earlier batches decode, not by the sample. A span not there (its fetch failed, or has not
finished) is read as without read-ahead, and a read that fails is reported by the sample that needs
it, once.

Bytes held: the spans of at most ``depth`` batches (plus the batch being read); a batch's folder
is deleted once the batch is prepared, the spool when the loader closes, and a spool left by a
killed trainer when the next loader on the machine starts (its owner process is gone).

Inside each process, bytes fetched ahead (taken from the spool, or fetched for a chunk of samples at
once: ``fetch``) are ``hold``-ed until a reader of that object asks for bytes they cover
(``take_held``: ``shards``' ranged files ask there before the network; a piece serves once), up to
HELD_LIMIT bytes, the least recently held going first.
"""
from __future__ import annotations

import collections
import errno
import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["ReadAhead", "delete_orphans", "span_file", "spool", "take", "hold", "held", "take_held", "fetch", "SPOOL_PREFIX",
           "HELD_LIMIT"]

SPOOL_PREFIX = "vito-ahead-"
HELD_LIMIT = 64 << 20
Request = Tuple[str, int, int]  # (url, offset, size) of an object

# this process's bytes fetched ahead: url -> {offset: bytes}, the least recently held url first
_HELD: "collections.OrderedDict[str, Dict[int, bytes]]" = collections.OrderedDict()
_HELD_LOCK = threading.Lock()  # the fetching thread holds while the decoding thread reads
_held_bytes = 0


def hold(fetched: Dict[Request, bytes]) -> None:
    """Keep ``fetched`` ((url, offset, size) -> bytes) for this process's readers (``held``)."""
    global _held_bytes
    with _HELD_LOCK:
        for (url, offset, _), data in fetched.items():
            pieces = _HELD.setdefault(url, {})
            _held_bytes += len(data) - len(pieces.get(offset, b""))
            pieces[offset] = data
            _HELD.move_to_end(url)
        while _held_bytes > HELD_LIMIT and len(_HELD) > 1:
            _held_bytes -= sum(len(data) for data in _HELD.popitem(last=False)[1].values())


def _covering(url: str, offset: int, size: int) -> Optional[Tuple[int, bytes]]:
    """(start, the piece held) that covers bytes [offset, offset + size) of ``url``, or None."""
    for start, data in _HELD.get(url, {}).items():
        if start <= offset and offset + size <= start + len(data):
            return start, data
    return None


def _cut(piece: Tuple[int, bytes], offset: int, size: int) -> bytes:
    start, data = piece
    return data if (start, len(data)) == (offset, size) else data[offset - start: offset - start + size]


def held(url: str, offset: int, size: int) -> Optional[bytes]:
    """The bytes [offset, offset + size) of ``url`` when a piece held covers them, else None."""
    with _HELD_LOCK:
        piece = _covering(url, offset, size)
    return None if piece is None else _cut(piece, offset, size)


def take_held(requests: Sequence[Request]) -> List[Optional[bytes]]:
    """``held`` for each of ``requests`` (a reader's reads), and the pieces that served them are let go: bytes
    fetched ahead serve one reader once (an object changed or deleted later is read again, not remembered)."""
    global _held_bytes
    found: List[Optional[bytes]] = []
    used = set()
    with _HELD_LOCK:
        for url, offset, size in requests:
            piece = _covering(url, offset, size)
            found.append(None if piece is None else _cut(piece, offset, size))
            if piece is not None:
                used.add((url, piece[0]))
        for url, start in used:
            _held_bytes -= len(_HELD[url].pop(start))
            if not _HELD[url]:
                del _HELD[url]
    return found


def fetch(requests: Sequence[Request], settings=None) -> None:
    """Fetch ``requests`` not held yet, all in flight at once, and hold them: a chunk of samples then waits
    for the network once, not once per sample. A request that fails is left for its reader, which
    retries and reports it. ``settings``: ``remote.RemoteSettings`` (None: the environment's)."""
    from vito_fast.storage.remote import RemoteFiles

    requests = [request for request in dict.fromkeys(requests) if held(*request) is None]
    if requests:
        fetched = RemoteFiles(requests[0][0], settings).read_ranges(requests)
        hold({request: data for request, data in zip(requests, fetched) if isinstance(data, bytes)})


def span_file(folder: str, request: Request) -> str:
    """The file of ``folder`` that holds the bytes of ``request``."""
    url, offset, size = request
    return os.path.join(folder, hashlib.sha1(f"{url}\0{offset}\0{size}".encode()).hexdigest())


def spool(folder: str, requests: Sequence[Request], settings=None) -> int:
    """Fetch ``requests`` not in ``folder`` yet, all in flight together, into ``folder``; each file
    appears whole or not at all. A request that fails is left out (its reader reads it and reports the
    failure). Returns the bytes written. ``settings``: ``remote.RemoteSettings`` (None: the environment's)."""
    from vito_fast.storage.remote import RemoteFiles, write_whole

    wanted = [request for request in dict.fromkeys(requests) if not os.path.exists(span_file(folder, request))]
    if not wanted or not os.path.isdir(folder):  # nothing to fetch, or the batch is read already
        return 0
    written = 0
    for request, data in zip(wanted, RemoteFiles(wanted[0][0], settings).read_ranges(wanted)):
        if not isinstance(data, bytes):
            continue
        try:
            write_whole(span_file(folder, request), data)
            written += len(data)
        except OSError as error:  # the batch's folder went (the batch was read without it), or it is full
            if error.errno == errno.ENOSPC:
                _warn_full(folder)
            return written
    return written


_warned_full = False


def _warn_full(folder: str) -> None:
    """Say once per process that the spool's file system is full (Docker gives /dev/shm 64 MB by default)."""
    global _warned_full
    if not _warned_full:
        _warned_full = True
        warnings.warn(f"vito_fast: reading ahead: no room left in {os.path.dirname(os.path.dirname(folder))}; samples "
                      f"read their bytes themselves when they decode (correct, but each waits for the network). "
                      f"Give it more room (docker run --shm-size=8g) or set read_ahead=0", RuntimeWarning, stacklevel=2)


def take(folder: str, requests: Iterable[Request]) -> Dict[Request, bytes]:
    """The bytes of those ``requests`` that ``folder`` holds."""
    found = {}
    for request in requests:
        try:
            with open(span_file(folder, request), "rb") as file:
                data = file.read()
        except OSError:
            continue
        if len(data) == request[2]:
            found[request] = data
    return found


def delete_orphans(folder: str, prefix: str) -> None:
    """Delete the entries of ``folder`` named ``<prefix><pid>-...`` whose owner process no longer runs
    (killed before it could clean up: shared memory it held stays taken until then)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        owner = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
        if not owner.isdigit() or int(owner) == os.getpid():
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        except PermissionError:  # alive, another user's
            pass


_swept = False


class ReadAhead:
    """The trainer's side: the spool's folders, one per batch (epoch, step) read ahead.

    ``depth``: batches read ahead of the one being prepared. ``positions_after(epoch, step)`` gives
    the positions that should be fetched now (those not requested yet); ``folder(epoch, step)`` is
    where a batch's spans lie; ``finished(epoch, step)`` deletes that batch's folder and any folder
    the loader no longer heads for (after a seek).
    """

    def __init__(self, depth: int, steps_per_epoch: int):
        if depth < 1:
            raise ValueError(f"ReadAhead: depth must be >= 1, got {depth}")
        self.depth, self.steps_per_epoch = int(depth), int(steps_per_epoch)
        parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        global _swept
        if not _swept:  # once per process
            _swept = True
            delete_orphans(parent, SPOOL_PREFIX)
        self.root = tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=parent)
        self._requested: List[Tuple[int, int]] = []  # positions whose folders exist, in order

    def folder(self, epoch: int, step: int) -> str:
        return os.path.join(self.root, f"{epoch}-{step}")

    def positions_after(self, epoch: int, step: int) -> List[Tuple[int, int]]:
        """The positions of the ``depth`` batches after (epoch, step) not requested yet; their folders
        are made (a fetcher writes there from now on)."""
        fresh = [position for position in self._after(epoch, step) if position not in self._requested]
        for position in fresh:
            os.makedirs(self.folder(*position), exist_ok=True)
            self._requested.append(position)
        return fresh

    def requested(self, epoch: int, step: int) -> bool:
        return (epoch, step) in self._requested

    def _after(self, epoch: int, step: int) -> List[Tuple[int, int]]:
        positions = []
        for _ in range(self.depth):
            step += 1
            if step >= self.steps_per_epoch:
                epoch, step = epoch + 1, 0
            positions.append((epoch, step))
        return positions

    def finished(self, epoch: int, step: int) -> None:
        """Batch (epoch, step) is prepared: its folder goes, and so does every folder but those of the
        ``depth`` batches after it (batches the loader no longer heads for, after a seek)."""
        window = set(self._after(epoch, step))
        for position in self._requested:
            if position not in window:
                shutil.rmtree(self.folder(*position), ignore_errors=True)
        self._requested = [position for position in self._requested if position in window]

    def held_bytes(self) -> int:
        """Bytes in the spool now (a read-only view for tests and benches)."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(folder, name))
                except OSError:
                    pass
        return total

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._requested = []
