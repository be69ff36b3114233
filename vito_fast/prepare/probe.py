"""Probing video files with PyAV: one file (``probe_video``) or many in worker processes.

A probe never raises for a bad file: it returns a ``VideoInfo`` for a readable video or a
``RejectedVideo`` with a reason from ``REJECTION_REASONS`` and a human-readable detail. Probes of
many files run in worker processes, one file at a time, each under a timeout, so a file that hangs
or crashes the decoder costs one worker, never the scan. Inputs are only ever opened for reading.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_connections
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from vito_fast._spawn import main_left_alone
from vito_fast.data.video_source import display_orientation, keyframe_index
from vito_fast.errors import VideoError


# Why a file was rejected; the detail string says what exactly was seen.
REJECTION_REASONS = (
    "unreadable",  # empty, not a media file, or FFmpeg cannot open/demux it; the probe crashed or hung
    "truncated",  # the file ends before the media it declares, or its last frames do not decode
    "no_video_stream",
    "zero_frames",
    "too_short",  # shorter than min_seconds
    "variable_frame_rate",  # frame durations differ by more than 10% (only when rejected on request)
    "undecodable_codec",  # the codec cannot be decoded by the requested decoder
)



@dataclass
class RejectedVideo:
    """A file the scan could not use: ``reason`` is one of REJECTION_REASONS."""

    path: str
    reason: str
    detail: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, line: str) -> "RejectedVideo":
        return cls(**json.loads(line))


@dataclass
class VideoInfo:
    """What a probe learnt about a readable video (times in seconds from the stream start).

    ``width``/``height`` are as players show the video (a phone video stored 1280x720 with a
    quarter-turn display matrix is 720 wide). ``keyframes``/``keyframe_pts``: frame numbers (in
    display order) and pts of the keyframes, where ``VideoFrameReader`` may start decoding.
    """

    path: str
    codec: str
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    variable_frame_rate: bool
    keyframes: Optional[List[int]] = None
    keyframe_pts: Optional[List[int]] = None
    orientation: Optional[List[bool]] = None  # [transpose, flip_rows, flip_columns]; None: shown as stored
    keyframe_bytes: Optional[List[int]] = None  # ClipRecord.keyframe_bytes: where each GOP starts, then the end
    file_bytes: Optional[int] = None  # the file's (or tar member's) size


# ----------------------------------------------------------------------------- probing one file


def probe_video(path: str, decode_check: str = "tail") -> Union[VideoInfo, RejectedVideo]:
    """Probe one file with PyAV; never raises for a bad file.

    Demuxes every packet (cheap: no decoding) to count frames, measure timestamps and index the
    keyframes, compares them with what the container declares (a shortfall means truncated), then
    decodes the first frame (its display matrix says whether width and height swap) and, with
    ``decode_check="tail"``, everything from the last keyframe to the end (``"full"``: every
    frame; ``"none"``: only the first frame, and a failure there rejects nothing). Frames an MP4
    edit list marks to discard are not counted: decoders drop them.
    """
    import av  # PyAV is a hard dependency, imported here to keep the module light for pickling

    from vito_fast.storage.remote import is_url
    from vito_fast.storage.shards import TruncatedMember, index_tar, is_shard, open_video, parse_member

    if is_shard(path):  # a shard that could not be listed (the scan lists readable ones into their members)
        try:
            index_tar(path)
            return RejectedVideo(path, "unreadable", "a tar shard, not a video")
        except VideoError as error:
            return RejectedVideo(path, "unreadable", str(error).removeprefix(f"{path}: "))
    if is_url(path) or parse_member(path) is not None:  # an object, or a member of a tar shard: ranged reads
        try:
            source = open_video(path, fresh=True)  # the object may have been replaced since this process saw it
        except VideoError as error:
            reason = "truncated" if isinstance(error, TruncatedMember) else "unreadable"
            return RejectedVideo(path, reason, str(error).removeprefix(f"{path}: "))
        except Exception as error:  # not found, no access, network: the object is unusable here
            return RejectedVideo(path, "unreadable", f"cannot open it: {error}")
        try:
            source.seek(0, 2)
            if source.tell() == 0:
                return RejectedVideo(path, "unreadable", "empty object (0 bytes)")
            source.seek(0)
            return _probe_container(path, decode_check, source)
        finally:
            source.close()
    if not os.path.isfile(path):
        return RejectedVideo(path, "unreadable", "not a regular file")
    if os.path.getsize(path) == 0:
        return RejectedVideo(path, "unreadable", "empty file (0 bytes)")
    return _probe_container(path, decode_check, None)


def _probe_container(path: str, decode_check: str, source) -> Union[VideoInfo, RejectedVideo]:
    """``probe_video`` once the file is there: ``source`` a remote file object, or None for ``path`` on disk."""
    import av

    try:
        container = av.open(path if source is None else source, "r", metadata_errors="ignore")
    except Exception as error:  # FFmpeg errors, but also anything odd from a broken file
        if source is None and _iso_media_truncated(path):
            return RejectedVideo(path, "truncated", f"a box runs past the end of the file ({error})")
        return RejectedVideo(path, "unreadable", f"FFmpeg cannot open it: {error}")
    with container:
        if not container.streams.video:
            kinds = ", ".join(stream.type for stream in container.streams) or "none"
            return RejectedVideo(path, "no_video_stream", f"streams found: {kinds}")
        stream = container.streams.video[0]
        time_base = stream.time_base
        origin = stream.start_time or 0
        codec = stream.codec_context.name
        timestamps, keyframe_times, stream_ends = [], [], {}  # timestamps: of the frames shown
        keyframe_positions = {}  # pts -> byte offset of the keyframe packet in the file (None: unknown)
        packets = 0  # of the video stream, discarded ones included (the header counts them)
        try:
            for packet in container.demux():
                if packet.size == 0 or packet.pts is None:
                    continue
                end = (packet.pts + (packet.duration or 0)) * packet.time_base
                stream_ends[packet.stream.index] = max(stream_ends.get(packet.stream.index, 0), end)
                if packet.stream.index == stream.index:
                    packets += 1
                    if not packet.is_discard:
                        timestamps.append(packet.pts)
                    if packet.is_keyframe:
                        keyframe_times.append(packet.pts)
                        keyframe_positions.setdefault(packet.pts, packet.pos if packet.pos >= 0 else None)
        except Exception as error:
            return RejectedVideo(path, "truncated", f"demuxing fails after {len(timestamps)} frames: {error}")
        if not timestamps:
            return RejectedVideo(path, "zero_frames", f"the {codec} stream holds no frames")
        timestamps.sort()
        steps = [later - earlier for earlier, later in zip(timestamps, timestamps[1:])]
        median_step = sorted(steps)[len(steps) // 2] if steps else None
        rate = stream.average_rate or stream.guessed_rate
        if median_step:
            # mean step over the whole stream: exact even with coarse time bases (1 ms in WebM)
            fps = float((len(timestamps) - 1) / ((timestamps[-1] - timestamps[0]) * time_base))
            if rate and abs(float(rate) - fps) <= 0.01 * fps:
                fps = float(rate)  # the declared rate is exact (30000/1001), the measured one rounded
        elif rate:
            fps = float(rate)
        else:
            return RejectedVideo(path, "unreadable", "one frame and no declared frame rate")
        irregular = sum(abs(step - median_step) > max(1, 0.1 * median_step) for step in steps) if steps else 0
        variable_frame_rate = irregular > max(1, 0.05 * len(steps))
        num_frames = len(timestamps)
        if variable_frame_rate:
            duration = float((timestamps[-1] - origin + median_step) * time_base)
        else:
            duration = num_frames / fps
        shortfall = _declared_media_shortfall(container, stream, packets, stream_ends, fps)
        if shortfall:
            return RejectedVideo(path, "truncated", shortfall)
        # the size the header declares (decoding updates stream.width), to which the reader scales
        # the frames of a stream that changes resolution
        width, height = stream.width, stream.height
        first, problem = _first_frame(container, stream, timestamps[0])
        if decode_check != "none":
            problem = problem or _decode_check(container, stream, timestamps, keyframe_times, decode_check)
            if problem:
                return RejectedVideo(path, "truncated", problem)
        orientation = list(display_orientation(first)) if first is not None else [False, False, False]
        if orientation[0]:
            width, height = height, width  # a quarter turn
        keyframes, keyframe_pts = keyframe_index(timestamps, keyframe_times)
        size = os.path.getsize(path) if source is None else int(source.size)
        keyframe_bytes = _keyframe_bytes(keyframe_pts, keyframe_positions, size)
        return VideoInfo(path, codec, width, height, fps, num_frames, duration, variable_frame_rate,
                         keyframes, keyframe_pts, orientation if any(orientation) else None, keyframe_bytes, size)


def _keyframe_bytes(keyframe_pts: List[int], positions: dict, size: int) -> Optional[List[int]]:
    """Byte offsets of the keyframes (in ``keyframe_pts`` order) and then the file's size, or None when
    the container does not say where its packets are or they do not grow with time."""
    offsets = [positions.get(pts) for pts in keyframe_pts]
    if not offsets or None in offsets or any(later <= earlier for earlier, later in zip(offsets, offsets[1:])):
        return None
    return offsets + [int(size)]


def _declared_media_shortfall(container, stream, packets: int, stream_ends: dict, fps: float) -> Optional[str]:
    """A description of how much less media the file holds than it declares, or None.

    ``packets``: video packets held, discarded ones included, as the header counts them.
    Durations may differ by up to 3 frames (a last packet without duration, rounding of 1 ms time
    bases); a file missing more than that has lost its end.
    """
    if stream.frames and packets < stream.frames:
        return f"holds {packets} of the {stream.frames} frames its header declares"
    if container.duration:
        declared = container.duration / 1_000_000 + (container.start_time or 0) / 1_000_000
        held = float(max(stream_ends.values())) if stream_ends else 0.0
        tolerance = max(3.0 / fps, 0.1)
        if held + tolerance < declared:
            return f"holds {held:.2f} s of the {declared:.2f} s its header declares"
    return None


def _first_frame(container, stream, first_pts: int) -> Tuple[Optional[object], Optional[str]]:
    """(the first decoded frame, None), or (None, a description of why it does not decode)."""
    try:
        container.seek(first_pts, stream=stream, backward=True)
        first = next(container.decode(stream), None)
    except Exception as error:
        return None, f"decoding fails: {error}"
    return (first, None) if first is not None else (None, "the first frame does not decode")


def _decode_check(container, stream, timestamps: List[int], keyframe_times: List[int], mode: str) -> Optional[str]:
    """Decode the tail (or everything); a description of a failure, or None."""
    try:
        if mode == "full":
            start = timestamps[0]
            container.seek(start, stream=stream, backward=True)
        else:
            start = keyframe_times[-1] if keyframe_times else timestamps[0]
            container.seek(start, stream=stream, backward=True)
        expected = sum(1 for pts in timestamps if pts >= start)
        decoded = sum(1 for frame in container.decode(stream) if frame.pts is not None and frame.pts >= start)
    except Exception as error:
        return f"decoding fails: {error}"
    if decoded < expected:
        return f"only {decoded} of the last {expected} frames decode"
    return None


def _iso_media_truncated(path: str) -> bool:
    """Whether an MP4/MOV file's top-level boxes run past its end (a download cut short)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.read(8)
        if len(header) < 8 or header[4:8] != b"ftyp":
            return False
        position = 0
        while position + 8 <= size:
            handle.seek(position)
            box = handle.read(16)
            box_size = int.from_bytes(box[0:4], "big")
            if box_size == 1 and len(box) >= 16:
                box_size = int.from_bytes(box[8:16], "big")
            if box_size == 0:  # "to the end of the file"
                return False
            if box_size < 8:
                return False  # not a box structure we understand: let it count as unreadable
            position += box_size
        return position > size


# ----------------------------------------------------------------------------- probing many files


def _probe_worker(connection, decode_check: str, probe) -> None:
    """Worker process: say it is ready, then probe the paths it receives until it receives None."""
    connection.send("ready")  # the parent starts a file's timeout only once its worker has started
    while True:
        task = connection.recv()
        if task is None:
            return
        index, path = task
        try:
            result = probe(path, decode_check)
        except Exception as error:  # a bug or an exotic failure: still one rejected file
            result = RejectedVideo(path, "unreadable", f"probe failed: {type(error).__name__}: {error}")
        connection.send((index, result))


def probe_videos(paths: Sequence[str], *, workers: int, timeout: float, decode_check: str = "tail",
                 probe=probe_video) -> Iterator[Tuple[int, Union[VideoInfo, RejectedVideo]]]:
    """Yield (index, probe result) as probes finish; workers=0 probes in this process (no timeout).

    A worker that dies or exceeds ``timeout`` seconds on a file is killed and replaced, and the
    file is reported as unreadable. ``probe`` (a module-level function, for pickling) replaces
    ``probe_video`` in tests.
    """
    if workers <= 0:
        for index, path in enumerate(paths):
            yield index, probe(path, decode_check)
        return
    import time

    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold torch threads
    pending = list(reversed(list(enumerate(paths))))
    starting = {}  # worker process -> connection, until the worker says it is ready
    idle: List[Tuple[object, object]] = []
    busy = {}  # worker process -> (connection, index, path, deadline)
    try:
        while pending or busy:
            while pending and len(starting) + len(idle) + len(busy) < workers:
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_probe_worker, args=(child_end, decode_check, probe), daemon=True)
                with main_left_alone():  # a script without a main guard, `python -`: not run again
                    process.start()
                child_end.close()
                starting[process] = parent_end
            while pending and idle:
                process, connection = idle.pop()
                index, path = pending.pop()
                connection.send((index, path))
                busy[process] = (connection, index, path, time.monotonic() + timeout)
            deadlines = [entry[3] for entry in busy.values()]
            ready = wait_for_connections([entry[0] for entry in busy.values()] + list(starting.values())
                                         + [process.sentinel for process in (*busy, *starting)],
                                         timeout=max(0.0, min(deadlines) - time.monotonic()) if deadlines else None)
            for process, connection in list(starting.items()):
                if connection in ready or process.sentinel in ready:
                    del starting[process]
                    try:
                        connection.recv()  # the "ready" greeting
                    except (EOFError, OSError):
                        _stop(process)
                        raise VideoError("scan: a probe worker process died while starting") from None
                    idle.append((process, connection))
            for process, (connection, index, path, deadline) in list(busy.items()):
                if connection in ready:
                    try:
                        _, result = connection.recv()
                    except (EOFError, OSError):
                        result = RejectedVideo(path, "unreadable", "the probe process crashed on this file")
                        _stop(process)
                    else:
                        idle.append((process, connection))
                    del busy[process]
                    yield index, result
                elif process.sentinel in ready or time.monotonic() > deadline:
                    died = process.sentinel in ready
                    _stop(process)
                    del busy[process]
                    detail = ("the probe process crashed on this file" if died
                              else f"probing took longer than {timeout:g} s")
                    yield index, RejectedVideo(path, "unreadable", detail)
    finally:
        for process, connection in idle:
            try:
                connection.send(None)
            except OSError:
                pass
            process.join(timeout=5)
        for process in [*busy, *starting, *(process for process, _ in idle)]:
            _stop(process)


def _stop(process) -> None:
    if process.is_alive():
        process.kill()
    process.join(timeout=5)
