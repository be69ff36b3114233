"""The source part of a PairLoader: where the two frames of a sample come from.

``PairSource`` is what the loader needs of a source: per clip what the sampler needs
(``num_frames``, ``fps``, ``frame_hw``), ``labels``/``classes``, a ``name`` for messages, and one
read method, ``read(clips, frames, decoder)``, that each kind of source implements its own way:

* ``FrameStoreSource`` (``input_kind="jpeg"``): reads the stored JPEGs itself, ``pread`` calls
  spread over threads (cheaper than a round trip to a worker; the decoder goes unused);
* ``VideoFileSource`` (``"frames"`` or ``"video"``): turns each sample into a decode job
  (``sample_jobs``) and runs them through the ``decoder`` the host preparation hands it
  (``host.SampleDecoder``: decode worker processes, or threads of this process).

``read`` returns one entry per sample: the device stage's inputs (named arrays), or the
StoreError/VideoError naming the file. ``verify`` decodes on the host to find which sample made a
device batch fail (only called after a failure).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from vito_fast.errors import StoreError

__all__ = ["PairSource", "SampleDecoding", "FrameStoreSource", "VideoFileSource", "open_source"]

SampleResult = Union[Dict[str, np.ndarray], Exception]


class SampleDecoding(Protocol):
    """How a source has its decode jobs run (given by the host preparation; see ``host.SampleDecoder``)."""

    def decode(self, jobs: Sequence[tuple], nbytes: Sequence[int], largest: int) -> List[object]: ...


class PairSource(Protocol):
    """What PairLoader needs of a source of frame pairs (see the module docstring)."""

    input_kind: str  # "jpeg", "frames" or "video": the device graph's inputs (pipeline.INPUT_KINDS)
    num_frames: np.ndarray  # (N,) int64
    fps: np.ndarray  # (N,) float64
    frame_hw: np.ndarray  # (N, 2) int64: decoded frame height, width
    labels: np.ndarray  # (N,) int64, -1 without a label
    classes: List[str]

    def __len__(self) -> int: ...

    def name(self, clip: int) -> str: ...

    def read(self, clips: np.ndarray, frames: np.ndarray, decoder: SampleDecoding) -> List[SampleResult]: ...

    def verify(self, clip: int, frames: Sequence[int]) -> None: ...


class FrameStoreSource:
    """Stored JPEG frames (``input_kind="jpeg"``); frame indices count stored frames.

    The per-clip arrays come from the store's index arrays without a loop over clips. ``load``
    reads the two JPEGs of a sample with ``os.pread``; ``load_many`` reads a whole batch at once.
    """

    input_kind = "jpeg"

    def __init__(self, path, threads: int = 4, cache=None, remote_settings=None):
        from vito_fast.data.frame_store import FrameStore

        self.store = FrameStore(path, threads=threads, cache=cache, remote_settings=remote_settings)
        arrays = self.store.arrays
        self.num_frames = np.diff(arrays["first_frame"]).astype(np.int64)
        self.fps = np.full(len(self.num_frames), float(self.store.fps))
        self.frame_hw = np.stack([arrays["height"], arrays["width"]], axis=1).astype(np.int64).reshape(-1, 2)
        self.labels = np.asarray(arrays["label"], dtype=np.int64)  # -1: no label; ids index the sorted names
        self.classes = list(self.store.label_names)

    def __len__(self) -> int:
        return len(self.num_frames)

    def name(self, clip: int) -> str:
        return f"{self.store.shard_path(clip)} (clip {clip} from {self.store.source(clip)})"

    def _inputs(self, clip: int, frames: Sequence[int], payloads: Sequence[bytes]) -> Dict[str, np.ndarray]:
        inputs = {}
        for view, (frame, data) in enumerate(zip(frames, payloads)):
            if len(data) < 4 or data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
                raise StoreError(f"{self.name(clip)}: frame {int(frame)} is not a complete JPEG")
            inputs[f"image{view}"] = np.frombuffer(data, dtype=np.uint8)
        return inputs

    def load(self, clip: int, frames: Sequence[int]) -> Dict[str, np.ndarray]:
        """{"image0", "image1"}: uint8 arrays of JPEG bytes; StoreError on a short read or incomplete JPEG."""
        payloads = self.store.read_frames([(clip, int(frame)) for frame in frames])
        return self._inputs(clip, frames, payloads)

    def load_many(self, clips: Sequence[int], frames) -> List[object]:
        """``load`` for B samples at once (clips (B,), frames (B, 2)), the reads spread over threads.

        Returns one entry per row: the inputs dict, or the StoreError that row raised.
        """
        clips = np.asarray(clips, dtype=np.int64).reshape(-1)
        frames = np.asarray(frames, dtype=np.int64).reshape(len(clips), -1)
        pairs = np.stack([np.repeat(clips, frames.shape[1]), frames.reshape(-1)], axis=1)
        payloads = self.store.read_frames(pairs, raise_errors=False)
        results: List[object] = []
        for row, clip in enumerate(clips.tolist()):
            row_payloads = payloads[row * frames.shape[1]: (row + 1) * frames.shape[1]]
            error = next((data for data in row_payloads if isinstance(data, StoreError)), None)
            if error is None:
                try:
                    results.append(self._inputs(clip, frames[row], row_payloads))
                    continue
                except StoreError as bad_jpeg:
                    error = bad_jpeg
            results.append(error)
        return results

    def read(self, clips: np.ndarray, frames: np.ndarray, decoder: SampleDecoding) -> List[SampleResult]:
        """``load_many``: a frame store reads its JPEGs itself, without decode jobs."""
        return self.load_many(clips, frames)

    def verify(self, clip: int, frames: Sequence[int]) -> None:
        from PIL import Image

        for frame in frames:
            try:
                Image.open(io.BytesIO(self.store.frame_bytes(clip, int(frame)))).load()
            except StoreError:
                raise
            except Exception as error:
                raise StoreError(f"{self.name(clip)}: frame {int(frame)} does not decode: {error}") from None


class VideoFileSource:
    """Video files of a manifest, two frames per sample; frame indices count frames of the clip.

    decoder "pyav": the two frames are decoded on the host (``VideoFrameReader``: seek to the
    keyframe at or before each, from the keyframe index the scan recorded) and fed raw
    (``input_kind="frames"``); "dali": the file's bytes and the two frame numbers go to
    ``fn.decoders.video`` (``input_kind="video"``; CPU: VP8/VP9/MJPEG only); any other decoder of
    ``video_decoders`` ("nvc", "torchcodec", "package.module:Class") decodes in the torch device stage,
    which gets one ``FrameRequest`` per sample (``input_kind="requests"``: GPU-decoded frames stay on
    the GPU). ``job`` describes a sample for a decode worker (``sample_jobs``); ``load`` runs the
    same job in this process.

    The manifest is held as arrays (paths once per file, keyframe indices concatenated), not as
    records, built once and kept (``manifest_index``): later runs and the other ranks of a node map
    the same arrays read-only instead of reading the JSON again.
    """

    def __init__(self, manifest, decoder: str = "pyav", max_open: int = 16, cache=None, remote_settings=None,
                 host_codecs=()):
        from vito_fast.data.manifest_index import manifest_arrays
        from vito_fast.data.sample_jobs import JobRunner

        from vito_fast.decoders.video_decoders import DECODERS

        if decoder not in DECODERS and ":" not in decoder:
            raise ValueError(f"VideoFileSource: decoder must be one of {sorted(DECODERS)} or 'package.module:Class', "
                             f"not {decoder!r}")
        self.input_kind = {"pyav": "frames", "dali": "video"}.get(decoder, "requests")
        self.decoder = decoder
        index = manifest_arrays(manifest)  # built once and kept (data.manifest_index), then mapped read-only
        arrays = index.arrays
        self.paths: List[str] = index.paths
        self._path_id = arrays["path_id"]
        self.num_frames, self.fps, self.frame_hw = arrays["num_frames"], arrays["fps"], arrays["frame_hw"]
        self.first_frame, self._indexed = arrays["first_frame"], arrays["indexed"]
        self._keyframe_start, self._keyframes = arrays["keyframe_start"], arrays["keyframes"]
        self._keyframe_pts, self._keyframe_bytes = arrays["keyframe_pts"], arrays["keyframe_bytes"]
        self._gop_end = arrays["gop_end"]  # per clip where its last GOP ends (-1: not recorded)
        self._file_bytes = arrays["file_bytes"]  # -1: not recorded
        self.codecs = index.codecs  # FFmpeg's names, in the order first seen
        self._codec_id = arrays["codec_id"]
        self._orientation = arrays["orientation"]  # bits: transpose, flip rows, columns
        self.labels, self.classes = arrays["labels"], index.classes
        self._runner = JobRunner(max_open)  # its reader keeps per-thread files: safe to share
        # remote videos keep the blocks they read in this ``storage.remote.BlockCache`` (in every decode process)
        self._cache = None if cache is None else cache.spec
        self._remote_settings = remote_settings  # timeout and retries of remote videos' reads (None: the environment's)
        self._largest_sample: Optional[int] = None
        # codecs a decoder of the device stage leaves to PyAV on the host (it cannot decode them here, or
        # decodes them wrong): their samples come as decoded frames among the others' FrameRequests
        self.host_codecs: Tuple[str, ...] = ()
        self._on_host = np.zeros(len(self._codec_id), dtype=bool)
        self.leave_to_host(host_codecs)
        from vito_fast.storage.remote import is_url

        # remote videos decoded by the workers: the loader reads their bytes ahead (``read_ahead_jobs``)
        self._remote_path = np.array([is_url(path) for path in self.paths], dtype=bool)
        self.reads_remote = self.input_kind in ("frames", "video") and bool(self._remote_path.any())

    def __len__(self) -> int:
        return len(self.num_frames)

    def name(self, clip: int) -> str:
        return self.paths[self._path_id[clip]]

    def leave_to_host(self, codecs) -> None:
        """With a decoder of the device stage, the clips of ``codecs`` decode with PyAV on the host instead
        (it cannot decode them here, or decodes them wrong); the others' samples stay FrameRequests."""
        if self.input_kind != "requests":
            return
        self.host_codecs = tuple(dict.fromkeys(self.host_codecs + tuple(c for c in codecs if c in self.codecs)))
        self._on_host = np.isin(self._codec_id, [self.codecs.index(codec) for codec in self.host_codecs])

    def read_ahead_jobs(self, clips: np.ndarray, frames: np.ndarray) -> List[tuple]:
        """The decode jobs of the samples among ``clips`` (with ``frames``) whose bytes lie on the network and
        can be planned (the scan's keyframe byte index): what ``read_ahead`` fetches before they decode."""
        if not self.reads_remote:
            return []
        if self.input_kind == "video":  # DALI's: whole files
            return [self.job(int(clip), frames[row]) for row, clip in enumerate(clips)
                    if self._remote_path[self._path_id[clip]]]
        return [self._frames_job(int(clip), frames[row]) for row, clip in enumerate(clips)
                if self._remote_path[self._path_id[clip]] and self._gop_end[clip] >= 0]

    def _file_frames(self, clip: int, frames: Sequence[int]) -> List[int]:
        return [int(self.first_frame[clip] + frame) for frame in frames]

    def _keyframe_index(self, clip: int) -> Dict[str, List[int]]:
        """{"keyframes", "keyframe_pts"[, "keyframe_bytes"]} of the clip from the scan, or {} (the decoder
        demuxes the file)."""
        if not self._indexed[clip]:
            return {}
        span = slice(self._keyframe_start[clip], self._keyframe_start[clip + 1])
        index = {"keyframes": self._keyframes[span].tolist(), "keyframe_pts": self._keyframe_pts[span].tolist()}
        if self._gop_end[clip] >= 0:
            index["keyframe_bytes"] = self._keyframe_bytes[span].tolist() + [int(self._gop_end[clip])]
        return index

    def _frames_job(self, clip: int, frames: Sequence[int]) -> tuple:
        index = self._keyframe_index(clip)
        height, width = self.frame_hw[clip]
        if self._cache is not None:
            index["cache"] = self._cache
        if self._file_bytes[clip] >= 0:
            index["file_bytes"] = int(self._file_bytes[clip])
        if self._remote_settings is not None:
            index["remote"] = self._remote_settings
        return ("video_frames", self.name(clip), float(self.fps[clip]), self._file_frames(clip, frames), index,
                (int(height), int(width)))

    def orientation(self, clip: int) -> Tuple[bool, bool, bool]:
        """(transpose, flip_rows, flip_columns) from decoded to shown frames (the manifest's display matrix)."""
        bits = int(self._orientation[clip])
        return bool(bits & 1), bool(bits & 2), bool(bits & 4)

    def request(self, clip: int, frames: Sequence[int]):
        """The ``FrameRequest`` of this sample, for a decoder of the device stage."""
        from vito_fast.decoders.video_decoders import FrameRequest

        index = {name: tuple(values) for name, values in self._keyframe_index(clip).items()}
        height, width = self.frame_hw[clip]
        return FrameRequest(self.name(clip), tuple(self._file_frames(clip, frames)),
                            self.codecs[self._codec_id[clip]], int(height), int(width), **index,
                            orientation=self.orientation(clip))

    def job(self, clip: int, frames: Sequence[int]) -> tuple:
        """What a decode worker runs for this sample (see ``sample_jobs``)."""
        if self.input_kind == "frames" or self._on_host[clip]:
            return self._frames_job(clip, frames)
        options = {} if self._file_bytes[clip] < 0 else {"file_bytes": int(self._file_bytes[clip])}
        if self._remote_settings is not None:
            options["remote"] = self._remote_settings
        return ("file_bytes", self.name(clip), self._file_frames(clip, frames), self.orientation(clip), options)

    def sample_nbytes(self, clips: np.ndarray) -> np.ndarray:
        """(len(clips),) bytes one sample's inputs take (0: unknown before reading, the file's bytes)."""
        if self.input_kind == "video" or (self.input_kind == "requests" and not self.host_codecs):
            return np.zeros(len(clips), dtype=np.int64)
        height, width = self.frame_hw[clips, 0], self.frame_hw[clips, 1]
        return 2 * (-(-(height * width * 3) // 64) * 64)

    @property
    def largest_sample_nbytes(self) -> int:
        """``sample_nbytes`` of the largest clip (sizes the shared memory of a batch)."""
        if self._largest_sample is None:
            self._largest_sample = int(self.sample_nbytes(np.arange(len(self))).max())
        return self._largest_sample

    def read(self, clips: np.ndarray, frames: np.ndarray, decoder: SampleDecoding) -> List[SampleResult]:
        """One decode job per sample, run by ``decoder`` (decode workers or host threads); for a decoder of
        the device stage, the samples' ``FrameRequest``s (nothing decodes on the host)."""
        if self.input_kind == "requests":
            results: List[Optional[SampleResult]] = [
                None if self._on_host[clip] else {"request": self.request(int(clip), frames[row])}
                for row, clip in enumerate(clips)]
            host = [row for row, clip in enumerate(clips) if self._on_host[clip]]  # PyAV's codecs: decoded here
            if host:
                decoded = decoder.decode([self.job(int(clips[row]), frames[row]) for row in host],
                                         self.sample_nbytes(clips[host]), self.largest_sample_nbytes)
                for row, result in zip(host, decoded):
                    results[row] = result
            return results
        jobs = [self.job(int(clip), frames[row]) for row, clip in enumerate(clips)]
        return decoder.decode(jobs, self.sample_nbytes(clips), self.largest_sample_nbytes)

    def load(self, clip: int, frames: Sequence[int]) -> Dict[str, np.ndarray]:
        """One sample's inputs, decoded in this process."""
        return self._runner(self.job(clip, frames))

    def verify(self, clip: int, frames: Sequence[int]) -> None:
        self._runner(self._frames_job(clip, frames))


def open_source(source, video_decoder: str = "pyav", max_open: int = 16, cache=None,
                remote_settings=None, host_codecs=()) -> PairSource:
    """A frame store folder (or its index.json) -> FrameStoreSource; a manifest file -> VideoFileSource.
    A store may be a URL (``https://``, ``s3://``, ...: its index read once, frames by ranged reads
    with ``remote_settings``' timeout and retries, a ``storage.remote.RemoteSettings``)."""
    from vito_fast.storage.remote import is_url

    if is_url(source):
        if str(source).endswith(".jsonl"):  # a manifest on object storage, streamed once
            return VideoFileSource(str(source), video_decoder, max_open, cache, remote_settings, host_codecs)
        # its reads go out together (RemoteFiles.read_ranges)
        return FrameStoreSource(str(source), cache=cache, remote_settings=remote_settings)
    path = Path(source)
    if path.is_dir() or path.name == "index.json":
        return FrameStoreSource(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: neither a frame store folder nor a manifest file")
    return VideoFileSource(path, video_decoder, max_open, cache, remote_settings, host_codecs)
