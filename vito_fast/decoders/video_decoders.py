"""Video decoders behind one contract, each able to say why it cannot run here.

The contract (``VideoDecoder.decode``): for a ``FrameRequest`` (a file, frame numbers, its keyframe
index), the frames as dense (H, W, 3) uint8 RGB as players show them; frame k is the k-th frame
shown, whatever the size, pixel format, rotation or frame rate. A GPU decoder may return CUDA
tensors (H, W, 3) uint8 instead of NumPy arrays.

===========  ========  ===============================================================
name         device    what decodes
===========  ========  ===============================================================
pyav         cpu       FFmpeg through PyAV, from the keyframe before each frame (``VideoFrameReader``)
dali         cpu, gpu  DALI's ``fn.decoders.video`` on the file's bytes (CPU: VP8, VP9, MJPEG; GPU: NVDEC)
nvc          gpu       PyNvVideoCodec's ``SimpleDecoder`` (NVDEC), one decoder reused across files
torchcodec   cpu, gpu  torchcodec's ``VideoDecoder`` (FFmpeg's shared libraries: the system's, or PyAV's)
===========  ========  ===============================================================

``make_decoder(name, device)`` builds one; ``decoder.unavailable(codec)`` is None when it can
decode ``codec`` on this machine, else one line saying why not (not installed, no GPU, no FFmpeg,
a codec this decoder or device does not take). A name "package.module:Class" names a decoder
defined elsewhere (a plugin; the tests' broken decoders). Whether a decoder that says it can
actually meets the contract is for ``decoders.choice`` to find out, against PyAV.
"""
from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np

from vito_fast.errors import DecoderFailure, VideoError, first_line

__all__ = ["FrameRequest", "VideoDecoder", "DECODERS", "make_decoder", "nvdec_problem", "PyAVDecoder", "DaliDecoder",
           "NvcDecoder", "TorchCodecDecoder"]

DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")
NVDEC_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg1video", "mpeg2video", "mpeg4", "vc1", "mjpeg")


@dataclass(frozen=True)
class FrameRequest:
    """Frames ``frames`` (frame numbers of the file, display order) of ``path``; ``codec`` and
    ``height``/``width`` as the manifest has them; ``keyframes``/``keyframe_pts`` its keyframe index
    (None: a decoder that needs it demuxes the file)."""

    path: str
    frames: Tuple[int, ...]
    codec: str
    height: int
    width: int
    keyframes: Optional[Tuple[int, ...]] = None
    keyframe_pts: Optional[Tuple[int, ...]] = None
    orientation: Tuple[bool, bool, bool] = (False, False, False)  # transpose, flip rows, flip columns
    keyframe_bytes: Optional[Tuple[int, ...]] = None  # ClipRecord.keyframe_bytes (remote reads by GOP)

    def to_json(self) -> dict:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in self.__dict__.items()}

    @classmethod
    def from_json(cls, record: dict) -> "FrameRequest":
        values = dict(record)
        for name in ("frames", "keyframes", "keyframe_pts", "keyframe_bytes"):
            if values.get(name) is not None:
                values[name] = tuple(int(item) for item in values[name])
        if values.get("orientation") is not None:
            values["orientation"] = tuple(bool(item) for item in values["orientation"])
        return cls(**values)


class VideoDecoder(Protocol):
    """What every decoder offers (see the module docstring)."""

    name: str
    device: str  # "cpu" or "gpu"

    def unavailable(self, codec: str) -> Optional[str]: ...

    def decode(self, request: FrameRequest) -> List[object]: ...

    def close(self) -> None: ...


def _cuda_problem() -> Optional[str]:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU is visible"


def nvdec_problem(codec: str) -> Optional[str]:
    """Why this GPU's NVDEC cannot decode ``codec`` (no GPU, a codec no NVDEC takes, or one this
    generation's lacks), or None. AV1: from GA10x Ampere (sm_86, sm_87), Ada (sm_89) and Blackwell on;
    not on Volta, Turing, GA100 (A100) nor Hopper (H100, H200), per NVIDIA's NVDEC table."""
    problem = _cuda_problem() or (None if codec in NVDEC_CODECS else f"NVDEC does not decode {codec}")
    if problem or codec != "av1":
        return problem
    import torch

    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) in ((8, 6), (8, 7), (8, 9)) or major >= 10:
        return None
    return f"this GPU's NVDEC ({torch.cuda.get_device_name(device)}, sm_{major}{minor}) does not decode av1"


class PyAVDecoder:
    """The host decoder every other one is checked against (``video_source.VideoFrameReader``)."""

    name, device = "pyav", "cpu"

    def __init__(self, device: str = "cpu", max_open: int = 16):
        self._max_open = max_open
        self._reader = None

    def unavailable(self, codec: str) -> Optional[str]:
        try:
            import av  # noqa: F401
        except ImportError:
            return "PyAV is not installed (pip install av)"
        return None

    def decode(self, request: FrameRequest) -> List[np.ndarray]:
        if self._reader is None:
            from vito_fast.data.video_source import VideoFrameReader

            self._reader = VideoFrameReader(self._max_open)
        return self._reader.read(request.path, 0.0, list(request.frames), request.keyframes, request.keyframe_pts,
                                 request.keyframe_bytes)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class DaliDecoder:
    """``fn.decoders.video(frames=...)`` on the whole file's bytes, turned to the display orientation the
    scan recorded, one pipeline reused; "cpu" or "gpu" (the mixed backend: NVDEC). The same graph
    pieces as the loader's DALI video path (``pipeline.decode_video_pair``), so its trial speaks for it."""

    name = "dali"

    def __init__(self, device: str = "cpu"):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"DaliDecoder: device must be 'cpu' or 'gpu', not {device!r}")
        self.device = device
        self._pipeline = None

    def unavailable(self, codec: str) -> Optional[str]:
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            return "NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)"
        if self.device == "cpu" and codec not in DALI_CPU_CODECS:
            return f"DALI's CPU video decoder takes {', '.join(DALI_CPU_CODECS)}, not {codec}"
        if self.device == "gpu":
            return nvdec_problem(codec)
        return None

    def _build(self):
        from nvidia.dali import pipeline_def

        from vito_fast.data.pipeline import decode_video_pair, import_dali

        fn, _, types = import_dali()
        on_gpu = self.device == "gpu"

        device_id = None
        if on_gpu:
            import torch

            device_id = torch.cuda.current_device()

        @pipeline_def(batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=1,
                      exec_dynamic=True, enable_conditionals=True)
        def frames():
            return tuple(decode_video_pair(fn, types, on_gpu))

        pipeline = frames()
        pipeline.build()
        return pipeline

    def decode(self, request: FrameRequest) -> List[object]:
        if self._pipeline is None:
            self._pipeline = self._build()
        from vito_fast.storage.shards import read_video_bytes

        data = np.frombuffer(read_video_bytes(request.path), dtype=np.uint8)  # a file, URL or tar member
        from vito_fast.data.sample_jobs import ORIENTATION_INPUTS

        if len(request.frames) != 2:
            raise ValueError(f"DaliDecoder: decodes pairs of frames, not {len(request.frames)}")
        self._pipeline.feed_input("encoded", [data])
        self._pipeline.feed_input("frames", [np.asarray(request.frames, dtype=np.int32)])
        for name, value in zip(ORIENTATION_INPUTS, request.orientation):
            self._pipeline.feed_input(name, [np.array(bool(value))])
        try:
            decoded = self._pipeline.run()
        except Exception as error:
            self._pipeline = None  # a failed DALI pipeline is not usable again
            raise VideoError(f"{request.path}: DALI could not decode frames {list(request.frames)}: "
                             f"{first_line(error)}") from None
        if self.device == "gpu":
            import torch

            from nvidia.dali.plugin.pytorch import feed_ndarray

            frames = []
            for output in decoded:
                tensor = output.as_tensor()
                out = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device="cuda")
                feed_ndarray(tensor, out)
                frames.append(out[0])
            return frames
        return [np.ascontiguousarray(np.array(output.as_tensor())[0]) for output in decoded]

    def close(self) -> None:
        self._pipeline = None


class NvcDecoder:
    """PyNvVideoCodec 2.x: one ``SimpleDecoder`` per thread, moved from file to file with
    ``reconfigure_decoder`` (creating an NVDEC session per clip would dominate the cost), frames by
    ``get_batch_frames_by_index`` as RGB on the GPU."""

    name, device = "nvc", "gpu"

    def __init__(self, device: str = "gpu"):
        self._local = threading.local()

    def unavailable(self, codec: str) -> Optional[str]:
        try:
            import PyNvVideoCodec  # noqa: F401
        except ImportError:
            return "PyNvVideoCodec is not installed (pip install pynvvideocodec)"
        return nvdec_problem(codec)

    def decode(self, request: FrameRequest) -> List[object]:
        import PyNvVideoCodec as nvc
        import torch

        from vito_fast.storage.remote import is_url
        from vito_fast.storage.shards import parse_member

        if is_url(request.path) or parse_member(request.path) is not None:
            raise VideoError(f"{request.path}: PyNvVideoCodec opens files on disk only, not URLs or members of tar "
                             f"shards; PyAV or DALI read those")
        decoder = getattr(self._local, "decoder", None)
        try:
            if decoder is None:
                decoder = self._local.decoder = nvc.SimpleDecoder(
                    request.path, gpu_id=torch.cuda.current_device(), use_device_memory=True,
                    output_color_type=nvc.OutputColorType.RGB)
            else:
                decoder.reconfigure_decoder(request.path)
            frames = decoder.get_batch_frames_by_index(list(request.frames))
        except Exception as error:
            self._local.decoder = None
            raise VideoError(f"{request.path}: PyNvVideoCodec could not decode frames {list(request.frames)}: "
                             f"{error}") from None
        return [_cuda_tensor(frame).reshape(request.height, request.width, 3) for frame in frames]

    def close(self) -> None:
        self._local = threading.local()


def _cuda_tensor(frame):
    """A PyNvVideoCodec frame as a CUDA tensor: DLPack, or else the CUDA array interface (versions differ)."""
    import torch

    try:
        return torch.from_dlpack(frame)
    except (TypeError, AttributeError, RuntimeError):
        return torch.as_tensor(frame, device="cuda")


class TorchCodecDecoder:
    """torchcodec's ``VideoDecoder`` in exact seek mode: ``get_frames_at(indices)`` counts frames in
    presentation order, as the contract does; "cpu" or "gpu" (torchcodec's NVDEC backend). It decodes
    in processes started with ``ffmpeg_libs.child_environment`` (``DecoderProcess``, the trials): on a
    machine without FFmpeg they load the one in PyAV's wheel."""

    name = "torchcodec"

    def __init__(self, device: str = "cpu", max_open: Optional[int] = None):
        # on a GPU each open decoder holds an NVDEC session and its surfaces, and the decoder process runs
        # several threads with a decoder each: fewer kept open there
        self.device, self._max_open = device, max_open or (4 if device == "gpu" else 16)
        self._open: "OrderedDict[str, tuple]" = OrderedDict()  # path -> (VideoDecoder, its source)

    def unavailable(self, codec: str) -> Optional[str]:
        from vito_fast.decoders import ffmpeg_libs

        if not ffmpeg_libs.torchcodec_builds():
            return "torchcodec is not installed (pip install torchcodec)"
        major = ffmpeg_libs.system_ffmpeg()
        if major is None:
            if ffmpeg_libs.torchcodec_library_path() is None:
                return ("torchcodec finds no FFmpeg here: none of versions 4-9 is installed (apt install ffmpeg), "
                        "and PyAV's wheel brings none it has a build for")
            # else: the processes it decodes in load PyAV's FFmpeg (and say so if they cannot)
        else:
            import torch
            import torchcodec

            if getattr(torchcodec, "ffmpeg_major_version", None) is None:
                return (f"torchcodec does not load with FFmpeg {major} here: was it built for another torch "
                        f"than {torch.__version__}?")
        return nvdec_problem(codec) if self.device == "gpu" else None

    def _decoder(self, path: str):
        """The file's ``VideoDecoder``, kept open for the next request (opening one in exact seek mode
        reads every packet header of the file: per pair, that would cost more than the decoding)."""
        from torchcodec.decoders import VideoDecoder

        from vito_fast.storage.shards import open_video

        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path][0]
        source = open_video(path)  # a path on disk, or a file object of ranged reads
        try:
            decoder = VideoDecoder(source, device=_torch_device(self.device), seek_mode="exact")
        except Exception:
            self._close_source(source)
            raise
        self._open[path] = (decoder, source)
        while len(self._open) > self._max_open:
            self._close_source(self._open.popitem(last=False)[1][1])
        return decoder

    @staticmethod
    def _close_source(source) -> None:
        if not isinstance(source, str):
            source.close()

    def decode(self, request: FrameRequest) -> List[object]:
        try:
            decoder = self._decoder(request.path)
            batch = decoder.get_frames_at(indices=list(request.frames)).data  # (N, C, H, W) uint8
            turned = decoder.metadata.rotation
        except Exception as error:
            stale = self._open.pop(request.path, None)  # a decoder that failed is not trusted again
            if stale is not None:
                self._close_source(stale[1])
            from vito_fast.decoders import ffmpeg_libs

            lent = ffmpeg_libs.torchcodec_library_path() if ffmpeg_libs.system_ffmpeg() is None else None
            if lent:  # this process was started without PyAV's FFmpeg on its library path
                raise DecoderFailure(f"torchcodec finds no FFmpeg in this process: start it with LD_LIBRARY_PATH="
                                     f"{lent} (the FFmpeg in PyAV's wheel), or decode through "
                                     f"vito_fast.decoders.decoder_process.DecoderProcess, which does") from None
            raise VideoError(f"{request.path}: torchcodec could not decode frames {list(request.frames)}: "
                             f"{first_line(error)}") from None
        frames = [frame.permute(1, 2, 0) for frame in batch]
        if not _turn_is(request.orientation, turned):  # it turns by the display matrix's angle, never mirrors
            frames = [_reorient(frame, request.orientation, turned) for frame in frames]
        frames = [frame.contiguous() for frame in frames]
        return frames if self.device == "gpu" else [frame.numpy() for frame in frames]

    def close(self) -> None:
        while self._open:
            self._close_source(self._open.popitem()[1][1])


def _torch_device(device: str) -> str:
    """"cpu", or the current CUDA device by its index (a rank's own, not device 0)."""
    if device != "gpu":
        return "cpu"
    import torch

    return f"cuda:{torch.cuda.current_device()}"


def _quarter_turns(degrees: Optional[float]) -> int:
    """A rotation angle (counter-clockwise, as torchcodec's metadata gives it) in quarter turns, 0-3."""
    return int(round((degrees or 0.0) / 90.0)) % 4


def _turn_is(orientation: Tuple[bool, bool, bool], degrees: Optional[float]) -> bool:
    """Whether turning by ``degrees`` shows a frame as ``orientation`` does (false for a mirrored matrix)."""
    from vito_fast.data.video_source import oriented

    probe = np.arange(6).reshape(2, 3)
    expected, turned = oriented(probe, orientation), np.rot90(probe, _quarter_turns(degrees))
    return expected.shape == turned.shape and bool((expected == turned).all())


def _reorient(frame, orientation: Tuple[bool, bool, bool], degrees: Optional[float]):
    """A frame (H, W, C tensor) a decoder turned by ``degrees``, turned back, then as ``orientation`` says."""
    import torch

    from vito_fast.data.video_source import oriented

    turns = _quarter_turns(degrees)
    return oriented(torch.rot90(frame, -turns, dims=(0, 1)) if turns else frame, orientation)


DECODERS = {"pyav": PyAVDecoder, "dali": DaliDecoder, "nvc": NvcDecoder, "torchcodec": TorchCodecDecoder}


def make_decoder(name: str, device: str = "cpu") -> VideoDecoder:
    """The decoder called ``name`` (a key of ``DECODERS``, or "package.module:Class") for ``device``."""
    if name in DECODERS:
        return DECODERS[name](device=device)
    if ":" not in name:
        raise ValueError(f"video decoder {name!r}: not one of {sorted(DECODERS)} nor 'package.module:Class'")
    module_name, _, attribute = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"video decoder {name!r}: cannot load it: {error}") from None
    return factory(device=device)


def host_frames(frames: Sequence[object]) -> List[np.ndarray]:
    """Decoded frames as host NumPy arrays (GPU decoders' CUDA tensors copied back)."""
    out = []
    for frame in frames:
        if hasattr(frame, "detach"):
            frame = frame.detach().cpu().numpy()
        out.append(np.ascontiguousarray(frame))
    return out
