"""What a decode worker does for one sample: a small picklable job in, named NumPy arrays out.

A source (``pair_sources``) turns (clip, frame indices) into a job; a worker process of
``decode_pool`` runs it with its own ``JobRunner`` (open files and readers stay in the worker).
Kinds of job, each a tuple whose first item names it::

    ("video_frames", path, fps, file_frames, reader_options, (height, width))
        -> image0, image1: (H, W, 3) uint8 RGB, display orientation, dense
    ("file_bytes", path, file_frames[, orientation[, options]])   (options: "file_bytes", the size; "ahead")
        -> encoded: the file's bytes (uint8), frames: (2,) int32 (for fn.decoders.video), and
           transpose, flip_rows, flip_columns: () bool, the display orientation DALI's graph applies

Errors are VideoError naming the file. Frame stores need no job: their reads are ``pread`` calls
that the loader makes itself (``FrameStoreSource.load_many``), cheaper than a round trip to a worker.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from vito_fast.errors import VideoError

__all__ = ["JobRunner", "ORIENTATION_INPUTS"]

ORIENTATION_INPUTS = ("transpose", "flip_rows", "flip_columns")  # a clip's display orientation, in this order


class JobRunner:
    """Runs jobs in one process; keeps up to ``max_open`` videos open (per thread)."""

    def __init__(self, max_open: int = 16):
        self.max_open = max_open
        self._reader = None

    def _planned_reads(self, jobs, every_opening: bool) -> Tuple[list, object]:
        """([(url, offset, size)], remote settings) of what the remote videos among ``jobs`` will read
        (``video_source.planned_spans``): the GOPs of each one's frames, and its opening where the file is
        not open here (``every_opening``: always); a whole file's bytes for a "file_bytes" job of known size."""
        from vito_fast.data.video_source import planned_spans
        from vito_fast.storage.shards import parse_member, remote_requests

        wanted, settings = [], None
        for job in jobs:
            options = job[4] if len(job) > 4 else {}
            if job[0] == "file_bytes":  # DALI's: the whole file, when its size is known
                member = parse_member(job[1])
                size = member.size if member is not None else options.get("file_bytes")
                if size:
                    wanted.append((job[1], [(0, int(size))]))
                    settings = options.get("remote", settings)
                continue
            if job[0] != "video_frames" or not options.get("keyframe_bytes") or options.get("cache") is not None:
                continue  # no index to plan from, or reads that go through the block cache
            path, frames = job[1], job[3]
            settings = options.get("remote", settings)
            opening = every_opening or self._reader is None or not self._reader.is_open(path)
            wanted.append((path, planned_spans(path, frames, options["keyframes"], options["keyframe_bytes"],
                                               options.get("file_bytes"), opening)))
        return remote_requests(wanted), settings

    def fetch_ahead(self, jobs) -> None:
        """Fetch what the remote videos among ``jobs`` will read (each one's opening where it is not open
        yet, the GOPs of its frames) in one round trip, before the jobs run one after another; what a
        job's read-ahead folder holds (``read_ahead``) is taken from there instead."""
        from vito_fast.storage.read_ahead import fetch

        for job in jobs:
            self._take_read_ahead(job)
        requests, settings = self._planned_reads(jobs, every_opening=False)
        fetch(requests, settings)

    def read_ahead(self, folder: str, jobs) -> int:
        """Fetch every span the remote videos among ``jobs`` will read (openings included: which process
        decodes a job is not known yet) into the read-ahead folder ``folder`` (``read_ahead.spool``).
        Returns the bytes written."""
        from vito_fast.storage.read_ahead import spool

        requests, settings = self._planned_reads(jobs, every_opening=True)
        return spool(folder, requests, settings) if requests else 0

    def _take_read_ahead(self, job) -> None:
        """Hold what the read-ahead folder of ``job`` (its options' "ahead") has of its spans, for its reader."""
        if len(job) < 5 or not job[4].get("ahead"):
            return
        from vito_fast.storage.read_ahead import held, hold, take

        requests, _ = self._planned_reads([job], every_opening=True)
        requests = [request for request in requests if held(*request) is None]
        if requests:
            hold(take(job[4]["ahead"], requests))

    def __call__(self, job: Tuple) -> Dict[str, np.ndarray]:
        kind = job[0]
        self._take_read_ahead(job)  # read ahead: its bytes are in shared memory, not on the network
        if kind == "video_frames":
            return self._video_frames(*job[1:])
        if kind == "file_bytes":
            return self._file_bytes(*job[1:4], size=job[4].get("file_bytes") if len(job) > 4 else None)
        raise ValueError(f"JobRunner: unknown job kind {kind!r}")

    def _video_frames(self, path: str, fps: float, file_frames, options: dict, size) -> Dict[str, np.ndarray]:
        if self._reader is None:
            from vito_fast.data.video_source import VideoFrameReader

            self._reader = VideoFrameReader(self.max_open)
        if "ahead" in options:  # its spans were taken from there (``__call__``): not a reader's option
            options = {name: value for name, value in options.items() if name != "ahead"}
        # options: the keyframe index the scan recorded (older manifests: found on first use)
        images = self._reader.read(path, fps, list(file_frames), **options)
        for image in images:
            if image.shape[:2] != tuple(size):
                raise VideoError(f"{path}: frames decode at {image.shape[1]}x{image.shape[0]}, "
                                 f"the manifest says {size[1]}x{size[0]}")
        return {"image0": images[0], "image1": images[1]}  # dense: the reader's contract (DALI needs it)

    @staticmethod
    def _file_bytes(path: str, file_frames, orientation=(False, False, False), size=None) -> Dict[str, np.ndarray]:
        from vito_fast.storage.shards import read_video_bytes

        data = np.frombuffer(read_video_bytes(path, size), dtype=np.uint8)  # a file, URL or member of a tar shard
        turns = {name: np.array(bool(value)) for name, value in zip(ORIENTATION_INPUTS, orientation)}
        return {"encoded": data, "frames": np.asarray(file_frames, dtype=np.int32), **turns}
