"""A video decoder of the device stage in a process of its own: a crash takes only that process down.

NVDEC decoders (PyNvVideoCodec, torchcodec's CUDA decoder, DALI's mixed backend) run native code
that can hang or segfault on a file PyAV decodes. In the trainer's process a segfault ends the run;
here ``DecoderProcess(name, device)`` starts ``python -m vito_fast.decoders.decoder_process FD``
(a fresh interpreter, as the decode workers are: no fork of the trainer's CUDA state, no re-run of
its main module), which makes the decoder once and keeps it (an NVDEC session is reused from batch
to batch). ``decode(requests, seconds)`` sends a batch's ``FrameRequest``s and returns each one's
frames: NumPy arrays on the CPU; CUDA tensors on a GPU, shared through CUDA IPC by
``torch.multiprocessing``'s pickling (the frames never pass through host memory).

Raises ``DecoderFailure`` naming the decoder when its process dies (a signal), does not answer within
``seconds`` (it is killed: a hang), or does not start; the loader then goes on with PyAV. A
decoder's own error on a file (it answers) is a ``VideoError``, which the stage traces to samples.
"""
from __future__ import annotations

import multiprocessing
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Dict, List, Optional, Sequence

from vito_fast.data.decode_pool import exit_reason, worker_environment
from vito_fast.decoders.ffmpeg_libs import child_environment
from vito_fast.errors import DecoderFailure, VideoError, first_line

__all__ = ["DecoderProcess", "decoder_environment", "START_SECONDS"]

START_SECONDS = 120.0  # for the process to import torch and make its decoder (a CUDA context: seconds)
GPU_THREADS = 4  # requests decoded at once on a GPU (an H100 has 7 NVDEC engines, an A100 5)


def decoder_environment(name: str) -> Dict[str, str]:
    """The environment of a process that decodes with decoder ``name`` (this one, a trial's): the
    trainer's, with its ``sys.path`` (``worker_environment``), and for torchcodec the FFmpeg in PyAV's
    wheel where the machine has none (``ffmpeg_libs.child_environment``)."""
    environment = worker_environment()
    return child_environment(environment) if name == "torchcodec" else environment


class DecoderProcess:
    """The decoder called ``name`` (``video_decoders.make_decoder``) for ``device``, in its own process;
    on a GPU, CUDA device ``device_id`` (the trainer's: the frames come back on it). ``threads``: how
    many of a batch's requests it decodes at once, each thread with a decoder of its own (one NVDEC
    session decodes one stream at a time, and a card has several decode engines); default
    ``GPU_THREADS`` on a GPU, 1 on the CPU (the decode workers hold the host's cores)."""

    def __init__(self, name: str, device: str, device_id: Optional[int] = None, threads: Optional[int] = None):
        self.name, self.device = name, device
        threads = threads if threads is not None else GPU_THREADS if device == "gpu" else 1
        if threads < 1:
            raise ValueError(f"DecoderProcess: threads must be at least 1, not {threads}")
        self._connection, child = multiprocessing.Pipe()
        self._log = tempfile.TemporaryFile()  # its stderr: the reason when it dies
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "vito_fast.decoders.decoder_process", str(child.fileno())],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stderr=self._log, env=decoder_environment(name))
        finally:
            child.close()
        self._connection.send((name, device, device_id, threads))
        self._ready = False

    def _fail(self, what: str) -> DecoderFailure:
        """Stop the process; the failure, with the end of its stderr."""
        self.close()
        self._log.seek(0)
        lines = self._log.read().decode("utf-8", "replace").strip().splitlines()
        detail = f" (its last words: {lines[-1][:300]})" if lines else ""
        return DecoderFailure(f"video decoder {self.name} {what}{detail}: PyAV decodes from here")

    def _receive(self, seconds: float, what: str):
        if not self._connection.poll(seconds):
            if self._process.poll() is None:
                raise self._fail(f"did not answer within {seconds:g} s (a hang)")
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise self._fail(f"died {what} ({exit_reason(self._process.returncode)}): its process, not the run")

    def decode(self, requests: Sequence, seconds: float) -> List[list]:
        """Each request's frames (see the module docstring); ``seconds``: the time the batch may take."""
        if not self._ready:
            status, message = self._receive(START_SECONDS, "while starting")
            if status != "ready":
                raise self._fail(f"could not start: {message}")
            self._ready = True
        try:
            self._connection.send([request.to_json() for request in requests])
        except OSError:
            raise self._fail(f"died ({exit_reason(self._process.poll())})") from None
        status, payload = self._receive(seconds, "decoding")
        if status == "error":
            raise VideoError(payload)
        return payload

    def __enter__(self) -> "DecoderProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._connection.send(None)
                self._process.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self._connection.close()


def main(argv=None) -> None:
    connection = Connection(int((argv or sys.argv[1:])[0]))
    import torch.multiprocessing  # noqa: F401  (registers the pickling of CUDA tensors through CUDA IPC)

    from vito_fast.decoders.video_decoders import FrameRequest, make_decoder

    name, device, device_id, threads = connection.recv()
    local = threading.local()

    def decoder_here():
        """This thread's decoder (made on first use, on the trainer's CUDA device)."""
        if getattr(local, "decoder", None) is None:
            if device == "gpu" and device_id is not None:
                torch.cuda.set_device(device_id)  # per thread: the decoders decode on the current device
            local.decoder = make_decoder(name, device)
            made.append(local.decoder)
        return local.decoder

    made: list = []
    try:
        decoder_here()  # the first one here, so that a decoder that cannot be made says so at start
    except Exception as error:
        connection.send(("error", f"{type(error).__name__}: {first_line(error)}"))
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="decoder") if threads > 1 else None
    decode = lambda request: decoder_here().decode(FrameRequest.from_json(request))  # noqa: E731
    connection.send(("ready", None))
    while True:
        try:
            batch = connection.recv()
        except EOFError:  # the trainer has gone
            return
        if batch is None:
            for decoder in made:
                decoder.close()
            return
        try:
            frames = list(pool.map(decode, batch)) if pool is not None else [decode(request) for request in batch]
            if device == "gpu":
                # frames in PyTorch's own memory (a decoder's DLPack frame may be a buffer it reuses for
                # the next one), copied once its threads' streams are done, written before the trainer reads
                torch.cuda.synchronize()
                frames = [[frame.clone() if getattr(frame, "is_cuda", False) else frame for frame in pair]
                          for pair in frames]
                torch.cuda.synchronize()
        except Exception as error:  # the decoder's own error on a file: the stage traces it to samples
            connection.send(("error", f"{type(error).__name__}: {first_line(error)}"[:1000]))
            continue
        connection.send(("ok", frames))
        del frames
        if device == "gpu":
            torch.cuda.ipc_collect()  # frames the trainer has let go of


if __name__ == "__main__":
    main()
