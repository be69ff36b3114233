"""Scanning a folder of videos into a manifest: probe every file, reject with a reason, split into clips.

A scan never drops a file silently: each file is either turned into ``ClipRecord``s or reported
as a ``RejectedVideo`` with a reason from ``REJECTION_REASONS`` (probing lives in ``probe``).
"""
from __future__ import annotations

import bisect
import math
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from vito_fast.data.config import usable_cores
from vito_fast.data.manifest import ClipRecord
from vito_fast.errors import VideoError
from vito_fast.prepare.probe import RejectedVideo, VideoInfo, probe_videos

PathLike = Union[str, os.PathLike]

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".ogv", ".3gp", ".wmv")

# decoder -> codecs it decodes (FFmpeg codec names); "pyav" decodes whatever FFmpeg can open.
DECODABLE_CODECS = {
    "pyav": None,
    "dali-cpu": frozenset({"vp8", "vp9", "mjpeg"}),
    "dali-gpu": frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mjpeg", "mpeg4"}),
}



# ----------------------------------------------------------------------------- scanning


def find_videos(paths: Iterable[PathLike], members: bool = True) -> List[str]:
    """Expand folders (recursively, files with a video suffix) and keep named files as they are.

    A URL prefix (``s3://bucket/videos/``, ...) is listed the same way through fsspec, sorted. A tar
    shard (``.tar``, named or found in a folder; WebDataset's ``shards/{00000..00099}.tar`` expands)
    gives its video members, in tar order, as ``storage.shards.member_path`` strings: read by range, never
    extracted (``members=False``: the shards themselves, which ``scan_videos`` splits into parts
    whole, so that a part lists only its own shards). Raises FileNotFoundError naming the first
    path that does not exist.
    """
    from vito_fast.storage.remote import RemoteFiles, is_url
    from vito_fast.storage.shards import expand_shards, is_shard

    found: List[str] = []
    for pattern in paths:
        for path in expand_shards(str(pattern)):
            if is_url(path):
                fs = RemoteFiles(str(path)).fs
                fs.invalidate_cache(str(path))  # what is there now (a notebook scanning again), not a listing held
                if is_shard(path) or Path(path).suffix.lower() in VIDEO_SUFFIXES:
                    found.append(path)  # an object by name: its probe reports it if missing (an HTTP
                    continue            # existence check would GET the whole object)
                if fs.isfile(str(path)):
                    found.append(str(path))
                    continue
                names = sorted(fs.find(str(path)))
                if not names and not fs.exists(str(path)):
                    raise FileNotFoundError(f"{path}: no such object or prefix")
                found.extend(fs.unstrip_protocol(name) for name in names
                             if Path(name).suffix.lower() in VIDEO_SUFFIXES or is_shard(name))
                continue
            path = Path(path)
            if path.is_dir():
                found.extend(str(file.resolve()) for file in sorted(path.rglob("*"))
                             if file.is_file() and (file.suffix.lower() in VIDEO_SUFFIXES or is_shard(file)))
            elif path.exists():
                found.append(str(path.resolve()))
            else:
                raise FileNotFoundError(f"{path}: no such file or folder")
    return _members_of_shards(found) if members else found


def _members_of_shards(files: List[str]) -> List[str]:
    """``files`` with every tar shard replaced by its video members (shards indexed on threads: a remote
    shard's headers are a few ranged reads each, so many shards are listed at once)."""
    from concurrent.futures import ThreadPoolExecutor

    from vito_fast.storage.shards import index_tar, is_shard

    shards = [file for file in files if is_shard(file)]
    if not shards:
        return files
    def listed(shard: str):
        try:
            return index_tar(shard)
        except VideoError:  # kept as it is: its probe reports why (one bad shard never stops a scan)
            return None

    with ThreadPoolExecutor(max_workers=min(16, len(shards))) as pool:
        indexes = dict(zip(shards, pool.map(listed, shards)))
    expanded: List[str] = []
    for file in files:
        if not is_shard(file) or indexes[file] is None:
            expanded.append(file)
            continue
        expanded.extend(member.path for member in indexes[file].members
                        if Path(member.name).suffix.lower() in VIDEO_SUFFIXES)
    return expanded


def split_into_clips(info: VideoInfo, clip_seconds: Optional[float], min_seconds: float,
                     label: Optional[str] = None) -> List[ClipRecord]:
    """Records for a probed video: the whole video, or clips of ``clip_seconds``.

    A remainder shorter than ``min_seconds`` is merged into the last clip, so every second of the
    video is in exactly one clip and no clip is shorter than ``min_seconds``.
    """
    def record(start: Optional[float], end: Optional[float]) -> ClipRecord:
        if start is None:
            return ClipRecord(info.path, info.num_frames, info.fps, info.width, info.height, info.codec,
                              info.duration, label, keyframes=info.keyframes, keyframe_pts=info.keyframe_pts,
                              orientation=info.orientation, keyframe_bytes=info.keyframe_bytes,
                              file_bytes=info.file_bytes)
        first, stop = math.ceil(start * info.fps - 1e-6), math.ceil(end * info.fps - 1e-6)
        keyframes, keyframe_pts, keyframe_bytes = _keyframes_of_clip(info, first, stop)
        return ClipRecord(info.path, min(stop, info.num_frames) - first, info.fps, info.width, info.height,
                          info.codec, round(end - start, 6), label, round(start, 6), round(end, 6),
                          keyframes, keyframe_pts, info.orientation, keyframe_bytes=keyframe_bytes,
                          file_bytes=info.file_bytes)

    if not clip_seconds or info.duration < clip_seconds + min(min_seconds, clip_seconds):
        return [record(None, None)]
    count = int(info.duration // clip_seconds)
    bounds = [float(index * clip_seconds) for index in range(count + 1)]
    if info.duration - bounds[-1] >= max(min_seconds, 1e-6):
        bounds.append(float(info.duration))
    else:
        bounds[-1] = float(info.duration)
    return [record(start, end) for start, end in zip(bounds, bounds[1:])]


def _keyframes_of_clip(info: VideoInfo, first: int, stop: int):
    """The part of a video's keyframe index (numbers, pts, byte offsets and the end of the last GOP) that
    frames [first, stop) decode from (None: no index)."""
    if info.keyframes is None or info.keyframe_pts is None:
        return None, None, None
    begin = max(0, bisect.bisect_right(info.keyframes, first) - 1)  # the keyframe at or before the first frame
    end = bisect.bisect_left(info.keyframes, stop, lo=begin)
    offsets = None if info.keyframe_bytes is None else info.keyframe_bytes[begin:end + 1]
    return info.keyframes[begin:end], info.keyframe_pts[begin:end], offsets


def frames_per_random_frame(record) -> Optional[float]:
    """Frames a decoder decodes, on average, to show one random frame of the clip: from the keyframe at
    or before it, itself included (1.0: every frame a keyframe; about (GOP + 1) / 2 with evenly spaced
    keyframes). None without a keyframe index (manifests written before it)."""
    if record.keyframes is None or not record.keyframes or record.num_frames < 1:
        return None
    first = 0 if record.clip_start is None else int(np.ceil(record.clip_start * record.fps - 1e-6))
    frames = np.arange(first, first + int(record.num_frames))
    keyframes = np.asarray(sorted(record.keyframes), dtype=np.int64)
    at = np.searchsorted(keyframes, frames, side="right") - 1
    start = np.where(at >= 0, keyframes[np.maximum(at, 0)], 0)  # before any keyframe: from the file's start
    return float(np.mean(frames - start + 1))


def scan_videos(paths: Iterable[PathLike], *, min_seconds: float = 1.0, clip_seconds: Optional[float] = None,
                workers: Optional[int] = None, progress: bool = True, timeout: float = 60.0,
                decode_check: str = "tail", decoder: str = "pyav", reject_variable_frame_rate: bool = True,
                label: Optional[str] = None, part=None, files: Optional[Sequence[str]] = None,
                label_field: Optional[str] = None) -> Tuple[List[ClipRecord], List[RejectedVideo]]:
    """Probe every video under ``paths`` and return (usable clip records, rejected files), in path order.

    ``decoder`` ("pyav", "dali-cpu", "dali-gpu") rejects codecs that decoder cannot read;
    ``workers`` defaults to the CPU count (0 probes in this process, without timeout). Workers are
    spawned, so a script that calls this needs the usual ``if __name__ == "__main__":`` guard.
    ``part`` (a ``parts.Part``): probe only that contiguous block of the files (``prepare merge``).
    ``files``: ``find_videos(paths, members=False)`` when the caller has listed them already (a bucket is
    listed once); a tar shard among them stands for its video members.
    A video inside a tar shard takes its sample's caption (the ``.txt`` member, else the JSON's
    "caption") and, with ``label_field``, its label from that field of the sample's JSON.
    """
    if decoder not in DECODABLE_CODECS:
        raise ValueError(f"scan_videos: decoder must be one of {sorted(DECODABLE_CODECS)}, not {decoder!r}")
    files = find_videos(paths, members=False) if files is None else list(files)
    if part is not None:
        from vito_fast.prepare.parts import part_files

        files = part_files(files, part)
    files = _members_of_shards(files)
    workers = usable_cores() if workers is None else workers
    results: List[Union[VideoInfo, RejectedVideo, None]] = [None] * len(files)
    from tqdm import tqdm

    with tqdm(total=len(files), desc="scan", unit="file", disable=not progress) as bar:
        for index, result in probe_videos(files, workers=min(workers, len(files)), timeout=timeout,
                                          decode_check=decode_check):
            results[index] = result
            bar.update(1)
    records: List[ClipRecord] = []
    rejected: List[RejectedVideo] = []
    allowed = DECODABLE_CODECS[decoder]
    for result in results:
        if isinstance(result, RejectedVideo):
            rejected.append(result)
        elif allowed is not None and result.codec not in allowed:
            rejected.append(RejectedVideo(result.path, "undecodable_codec",
                                          f"codec {result.codec} cannot be decoded by {decoder}"))
        elif result.variable_frame_rate and reject_variable_frame_rate:
            rejected.append(RejectedVideo(result.path, "variable_frame_rate",
                                          "frame durations vary by more than 10%"))
        elif result.duration < min_seconds:
            rejected.append(RejectedVideo(result.path, "too_short",
                                          f"{result.duration:.2f} s is shorter than {min_seconds:g} s"))
        else:
            records.extend(split_into_clips(result, clip_seconds, min_seconds, label))
    _add_shard_metadata(records, label_field)
    return records, rejected


def _add_shard_metadata(records: List[ClipRecord], label_field: Optional[str]) -> None:
    """Caption and label of the clips of videos inside tar shards, from their samples' ``.txt``/``.json``."""
    from vito_fast.storage.shards import index_tar, parse_member, read_sample_metadata

    for record in records:
        member = parse_member(record.path)
        if member is None:
            continue
        fields, record.caption = read_sample_metadata(member, index_tar(member.tar))  # listed by the scan: cached
        if label_field is not None and fields.get(label_field) is not None:
            record.label = str(fields[label_field])


