"""A seekable file over ranged reads that fetches what a decoder will read, and little else.

``RangedFile(read_ranges, size, name)`` serves ``read``/``seek`` (PyAV opens it like a file) from
spans of bytes fetched with ``read_ranges([(offset, size), ...]) -> [bytes, ...]`` (ranged GETs of
an object, or of a member's window of a remote tar shard, all in flight together). Two ways bytes
are fetched:

* ``hint([(start, end), ...])``: the spans the caller knows it needs, in one round trip: the groups
  of pictures a sample decodes, from the byte offsets of the keyframes the scan recorded
  (``ClipRecord.keyframe_bytes``). A sample then reads its GOPs, not blocks of a fixed size.
* a read outside every span fetches a block from there: 64 KiB, and from the third block in a row
  that continues where the last fetch ended, twice the last, up to 4 MiB (a probe demuxes a whole
  file in a few requests; opening a container, which reads a little past its first 64 KiB, takes
  two blocks), never past the start of a span already held.

The most recent spans are kept (up to ``keep_bytes``); ``bytes_fetched`` and ``requests`` count the
network's share.
"""
from __future__ import annotations

import io
from typing import Callable, List, Optional, Tuple

__all__ = ["RangedFile", "ByteWindow"]

FIRST_BLOCK_BYTES, LARGEST_BLOCK_BYTES = 64 << 10, 4 << 20


class ByteWindow(io.RawIOBase):
    """A read-only seekable file of ``size`` bytes named ``name``: position and seeking; a subclass reads
    (``readinto`` from ``self._position``)."""

    def __init__(self, size: int, name: str):
        super().__init__()
        self._size, self.name, self._position = int(size), name, 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position


class RangedFile(ByteWindow):
    """Bytes [0, size) of an object read by ``read_ranges``; see the module's docstring."""

    def __init__(self, read_ranges: Callable[[List[Tuple[int, int]]], List[bytes]], size: int, name: str,
                 keep_bytes: int = 32 << 20):
        super().__init__(size, name)
        self._read_ranges, self._keep_bytes = read_ranges, keep_bytes
        self._spans: List[Tuple[int, bytes]] = []  # (start, data), most recent last
        self._block, self._streak, self._last_end = FIRST_BLOCK_BYTES, 0, -1
        self.bytes_fetched = self.requests = 0

    def hint(self, spans) -> None:
        """Fetch the byte spans [start, end) not held yet, all in one round trip (before the decoder asks)."""
        wanted = sorted({(max(0, int(start)), min(self._size, int(end))) for start, end in spans})
        wanted = [(start, end) for index, (start, end) in enumerate(wanted) if end > start
                  and not any(first <= start and end <= last for first, last in wanted[:index])  # inside another
                  and not self._covered(start, end)]
        if wanted:
            self._fetch(wanted)

    def readinto(self, buffer) -> int:
        if self._position >= self._size:
            return 0
        span = self._span_at(self._position)
        if span is None:
            span = self._fetch_block(self._position)
        start, data = span
        skip = self._position - start
        count = min(len(buffer), len(data) - skip)
        buffer[:count] = data[skip:skip + count]
        self._position += count
        return count

    # ------------------------------------------------------------------------- spans

    def _span_at(self, position: int) -> Optional[Tuple[int, bytes]]:
        for start, data in reversed(self._spans):
            if start <= position < start + len(data):
                return start, data
        return None

    def _covered(self, start: int, end: int) -> bool:
        return any(first <= start and end <= first + len(data) for first, data in self._spans)

    def _fetch_block(self, position: int) -> Tuple[int, bytes]:
        self._streak = self._streak + 1 if position == self._last_end else 0
        self._block = min(2 * self._block, LARGEST_BLOCK_BYTES) if self._streak >= 2 else FIRST_BLOCK_BYTES
        end = min(self._size, position + self._block)
        for first, data in self._spans:  # stop where a span begins: its bytes are here already
            if position < first < end:
                end = first
        self._fetch([(position, end)])
        return self._spans[-1]

    def _fetch(self, spans: List[Tuple[int, int]]) -> None:
        pieces = self._read_ranges([(start, end - start) for start, end in spans])
        for (start, end), data in zip(spans, pieces):
            if len(data) != end - start:
                raise OSError(f"{self.name}: {len(data)} of {end - start} bytes at offset {start}; truncated")
            self.requests += 1
            self.bytes_fetched += len(data)
            self._spans.append((start, data))
        self._last_end = spans[-1][1]
        held = sum(len(piece) for _, piece in self._spans)
        while held > self._keep_bytes and len(self._spans) > len(spans):
            held -= len(self._spans.pop(0)[1])
