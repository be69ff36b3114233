"""One decoder's trial, in a process of its own: ``python -m vito_fast.decoders.trial`` < job.json.

The job (from ``choice.run_trials``, on stdin): {"decoder", "device", "requests": [FrameRequest as
JSON], "min_psnr_db"}. The process decodes every request with the decoder (the first one timed
apart: it includes the decoder's set-up), then the same frames with PyAV, and prints one JSON line,
a ``DecoderTrial``: "unavailable" with the decoder's own reason, "failed" with its error, "wrong
frames" naming the first frame that differs from PyAV's, or "verified" with its figures. A decoder
that hangs or crashes never prints: its parent names it.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vito_fast.decoders.video_decoders import FrameRequest, host_frames, make_decoder
from vito_fast.errors import first_line


LUMA = np.array([0.299, 0.587, 0.114])


def psnr_db(frame: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of ``frame``'s luma against ``reference``'s (uint8 RGB), in dB; infinite when they are equal.

    Luma, because decoders convert YUV to RGB and upsample chroma their own ways: on a noise texture
    DALI's CPU decoder and PyAV give the same frame 45 dB apart in luma but 25 dB apart in RGB,
    while neighbouring frames are 14-17 dB apart in either."""
    error = np.mean((frame.astype(np.float64) @ LUMA - reference.astype(np.float64) @ LUMA) ** 2)
    return math.inf if error == 0 else 10.0 * math.log10(255.0 ** 2 / error)


# CUPTI activities that occupy the GPU's SMs and copy engines (NVDEC's and NVJPG's own engines are not traced)
GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")


def gpu_work_spans(trace) -> List[Tuple[float, float]]:
    """(start, end) µs of the GPU's own work in a ``torch.profiler`` trace: kernels, copies and memsets
    where the trace names its events' activities, else every event on the CUDA device but annotations."""
    from torch.autograd import DeviceType

    spans = []
    for event in trace.events():
        kind = getattr(event, "activity_type", None)
        if (kind in GPU_WORK) if kind is not None else (
                event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)):
            spans.append((event.time_range.start, event.time_range.end))
    return spans


def gpu_ms_per_pair(decoder, requests: Sequence[FrameRequest]) -> Optional[float]:
    """GPU ms per pair of this process's kernels and copies while ``decoder`` decodes ``requests`` again
    (colour conversion, copies; NVDEC's own engine time is not in a trace); None where nothing was traced."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as trace:
            for request in requests:
                decoder.decode(request)
            torch.cuda.synchronize()
        total = sum(end - start for start, end in gpu_work_spans(trace))
    except Exception:  # a profiler that cannot trace here: the figure is missing, not the trial
        return None
    return total / 1e3 / len(requests) if total else None


def _synchronize(device: str) -> None:
    if device == "gpu":
        import torch

        torch.cuda.synchronize()


def run(job: dict) -> dict:
    name, device = job["decoder"], job["device"]
    requests = [FrameRequest.from_json(record) for record in job["requests"]]
    result = {"decoder": name, "status": "verified"}
    try:
        decoder = make_decoder(name, device)
    except ValueError as error:
        return {**result, "status": "unavailable", "reason": str(error)}
    for codec in sorted({request.codec for request in requests}):
        reason = decoder.unavailable(codec)
        if reason:
            return {**result, "status": "unavailable", "reason": reason}
    try:
        started = time.perf_counter()
        first = decoder.decode(requests[0])
        _synchronize(device)
        result["first_sample_seconds"] = time.perf_counter() - started
        timed = requests[1:] or requests
        wall, cpu = time.perf_counter(), time.process_time()
        outputs = [decoder.decode(request) for request in timed]
        _synchronize(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    except Exception as error:  # the decoder's own failure: named, never raised
        return {**result, "status": "failed", "reason": f"{type(error).__name__}: {first_line(error)}"[:300]}
    result.update(pairs_per_s=len(timed) / max(wall, 1e-9), cpu_ms_per_pair=1e3 * cpu / len(timed))
    if device == "gpu":  # after the timed pass, so the trace costs it nothing
        result["gpu_ms_per_pair"] = gpu_ms_per_pair(decoder, timed[:8])
    checked = [(requests[0], first)] + (list(zip(requests[1:], outputs)) if len(requests) > 1 else [])
    reference = make_decoder("pyav")
    worst = math.inf
    for request, frames in checked:
        expected = reference.decode(request)
        frames = host_frames(frames)
        if len(frames) != len(expected):
            return {**result, "status": "wrong frames",
                    "reason": f"{request.path}: {len(frames)} frames for {len(expected)} requested"}
        for number, frame, truth in zip(request.frames, frames, expected):
            if frame.shape != truth.shape:
                return {**result, "status": "wrong frames", "reason": f"{request.path}: frame {number} is "
                        f"{frame.shape[1]}x{frame.shape[0]}, PyAV's {truth.shape[1]}x{truth.shape[0]}"}
            quality = psnr_db(frame, truth)
            worst = min(worst, quality)
            if quality < job["min_psnr_db"]:
                return {**result, "status": "wrong frames", "min_psnr_db": quality,
                        "reason": f"{request.path}: frame {number} is not PyAV's (PSNR {quality:.1f} dB "
                                  f"< {job['min_psnr_db']:g})"}
    result["min_psnr_db"] = worst
    return result


def main(argv=None) -> int:
    """``python -m vito_fast.decoders.trial [DECODER DEVICE]``: with a decoder named, load it first and
    print "ready" (the parent starts every trial's process at once and times them one by one), then
    read the job from stdin and print the trial."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2:
        try:
            make_decoder(*argv).unavailable("h264")  # imports what the decoder needs (torch, DALI, ...)
        except Exception:  # the job's own run says what is wrong, in its words
            pass
        print("ready", flush=True)
    print(json.dumps(run(json.loads(sys.stdin.read())), allow_nan=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
