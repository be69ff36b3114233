"""Which device stage a PairLoader runs: DALI's graph or the torch one, and why.

``LoaderConfig.backend``: "dali" (``DaliStage``: NVIDIA DALI, missing DALI is an error that says
how to install it), "torch" (``TorchStage``: torch and torchvision only) or "auto" (the default):
DALI when it imports *and* runs a tiny JPEG decode + resize on this device, else torch. The
probe runs once per device per process; ``choose_backend`` returns the choice with its reason,
and a loader made with "auto" prints it once, so a run says which engine made its batches.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["BACKENDS", "BackendChoice", "choose_backend", "dali_problem", "make_stage"]

BACKENDS = ("auto", "dali", "torch")

_probed: Dict[Tuple[str, Optional[int]], Optional[str]] = {}  # (device, device_id) -> problem (None: works)
_announced: set = set()


@dataclass(frozen=True)
class BackendChoice:
    """``name``: "dali" or "torch"; ``requested``: the setting; ``reason``: why this one."""

    name: str
    requested: str
    reason: str

    def describe(self) -> str:
        return f"data backend {self.requested} -> {self.name}: {self.reason}"


def dali_problem(device: str, device_id: Optional[int] = None) -> Optional[str]:
    """Why DALI cannot run the loader's graph on ``device`` ("cpu"/"gpu"), or None when it can."""
    key = (device, device_id if device == "gpu" else None)
    if key not in _probed:
        _probed[key] = _probe_dali(device, device_id)
    return _probed[key]


def _probe_dali(device: str, device_id: Optional[int]) -> Optional[str]:
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as error:
        return f"DALI is not installed ({error})"
    try:
        import numpy as np
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (90, 120, 150)).save(buffer, format="JPEG")
        encoded = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
        on_gpu = device == "gpu"

        @pipeline_def(batch_size=1, num_threads=1, device_id=device_id if on_gpu else None, prefetch_queue_depth=1)
        def probe():
            data = fn.external_source(name="encoded", dtype=types.UINT8)
            image = fn.decoders.image(data, output_type=types.RGB, device="mixed" if on_gpu else "cpu")
            return fn.resize(image, size=[8, 8], antialias=True)

        pipeline = probe()
        pipeline.build()
        pipeline.feed_input("encoded", [encoded])
        (resized,) = pipeline.run()
        shape = tuple(resized.as_tensor().shape())
        if shape != (1, 8, 8, 3):
            return f"DALI's probe gave a {shape} image, not (1, 8, 8, 3)"
        del pipeline
        return None
    except Exception as error:  # any failure of DALI here means: do not rely on it on this machine
        from vito_fast.errors import first_line

        return f"DALI is installed but failed on {device}: {first_line(error)}"


def choose_backend(requested: str, input_kind: str, device: str, device_id: Optional[int] = None) -> BackendChoice:
    """The device stage for ``requested`` ("auto", "dali" or "torch") and a source of ``input_kind``."""
    from vito_fast.data.torch_stage import TORCH_INPUT_KINDS

    if requested not in BACKENDS:
        raise ValueError(f"data backend: must be one of {BACKENDS}, not {requested!r}")
    if input_kind == "requests":  # the video decoder runs in the torch stage (GPU frames stay on the GPU)
        if requested == "dali":
            raise ValueError("data backend 'dali' cannot take frames a video decoder makes on the device "
                             "(nvc, torchcodec): use backend 'torch' or 'auto', or video_decoder 'pyav' or 'dali'")
        return BackendChoice("torch", requested, "its video decoder hands frames to the torch stage")
    if requested == "dali":
        from vito_fast.data.pipeline import import_dali

        import_dali()  # a missing DALI shows now, with how to install it, not at the first batch
        return BackendChoice("dali", requested, "asked for")
    if requested == "torch":
        if input_kind not in TORCH_INPUT_KINDS:
            raise ValueError("data backend 'torch' decodes JPEG frame stores and host-decoded video frames; "
                             "video_decoder='dali' hands whole files to DALI: use video_decoder='pyav' or backend 'dali'")
        return BackendChoice("torch", requested, "asked for")
    problem = dali_problem(device, device_id)
    if problem is None:
        return BackendChoice("dali", requested, f"DALI works on this machine ({device})")
    if input_kind not in TORCH_INPUT_KINDS:
        raise RuntimeError(f"video_decoder='dali' needs DALI, and {problem}; use video_decoder='pyav' "
                           "(the torch backend takes its frames) or install nvidia-dali-cuda130")
    return BackendChoice("torch", requested, problem)


def make_stage(choice: BackendChoice, input_kind: str, batch_size: int, config, *, device: str,
               device_id: Optional[int], host, announce: bool = True):
    """The ``DeviceStage`` of ``choice``; with ``announce``, an "auto" choice is printed once per process."""
    if announce and choice.requested == "auto" and (choice.name, choice.reason) not in _announced:
        _announced.add((choice.name, choice.reason))
        print(f"vito_fast: {choice.describe()}", file=sys.stderr)
    if choice.name == "dali":
        from vito_fast.data.dali_stage import DaliStage

        return DaliStage(input_kind, batch_size, config, device=device, device_id=device_id, host=host)
    from vito_fast.data.torch_stage import TorchStage

    return TorchStage(input_kind, batch_size, config, device=device, device_id=device_id, host=host)
