"""The torch device stage of a PairLoader: nvJPEG decoding and batched augmentations in PyTorch.

``TorchStage`` implements ``DeviceStage`` (device_stage.py) with nothing beyond torch and
torchvision. Per host batch it brings the 2B frames to the device (frame store: the JPEG bytes
decoded in one batched call, ``torchvision.io.decode_jpeg(list, device="cuda")``, which is
nvJPEG; host-decoded video frames: copied from the decode workers' pinned shared memory),
pads them into one (2B, 3, H, W) tensor and runs ``torch_augment.augment_views`` for each view:
the same contract as ``DaliStage`` (the same parameters, the same per-sample math). On a GPU the
work is queued on the stage's own CUDA stream, ``depth`` batches ahead; on the CPU it runs when
a batch is submitted.

Videos whose decoder runs here (``input_kind="requests"``: "nvc", "torchcodec", ...) arrive as one
``FrameRequest`` per sample; the stage's decoder decodes them on the device in a process of its own
(``decoders.decoder_process``: a crash or hang of native decoder code ends that process, not the run;
NVDEC frames come back as CUDA tensors through CUDA IPC, never through host memory) before the same graph.

A batch whose frames do not decode is traced to its samples by the host preparation
(``find_bad``: PyAV on the host), which replaces them; the batch is then run again. When PyAV
decodes every sample, the stage's video decoder is at fault: ``DecoderFailure``, and the loader
goes on with PyAV.
"""
from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np
import torch

from vito_fast.data.augment import view_blur_window
from vito_fast.data.config import LoaderConfig
from vito_fast.data.device_stage import DeviceOutput, HostRepair, hand_over_on_current_stream
from vito_fast.data.host import HostBatch
from vito_fast.data.torch_augment import augment_views, pad_frames, to_device, view_tensors
from vito_fast.errors import DecoderFailure, VideoError

__all__ = ["TorchStage", "TORCH_INPUT_KINDS"]

TORCH_INPUT_KINDS = ("jpeg", "frames", "requests")  # "video" (a whole file's bytes) needs DALI's video decoder
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# torchvision >= 0.29 warns on every decode_jpeg call that TorchCodec will take image decoding over;
# the call works, and a warning per batch would bury the ones that matter
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)


class TorchStage:
    """The torch graph of one source kind on ``device`` ("cpu" or "gpu", CUDA device ``device_id``)."""

    def __init__(self, input_kind: str, batch_size: int, config: LoaderConfig, *, device: str,
                 device_id: Optional[int], host: HostRepair):
        if input_kind not in TORCH_INPUT_KINDS:
            raise ValueError(f"TorchStage: the torch backend takes {TORCH_INPUT_KINDS} inputs, not {input_kind!r}; "
                             "video_decoder='dali' decodes whole video files with DALI: use backend='dali', "
                             "or video_decoder='pyav'")
        self.input_kind, self.batch_size, self.config = input_kind, batch_size, config
        self._decoder_process = None  # where the stage's video decoder runs (decoders.decoder_process)
        self.depth = config.prefetch
        self.device = torch.device("cuda", device_id) if device == "gpu" else torch.device("cpu")
        self._host = host
        self._dtype = _DTYPES[config.dtype]
        self._max_window = view_blur_window(config.image_size, config.blur_kernel_at_224)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._in_flight: deque = deque()  # (batch, views, inputs read event, views ready event), in order
        # on the CPU, JPEGs decode on these threads (decode_jpeg releases the GIL); a GPU decodes a batch at once
        self._decoders = ThreadPoolExecutor(config.threads(), thread_name_prefix="vito-jpeg") if device != "gpu" else None

    def held(self) -> int:
        return len(self._in_flight)

    def filling(self) -> bool:
        return False  # every batch runs as soon as it is submitted

    def submit(self, batch: HostBatch) -> None:
        if self._stream is None:
            views, _ = self._run_repairing(batch)
            self._in_flight.append((batch, views, None, None))
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            views, inputs_read = self._run_repairing(batch)
            self._in_flight.append((batch, views, inputs_read, self._stream.record_event()))

    def take(self) -> Optional[DeviceOutput]:
        batch, views, inputs_read, ready = self._in_flight.popleft()
        if inputs_read is not None:
            inputs_read.synchronize()  # the host memory of the batch is read: it may serve another
        self._host.release(batch)
        return DeviceOutput(batch, views, ready)

    def drain(self) -> None:
        while self._in_flight:
            batch, _, inputs_read, _ = self._in_flight.popleft()
            if inputs_read is not None:
                inputs_read.synchronize()
            self._host.release(batch)

    def hand_over(self, output: DeviceOutput) -> None:
        hand_over_on_current_stream(output, self.device)

    def close(self) -> None:
        self._in_flight.clear()
        if self._decoder_process is not None:
            self._decoder_process.close()
        if self._decoders is not None:
            self._decoders.shutdown(wait=False)

    # ------------------------------------------------------------------ the graph

    def _run_repairing(self, batch: HostBatch):
        """``_run``; when frames do not decode, the host finds and replaces their samples, then again."""
        while True:
            try:
                return self._run(batch)
            except (RuntimeError, VideoError) as error:
                bad = self._host.find_bad(batch)
                if not bad.size:
                    if self.input_kind == "requests":
                        raise DecoderFailure(f"video decoder {self.config.video_decoder} failed on frames PyAV "
                                             f"decodes: {error}") from error
                    raise
                self._host.replace(batch, bad)

    def _run(self, batch: HostBatch):
        """((view1, view2), event after the host inputs were read or None) of one batch."""
        frames, frame_hw, inputs_read = self._frames(batch)
        size = self.config.image_size
        views = []
        for view in (0, 1):
            rows = slice(view * self.batch_size, (view + 1) * self.batch_size)
            tensors = view_tensors(batch.params, view, size, self._max_window, self.device)
            views.append(augment_views(frames[rows], frame_hw[rows], tensors, size, self._dtype))
        return tuple(views), inputs_read

    def _frames(self, batch: HostBatch):
        """(2B, 3, H, W) uint8 frames on the device (view 0's then view 1's), their (2B, 2) sizes, and
        an event after which the host inputs are no longer read (None when they were read at once)."""
        inputs_read = None
        if self.input_kind == "requests":  # each sample's two frames from the stage's decoder, in its process
            if self._decoder_process is None:
                from vito_fast.decoders.decoder_process import DecoderProcess

                self._decoder_process = DecoderProcess(self.config.video_decoder,
                                                       "gpu" if self.device.type == "cuda" else "cpu", self.device.index)
            requested = [row for row, sample in enumerate(batch.inputs) if "request" in sample]
            decoded = self._decoder_process.decode([batch.inputs[row]["request"] for row in requested],
                                                   self.config.sample_timeout * max(1, len(requested))) \
                if requested else []
            pairs = [(sample["image0"], sample["image1"]) if "request" not in sample else None for sample in batch.inputs]
            for row, pair in zip(requested, decoded):  # the others: PyAV's codecs, decoded on the host
                pairs[row] = pair
            non_blocking = self.device.type == "cuda"
            frames = [torch.as_tensor(pair[view]).to(self.device, non_blocking=non_blocking).permute(2, 0, 1)
                      for view in (0, 1) for pair in pairs]
            if len(requested) < len(pairs) and self._stream is not None:
                inputs_read = self._stream.record_event()  # host frames were read from the decode arena
        else:
            arrays = [sample[name] for name in ("image0", "image1") for sample in batch.inputs]
            if self.input_kind == "jpeg":
                from torchvision.io import ImageReadMode, decode_jpeg

                encoded = torch.from_numpy(np.concatenate(arrays))  # one copy: the JPEGs are read-only bytes
                jpegs = list(torch.split(encoded, [len(array) for array in arrays]))
                frames = self._decode_jpegs(jpegs, lambda part: decode_jpeg(part, mode=ImageReadMode.RGB,
                                                                            device=self.device))
            else:
                non_blocking = self.device.type == "cuda"  # the decode workers' arenas are page-locked
                frames = [torch.from_numpy(array).to(self.device, non_blocking=non_blocking).permute(2, 0, 1)
                          for array in arrays]
                inputs_read = self._stream.record_event() if self._stream is not None else None
        frame_hw = np.array([tuple(frame.shape[1:]) for frame in frames], dtype=np.int64)
        return pad_frames(frames), to_device(frame_hw, self.device), inputs_read

    def _decode_jpegs(self, jpegs: List[torch.Tensor], decode) -> List[torch.Tensor]:
        """``decode`` (a list of JPEGs -> their frames) in one call on a GPU, in slices over threads on the CPU."""
        if self._decoders is None:
            return decode(jpegs)
        slices = max(1, min(len(jpegs), self.config.threads()))
        bounds = np.linspace(0, len(jpegs), slices + 1).astype(int)
        parts = self._decoders.map(decode, [jpegs[start:end] for start, end in zip(bounds[:-1], bounds[1:])])
        return [frame for part in parts for frame in part]
