"""Random access to single frames of video files with PyAV: seek to the keyframe, decode forward.

A training pair needs two frames Δt apart, not the frames between them. Sequence readers
(``fn.readers.video``) decode everything from the first frame to the last, so their cost grows
with Δt; ``VideoFrameReader`` decodes from the keyframe at or before each requested frame, and
for the second frame keeps decoding forward only when no later keyframe lies in between. With
GOP g the cost is about g/2 frames per view whatever Δt is. Each thread keeps its own open
containers (an LRU of ``max_open`` files); PyAV releases the GIL while it decodes, so a thread
pool scales over cores.

Frame numbers count the frames a player shows, in display (pts) order: frame k is the k-th frame
of the stream whatever its timestamps, so variable-frame-rate files neither skip nor repeat
frames. The keyframe index says where decoding may start: the frame number and pts of every
keyframe (``keyframe_index``). ``prepare scan`` records it in the manifest; without it (older
manifests) the reader demuxes the file once, on first use, per thread.

Every returned frame is a dense C-contiguous (H, W, 3) uint8 RGB array as players show it: the
stream's display matrix (rotation, mirroring) is applied, and whatever the pixel format, FFmpeg
converts it (``to_ndarray`` returns rows padded to an alignment, which DALI's ``feed_input``
refuses).

Measured on 2 CPU cores (benches/bench_loader.py: 256p VP9, GOP 16, Δt uniform in [0, 2.5] s),
host decoding of the two frames alone: 6.5 CPU ms per pair here against 19.4 for decoding every
frame in between; the whole loader with augmentations: 14.8 CPU ms per pair here, 32.9 with
``fn.decoders.video(frames=[t, t + d])`` on the file's bytes (the "dali" decoder option).
"""
from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vito_fast.errors import VideoError, about, failed_object

__all__ = ["VideoFrameReader", "keyframe_index", "demux_keyframe_index", "display_orientation", "oriented",
           "display_rgb", "upright"]


# ----------------------------------------------------------------------------- keyframe index


def keyframe_index(shown_pts: Sequence[int], keyframe_pts: Sequence[int]) -> Tuple[List[int], List[int]]:
    """(frame numbers, pts) of the keyframes, both sorted; a keyframe's number counts the frames shown before it.

    ``shown_pts``: pts of every frame a player shows (any order); ``keyframe_pts``: pts of the
    keyframe packets, including ones the container marks to discard (an MP4 edit list that starts
    after its first keyframe): decoding must start there although the frame is not shown.
    """
    shown = sorted(shown_pts)
    pts = sorted(set(keyframe_pts))
    return [bisect.bisect_left(shown, value) for value in pts], pts


def demux_keyframe_index(container, stream) -> Tuple[List[int], List[int]]:
    """Demux every packet of ``stream`` (no decoding) -> its ``keyframe_index``."""
    shown, keyframes = [], []
    for packet in container.demux(stream):
        if packet.pts is None or packet.size == 0:
            continue
        if packet.is_keyframe:
            keyframes.append(packet.pts)
        if not packet.is_discard:
            shown.append(packet.pts)
    return keyframe_index(shown, keyframes)


# ----------------------------------------------------------------------------- display orientation


def display_orientation(frame) -> Tuple[bool, bool, bool]:
    """(transpose, flip_rows, flip_columns) that turn a decoded frame into what players show.

    FFmpeg's display matrix [[a, b, u], [c, d, v], [x, y, w]] maps a pixel (column p, row q) to
    (a p + c q, b p + d q) up to a shift; a quarter turn swaps the axes (a = d = 0). Matrices that
    are not a multiple of 90° are snapped to the nearest quarter turn.
    """
    from av.sidedata.sidedata import Type

    for data in frame.side_data:
        if data.type == Type.DISPLAYMATRIX:
            a, b, _, c, d = np.frombuffer(bytes(data), dtype=np.int32)[:5].tolist()
            if abs(a) + abs(d) >= abs(b) + abs(c):
                return False, d < 0, a < 0
            return True, b < 0, c < 0  # after the swap, rows follow the old columns (b p), columns the old rows (c q)
    return False, False, False


def oriented(image, orientation: Tuple[bool, bool, bool]):
    """``image`` (H, W, ...: a NumPy array or a torch tensor) turned by (transpose, flip rows, flip
    columns), the order ``display_orientation`` gives them in; a view of NumPy's, a copy of torch's."""
    transpose, flip_rows, flip_columns = orientation
    tensor = hasattr(image, "flip")  # torch has no negative strides: flip() copies
    if transpose:
        image = image.transpose(0, 1) if tensor else image.swapaxes(0, 1)
    if flip_rows:
        image = image.flip(0) if tensor else image[::-1]
    if flip_columns:
        image = image.flip(1) if tensor else image[:, ::-1]
    return image


def upright(image: np.ndarray, frame) -> np.ndarray:
    """``image`` (H, W, C), a picture of ``frame`` at any scale, turned as players show the frame; dense."""
    return np.ascontiguousarray(oriented(image, display_orientation(frame)))


def display_rgb(frame, coded_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A decoded frame -> dense C-contiguous (H, W, 3) uint8 RGB array as players show it.

    ``coded_size`` (height, width): the size the stream declares; a frame decoded at another size
    (a stream that changes resolution) is scaled to it so every frame of a file has one shape.
    """
    if coded_size is not None and (frame.height, frame.width) != tuple(coded_size):
        image = frame.to_ndarray(format="rgb24", height=coded_size[0], width=coded_size[1])
    else:
        image = frame.to_ndarray(format="rgb24")
    return upright(image, frame)  # rows of to_ndarray are padded, and turned views are strided


# ----------------------------------------------------------------------------- reading frames


# bytes fetched before a keyframe's packet with its GOP: the container's framing around it
GOP_FRAMING_BYTES = 1024
# FFmpeg's read buffer for a remote file (PyAV's ``buffer_size``); a read past a span's end is a short
# read, not a request, so spans end where their GOP ends
READ_BUFFER_BYTES = 4 << 10
# FFmpeg reads through a forward seek shorter than its buffer plus this (its SHORT_SEEK_THRESHOLD) rather
# than seek: spans closer than that are fetched as one span, the gap included
SHORT_SEEK_BYTES = 32 << 10
# fetched with a Matroska/WebM file's first GOPs: its seek index (Cues), which FFmpeg's muxer writes last
# and which grows with the file (a cue per keyframe): the last 1/64 of the file, 4 to 64 KiB; the same
# for an MP4 written without "faststart" (its moov last)
SEEK_INDEX_TAIL_FRACTION, SEEK_INDEX_TAIL_BYTES = 64, (4 << 10, 64 << 10)
# fetched for opening a remote file: its header and first packet, which FFmpeg reads to learn the stream
OPENING_BYTES = 128 << 10
MATROSKA_SUFFIXES = (".webm", ".mkv")
# an MP4/MOV file whose first packet starts this near its beginning has its index (moov) at its end
ISO_SUFFIXES, ISO_INDEX_AT_END_BELOW = (".mp4", ".m4v", ".mov"), 4 << 10


def gop_spans(targets: Sequence[int], keyframes: Sequence[int], keyframe_bytes: Sequence[int],
              size: Optional[int] = None) -> List[Tuple[int, int]]:
    """Byte spans [start, end) of the GOPs that hold ``targets`` (``ClipRecord.keyframe_bytes``), each from a
    little before its keyframe (a container's framing, a Matroska cluster's header, precedes the packet) to
    the next keyframe, and not past ``size``, the file's bytes when known."""
    if len(keyframe_bytes) != len(keyframes) + 1:
        return []
    spans = []
    for target in targets:
        at = bisect.bisect_right(keyframes, int(target)) - 1
        if at >= 0:
            end = keyframe_bytes[at + 1] if size is None else min(keyframe_bytes[at + 1], size)
            spans.append((max(0, keyframe_bytes[at] - GOP_FRAMING_BYTES), end))
    return spans


def opening_spans(path: str, size: int, keyframe_bytes: Optional[Sequence[int]]) -> List[Tuple[int, int]]:
    """What opening ``path`` reads, fetched with its first GOPs in one round trip: the header and first
    packet (the first GOP when the index starts at the file's first keyframe and it is short), and the
    index at the file's end of a Matroska file (its Cues) or of an MP4 whose media come first (its moov)."""
    end = OPENING_BYTES
    if keyframe_bytes is not None and len(keyframe_bytes) > 1 and keyframe_bytes[0] < OPENING_BYTES:
        end = min(keyframe_bytes[0] + OPENING_BYTES, keyframe_bytes[1])
    spans = [(0, min(end, size))]
    from vito_fast.storage.shards import parse_member

    member = parse_member(path)
    name = (member.name if member is not None else path).lower()
    index_at_end = name.endswith(MATROSKA_SUFFIXES) or (
        name.endswith(ISO_SUFFIXES) and keyframe_bytes is not None and 0 <= keyframe_bytes[0] < ISO_INDEX_AT_END_BELOW)
    if index_at_end:
        tail = min(max(size // SEEK_INDEX_TAIL_FRACTION, SEEK_INDEX_TAIL_BYTES[0]), SEEK_INDEX_TAIL_BYTES[1])
        spans.append((max(0, size - tail), size))
    return spans


def _open_container(source):
    """PyAV's container of a path, or of a file object read through a buffer of READ_BUFFER_BYTES."""
    import av

    if isinstance(source, str):
        return av.open(source, "r", metadata_errors="ignore")
    return av.open(source, "r", metadata_errors="ignore", buffer_size=READ_BUFFER_BYTES)


def merge_spans(spans: Sequence[Tuple[int, int]],
                bridge: int = SHORT_SEEK_BYTES + READ_BUFFER_BYTES) -> List[Tuple[int, int]]:
    """``spans`` sorted, overlapping ones joined, and ones less than ``bridge`` bytes apart joined with
    the gap between them (FFmpeg reads such a gap rather than seek over it)."""
    merged: List[Tuple[int, int]] = []
    for start, end in sorted(spans):
        if end <= start:
            continue
        if merged and start - merged[-1][1] <= bridge:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def planned_spans(path: str, targets: Sequence[int], keyframes: Sequence[int], keyframe_bytes: Sequence[int],
                  size: Optional[int], opening: bool) -> List[Tuple[int, int]]:
    """The byte spans [start, end) that decoding frames ``targets`` of ``path`` reads, from the scan's keyframe
    byte index: the GOPs that hold them, and with ``opening`` (and ``size`` known) what opening the file
    reads; joined as FFmpeg reads them (``merge_spans``). One round trip fetches them all."""
    spans = gop_spans(targets, keyframes, keyframe_bytes, size)
    if opening and size:
        spans = opening_spans(path, size, keyframe_bytes) + spans
    return merge_spans(spans)


class _OpenVideo:
    """One open container, its decoder's position, and the keyframe index demuxed when none is given.

    ``fps`` is not used (frames are counted); benches/bench_loader.py still passes it.
    """

    def __init__(self, path: str, fps: Optional[float] = None, cache: Optional[tuple] = None,
                 size: Optional[int] = None, keyframe_bytes: Optional[Sequence[int]] = None,
                 first_spans: Sequence[Tuple[int, int]] = (), remote=None):
        from vito_fast.storage.shards import open_video

        self.path = path
        # a file on disk by its path; a URL or a member of a tar shard as a file object of ranged reads
        # (``size``: the object's bytes when the manifest has them, saving a request for them)
        self._source = open_video(path, cache, size, remote)
        if hasattr(self._source, "hint"):  # what opening reads and the first sample's GOPs: one round trip
            self._source.hint(merge_spans(opening_spans(path, self._source.size, keyframe_bytes) + list(first_spans)))
        try:
            self.container = _open_container(self._source)
        except BaseException:
            if not isinstance(self._source, str):
                self._source.close()
            raise
        if not self.container.streams.video:
            self.close()
            raise VideoError("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "NONE"  # parallelism comes from decoding many files at once
        self.coded_size = (self.stream.height, self.stream.width)
        self.keyframes: Optional[List[int]] = None  # frame numbers, demuxed on first need
        self.keyframe_pts: Optional[List[int]] = None
        self.decoder = None
        self.position = -1  # frame number of the last frame decoded
        self.floor_pts = None  # frames before this pts precede the keyframe decoding started at

    def demuxed_index(self) -> Tuple[List[int], List[int]]:
        if self.keyframes is None:
            self.keyframes, self.keyframe_pts = demux_keyframe_index(self.container, self.stream)
            self.decoder = None  # the container sits at its end now
        return self.keyframes, self.keyframe_pts

    def close(self) -> None:
        self.container.close()
        if not isinstance(self._source, str):
            self._source.close()

    def fetch(self, spans: Sequence[Tuple[int, int]]) -> None:
        """A remote source fetches these byte spans at once (``gop_spans``); a file on disk reads as FFmpeg asks."""
        hint = getattr(self._source, "hint", None)
        if hint is not None and spans:
            hint(spans)

    def _start_at(self, number: int, pts: Optional[int]) -> None:
        """Decode from the keyframe (frame number, pts), or from the file's start when pts is None."""
        if pts is None:
            self.container.close()  # reopening is the one start that works for every container
            if not isinstance(self._source, str):
                self._source.seek(0)
            self.container = _open_container(self._source)
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "NONE"
        else:
            # backward: lands on that keyframe, or an earlier one whose frames before pts are skipped
            self.container.seek(pts, stream=self.stream, backward=True)
        self.decoder = self.container.decode(self.stream)
        self.position, self.floor_pts = number - 1, pts

    def read(self, target: int, keyframes: Optional[Sequence[int]] = None,
             keyframe_pts: Optional[Sequence[int]] = None) -> np.ndarray:
        """Frame number ``target`` as a display RGB array; the index defaults to the demuxed one."""
        if keyframes is None:
            keyframes, keyframe_pts = self.demuxed_index()
        if target < 0:
            raise VideoError(f"frame {target} does not exist: frame numbers start at 0")
        at = bisect.bisect_right(keyframes, target) - 1
        # before the first keyframe (leading frames, or an index without keyframes): from the start
        number, pts = (keyframes[at], keyframe_pts[at]) if at >= 0 else (0, None)
        if self.decoder is None or not number <= self.position < target:
            self._start_at(number, pts)  # unless decoding on is no longer than from that keyframe
        for frame in self.decoder:
            if frame.pts is None or (self.floor_pts is not None and frame.pts < self.floor_pts):
                continue
            self.position += 1
            if self.position == target:
                return display_rgb(frame, self.coded_size)
        self.decoder = None
        raise VideoError(f"frame {target} lies past the last decodable frame ({self.position})")


class VideoFrameReader:
    """``read(path, fps, frames, keyframes, keyframe_pts)`` -> those frames (display RGB), in order.

    Thread-safe: every thread has its own containers, opened on first use; the constructor opens
    nothing and a reader pickles (without its open files) into worker processes. Raises VideoError naming the
    file when it cannot be opened or a frame does not decode.
    """

    def __init__(self, max_open: int = 16):
        self.max_open = max_open
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}  # a copy in another process opens its own files

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])

    def close(self) -> None:
        """Close the calling thread's open files (they reopen on the next read)."""
        for video in getattr(self._local, "videos", {}).values():
            video.close()
        self._local.videos = OrderedDict()

    def is_open(self, path: str) -> bool:
        """Whether the calling thread holds ``path`` open (its header is read already)."""
        return path in getattr(self._local, "videos", {})

    def _open(self, path: str, block_cache: Optional[tuple] = None, size: Optional[int] = None,
              keyframe_bytes=None, first_spans=(), remote=None) -> _OpenVideo:
        videos = getattr(self._local, "videos", None)
        if videos is None:
            videos = self._local.videos = OrderedDict()
        if path in videos:
            videos.move_to_end(path)
            return videos[path]
        video = _OpenVideo(path, cache=block_cache, size=size, keyframe_bytes=keyframe_bytes, first_spans=first_spans,
                           remote=remote)
        videos[path] = video
        if len(videos) > self.max_open:
            videos.popitem(last=False)[1].close()
        return video

    def _drop(self, path: str) -> None:
        video = getattr(self._local, "videos", {}).pop(path, None)
        if video is not None:
            video.close()

    def read(self, path: str, fps: float, frames: Sequence[int], keyframes: Optional[Sequence[int]] = None,
             keyframe_pts: Optional[Sequence[int]] = None,
             keyframe_bytes: Optional[Sequence[int]] = None, cache: Optional[tuple] = None,
             file_bytes: Optional[int] = None, remote=None) -> List[np.ndarray]:
        """Frames ``frames`` (frame numbers of the file, display order) as (H, W, 3) uint8 RGB arrays.

        ``keyframes``/``keyframe_pts``: the file's keyframe index from the manifest
        (``ClipRecord.keyframes``/``keyframe_pts``; a clip's record holds the part that covers
        it); None demuxes the file once. ``fps`` is not needed (frames are counted, not timed)
        and stays for callers written before the index. ``keyframe_bytes``
        (``ClipRecord.keyframe_bytes``): a remote file fetches the GOPs the frames need in one round trip.
        ``cache``: a ``storage.remote.BlockCache.spec`` where a remote file keeps the blocks it read (later epochs
        read them from disk). ``file_bytes``: the file's size from the manifest (a remote file then needs
        no request for it). ``remote``: the ``storage.remote.RemoteSettings`` of a remote file's reads.
        """
        if (keyframes is None) != (keyframe_pts is None) or (
                keyframes is not None and len(keyframes) != len(keyframe_pts)):
            raise ValueError(f"VideoFrameReader.read: {path}: keyframes and keyframe_pts must both be given, "
                             f"with one pts per keyframe")
        try:
            spans = planned_spans(path, frames, keyframes, keyframe_bytes, file_bytes, opening=False) \
                if keyframe_bytes and keyframes else []
            video = self._open(path, cache, file_bytes, keyframe_bytes, spans, remote)
            video.fetch(spans)  # held already when the file was opened for them
            decoded = {target: video.read(target, keyframes, keyframe_pts)
                       for target in sorted(set(int(f) for f in frames))}
        except VideoError as error:
            self._drop(path)
            raise VideoError(f"{path}: {about(path, error)}", object_name=failed_object(error)) from error
        except Exception as error:  # FFmpeg errors of a corrupt or missing file; reads of a remote object that failed
            self._drop(path)
            raise VideoError(f"{path}: cannot decode frames {list(frames)}: {about(path, error)}",
                             object_name=failed_object(error)) from error
        return [decoded[int(f)] for f in frames]
