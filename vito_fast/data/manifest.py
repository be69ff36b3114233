"""Manifests: one JSON line per usable clip, built by probing every video with PyAV.

A scan never drops a file silently: each file is either turned into ``ClipRecord``s or reported
as a ``RejectedVideo`` with a reason from ``REJECTION_REASONS`` and a human-readable detail
(probing itself lives in ``vito_fast.prepare.probe``). Inputs are only ever opened for reading.

Times in a record are seconds from the video's start (frame i of a constant-rate video is shown
at ``i / fps``); ``clip_start``/``clip_end`` are None for a record that covers the whole video.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union

from vito_fast.errors import VideoError

PathLike = Union[str, os.PathLike]


@dataclass
class ClipRecord:
    """One usable clip: a whole video, or the part [clip_start, clip_end) seconds of it.

    ``num_frames`` and ``duration`` describe the clip, not the whole video; ``codec`` is FFmpeg's
    name ("h264", "vp9", ...); ``path`` is absolute when written by ``scan_videos``; ``width`` and
    ``height`` are as players show the video (after its display rotation).

    ``keyframes``/``keyframe_pts``: the keyframes' frame numbers in the file (display order) and
    their pts, for ``VideoFrameReader.read``; a clip holds the keyframes from the one at or before
    its first frame to its end. None in manifests written before the index (the reader demuxes).

    ``orientation``: [transpose, flip_rows, flip_columns] that turn a decoded (coded) frame into what
    players show (the stream's display matrix, ``video_source.display_orientation``); None when
    frames are shown as stored, or in manifests written before it. Decoders that do not read the
    display matrix themselves (DALI's) apply it from here.

    ``path`` may be a URL, or a member of a tar shard (``storage.shards.member_path``: ``TAR#MEMBER@OFFSET+SIZE``);
    ``keyframe_bytes``: the byte offset in the file of each keyframe of ``keyframes``, then where the
    last one's group of pictures ends (the next keyframe, or the file's end): one more entry than
    ``keyframes``. A reader of a remote video fetches a sample's GOPs by these, in one round trip.
    ``file_bytes``: the size of the whole file (or tar member), so a remote reader needs no request for it.
    ``caption``: the text that came with the video (a shard's ``.txt``/JSON caption), kept for curation.
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration: float
    label: Optional[str] = None
    clip_start: Optional[float] = None
    clip_end: Optional[float] = None
    keyframes: Optional[List[int]] = None
    keyframe_pts: Optional[List[int]] = None
    orientation: Optional[List[bool]] = None
    caption: Optional[str] = None
    keyframe_bytes: Optional[List[int]] = None
    file_bytes: Optional[int] = None

    def to_json(self) -> str:
        """One JSON line (without the newline); None fields are left out."""
        fields = {key: value for key, value in dataclasses.asdict(self).items() if value is not None}
        return json.dumps(fields, sort_keys=False)

    @classmethod
    def from_json(cls, line: str) -> "ClipRecord":
        fields = json.loads(line)
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in fields.items() if key in known})



# ----------------------------------------------------------------------------- manifest files


def write_manifest(path: PathLike, records: Iterable) -> Path:
    """Write one JSON line per record (ClipRecord or prepare's RejectedVideo: anything with ``to_json``) atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False, encoding="utf-8")
    try:
        with handle:
            for record in records:
                handle.write(record.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)  # temporary files are created private
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise
    return path


def read_manifest(path: PathLike) -> List[ClipRecord]:
    """Read a manifest; relative video paths are taken relative to the manifest's folder."""
    return list(iter_manifest(path))


def iter_manifest(path: PathLike) -> Iterator[ClipRecord]:
    """``read_manifest`` one record at a time (a million-clip manifest never sits in memory as records).

    ``path`` may be a URL (``s3://bucket/corpus/manifest.jsonl``): streamed through fsspec, and its
    relative video paths taken relative to the manifest's URL prefix."""
    from vito_fast.storage.remote import RemoteFiles, is_url, join_url

    if is_url(path):
        text, base = str(path), str(path).rsplit("/", 1)[0]

        def resolve(video: str) -> str:
            return join_url(base, video)
        try:
            handle = RemoteFiles(text).fs.open(text, "rt", encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"{text}: no such manifest") from None
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such manifest")
        text, folder = str(path), path.parent

        def resolve(video: str) -> str:
            return str(folder / video)
        handle = open(path, encoding="utf-8")
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = ClipRecord.from_json(line)
            except (ValueError, TypeError) as error:
                raise VideoError(f"{text}:{number}: not a manifest line ({error})") from None
            if not os.path.isabs(record.path) and "://" not in record.path:  # URLs stay as written
                record.path = resolve(record.path)
            yield record


def rejected_manifest_path(manifest_path: PathLike) -> Path:
    """``manifest.jsonl`` -> ``manifest.rejected.jsonl`` (next to it)."""
    manifest_path = Path(manifest_path)
    stem = manifest_path.name[: -len(manifest_path.suffix)] if manifest_path.suffix else manifest_path.name
    return manifest_path.with_name(f"{stem}.rejected.jsonl")
