"""Worker processes that decode samples out of the trainer's process, with a timeout per sample.

Why not ``torch.utils.data`` workers or DALI's parallel external source: both treat a worker that
hangs or dies as the end of the iteration (a loader-wide timeout, a pipeline error), while a
training run must replace that one sample, restart the worker and go on. So the pool is small and
does exactly that:

* ``DecodePool(workers)`` starts ``workers`` processes, each a fresh interpreter running
  ``decode_worker`` (not forked: the trainer holds CUDA, DALI and torch threads; not
  ``multiprocessing``'s spawn: it re-runs the trainer's main module, which fails in a script
  without a main guard and in ``python -``). Each runs chunks of jobs (``sample_jobs``), answers
  once per chunk (the trainer's process wakes up once for several samples), and shows the job it
  runs in shared memory. A worker that dies while starting raises an error with its stderr.
* ``read_ahead(folder, jobs)`` has the workers fetch a later batch's remote bytes (``read_ahead``).
* ``run(tasks, arena)`` hands out chunks of tasks, two per worker, collects the answers, and
  returns one result per task: the arrays, or the error (VideoError/StoreError naming the file).
  A worker that stays on one sample for ``timeout`` seconds, or dies, is killed and restarted;
  that sample gets a ``WorkerFailure`` and the rest of its chunks go elsewhere.
* Arrays come back through shared memory: the caller reserves each task's bytes in an
  ``Arena`` (a file in /dev/shm mapped by every process, page-locked for CUDA on GPU hosts); the
  worker writes the arrays there and answers with their places, so a frame is written once and
  DALI reads it where it lies. Arrays that do not fit their reservation come back through the pipe.
"""
from __future__ import annotations

import atexit
import ctypes
import mmap
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from multiprocessing.connection import wait as wait_for
from typing import IO, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vito_fast.storage.read_ahead import delete_orphans

__all__ = ["Arena", "DecodePool", "WorkerFailure", "exit_reason", "worker_environment"]


class WorkerFailure(Exception):
    """A sample's worker did not answer in time or died; ``timed_out`` says which."""

    def __init__(self, message: str, timed_out: bool):
        super().__init__(message)
        self.timed_out = timed_out


ARENA_PREFIX = "vito-arena-"
_swept = False


def _sweep_stale_arenas(folder: str) -> None:
    """Delete arenas whose owner process is gone (killed before it could clean up): they hold memory."""
    global _swept
    if not _swept:
        _swept = True
        delete_orphans(folder, ARENA_PREFIX)


class Arena:
    """A shared-memory buffer (a file under /dev/shm) that workers map by path; a bump allocator.

    ``reserve(nbytes)`` returns an offset (64-byte aligned) or None when full; ``reset()`` frees all.
    ``view(offset, dtype, shape)`` is a NumPy view (no copy) of bytes a worker wrote. The file is
    named after its owner process (``vito-arena-<pid>-...``); the first arena of a process deletes
    those of owners that no longer run (a trainer killed with SIGKILL leaves its arenas behind).
    """

    def __init__(self, nbytes: int):
        folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        _sweep_stale_arenas(folder)
        handle, self.path = tempfile.mkstemp(prefix=f"{ARENA_PREFIX}{os.getpid()}-", dir=folder)
        try:
            self.nbytes = max(int(nbytes), 4096)
            os.ftruncate(handle, self.nbytes)
            self.buffer = mmap.mmap(handle, self.nbytes)
        finally:
            os.close(handle)
        self.used = 0

    def pin(self) -> bool:
        """Page-lock the buffer for CUDA (host-to-GPU copies go straight from it); False if CUDA refuses."""
        if getattr(self, "_pinned", None) is not None:
            return True
        try:
            import torch

            pinned = np.frombuffer(self.buffer, dtype=np.uint8)
            if int(torch.cuda.cudart().cudaHostRegister(pinned.ctypes.data, self.nbytes, 0)) != 0:
                return False
        except Exception:  # no CUDA runtime, or a build without cudart bindings
            return False
        self._pinned = pinned  # holds the mapping (and so the address) while registered
        return True

    def reserve(self, nbytes: int) -> Optional[int]:
        offset = -(-self.used // 64) * 64
        if offset + nbytes > self.nbytes:
            return None
        self.used = offset + nbytes
        return offset

    def reset(self) -> None:
        self.used = 0

    def view(self, offset: int, dtype: str, shape: Tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.buffer, dtype=dtype, count=count, offset=offset).reshape(shape)

    def close(self) -> None:
        """Unmap and delete (views handed out must be dropped first)."""
        pinned = getattr(self, "_pinned", None)
        if pinned is not None:
            import torch

            torch.cuda.cudart().cudaHostUnregister(pinned.ctypes.data)
            self._pinned = None
        try:
            self.buffer.close()
        except BufferError:  # a view is still alive: the mapping goes when it does
            pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------- the trainer side


_live_workers: "weakref.WeakSet[_Worker]" = weakref.WeakSet()


@atexit.register
def _stop_live_workers() -> None:
    """Kill the workers of pools nobody closed, as multiprocessing does with daemon processes."""
    for worker in list(_live_workers):
        worker.stop()


def worker_environment() -> Dict[str, str]:
    """The trainer's environment, with its ``sys.path`` in front (a worker imports what the trainer
    would, e.g. a checkout put on the path by hand), as spawned processes get it."""
    paths = [entry for entry in sys.path if isinstance(entry, str) and entry]
    inherited = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths + ([inherited] if inherited else [])))


def _shared_int64() -> Tuple[mmap.mmap, int]:
    """8 bytes of shared memory as (mapping, file descriptor to hand to the worker)."""
    if hasattr(os, "memfd_create"):
        handle = os.memfd_create("vito-decode-progress")
    else:
        with tempfile.TemporaryFile() as file:
            handle = os.dup(file.fileno())
    os.ftruncate(handle, 8)
    return mmap.mmap(handle, 8), handle


def exit_reason(returncode: Optional[int]) -> str:
    """How a process ended, from its return code: "killed by SIGKILL", "exit code 1"."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class _Worker:
    """One ``decode_worker`` process, its connection, and the task it runs (``progress.value``)."""

    def __init__(self, max_open: int):
        self.connection, child_end = multiprocessing.Pipe()
        self._progress_map, progress_fd = _shared_int64()
        self.progress = ctypes.c_int64.from_buffer(self._progress_map)  # the task it runs now (-1: none)
        self.progress.value = -1
        self.seen_progress = -1
        self.startup_log: Optional[IO[bytes]] = tempfile.TemporaryFile()  # its stderr until it is ready
        try:
            trainer_stderr = os.dup(2)
        except OSError:  # no stderr (a detached process): the worker keeps writing to the log
            trainer_stderr = -1
        fds = [child_end.fileno(), progress_fd] + ([trainer_stderr] if trainer_stderr >= 0 else [])
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vito_fast.data.decode_worker", str(child_end.fileno()), str(progress_fd),
                 str(trainer_stderr), str(max_open)],
                pass_fds=fds, stdin=subprocess.DEVNULL, stderr=self.startup_log, env=worker_environment())
        finally:
            child_end.close()
            for handle in fds[1:]:
                os.close(handle)
        _live_workers.add(self)
        self.ready = False
        self.chunk: deque = deque()  # tasks sent and not answered, in order (at most two chunks)
        self.seen_since = float("inf")  # when the parent first saw progress == seen_progress

    def set_ready(self) -> None:
        self.ready = True
        self.startup_log.close()
        self.startup_log = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def startup_failure(self, what: str = "") -> str:
        """Why the worker is not ready: ``what`` (default: its exit status) and the end of its stderr."""
        if not what:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            what = f"died while starting ({exit_reason(self.process.returncode)})"
        log = ""
        if self.startup_log is not None:
            self.startup_log.seek(0)
            log = self.startup_log.read().decode("utf-8", "replace").strip()
        lines = log.splitlines()[-25:] or ["(it printed nothing)"]
        return (f"DecodePool: a decode worker ({sys.executable} -m vito_fast.data.decode_worker) {what}; "
                "its stderr:\n" + "\n".join(lines))

    def stop(self) -> None:
        _live_workers.discard(self)
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # in uninterruptible sleep (a dead network mount): leave it
            pass
        self.connection.close()
        if self.startup_log is not None:
            self.startup_log.close()
            self.startup_log = None


class DecodePool:
    """``workers`` decoding processes; see the module docstring. ``restarts`` counts replaced workers."""

    def __init__(self, workers: int, *, timeout: float = 30.0, max_open: int = 16, start_timeout: float = 120.0):
        if workers < 1:
            raise ValueError(f"DecodePool: workers must be >= 1, got {workers}")
        self.timeout, self.max_open, self.start_timeout = float(timeout), max_open, start_timeout
        self._workers: List[_Worker] = [_Worker(max_open) for _ in range(workers)]
        self.restarts = 0

    def __len__(self) -> int:
        return len(self._workers)

    def worker_pids(self) -> List[int]:
        """Process ids of the workers running now (a read-only view for tests and benches)."""
        return [worker.process.pid for worker in self._workers]

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.connection.send(None)
            except OSError:
                pass
        for worker in self._workers:
            try:
                worker.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            worker.stop()
        self._workers = []

    def _replace(self, index: int) -> None:
        self._workers[index].stop()
        self._workers[index] = _Worker(self.max_open)
        self.restarts += 1

    def read_ahead(self, folder: str, jobs: Sequence[tuple]) -> None:
        """Have the workers fetch the remote bytes of ``jobs`` (a later batch's) into ``folder``, a share
        each, on their read-ahead threads (``decode_worker``); nothing is answered. A worker that dies
        loses its share: those samples read their bytes themselves."""
        workers = self._workers
        for index, worker in enumerate(workers):
            share = list(jobs[index::len(workers)])
            if share:
                try:
                    worker.connection.send(("read ahead", folder, share))
                except OSError:  # it died: noticed when a batch next runs on it
                    pass

    def run(self, tasks: Sequence[Tuple[tuple, Optional[int], int]], arena: Optional[Arena]) -> List[object]:
        """Run ``tasks`` (job, arena offset or None, reserved bytes); one result per task, in order:
        a dict of arrays (views into ``arena`` where they were placed) or the exception."""
        results: List[object] = [None] * len(tasks)
        done = [False] * len(tasks)
        pending = deque(range(len(tasks)))
        # small chunks, two in flight per worker: a worker never waits for the next one, and the
        # batch's tail (one worker busy, the others done) is short
        chunk_size = max(1, min(8, len(tasks) // (8 * len(self._workers))))
        arena_path = None if arena is None else arena.path
        started = time.monotonic()
        while not all(done):
            for index, worker in enumerate(list(self._workers)):
                while worker.ready and len(worker.chunk) < 2 * chunk_size and pending:
                    chunk = [pending.popleft() for _ in range(min(chunk_size, len(pending)))]
                    try:
                        worker.connection.send([(task, tasks[task][0], arena_path, tasks[task][1], tasks[task][2])
                                                for task in chunk])
                    except OSError:  # it died between two chunks (killed from outside)
                        pending.extendleft(reversed(chunk))
                        if worker.chunk:  # its answers are owed: the dead worker is noticed below
                            break
                        self._replace(index)
                        break
                    if not worker.chunk:
                        worker.seen_progress, worker.seen_since = worker.progress.value, time.monotonic()
                    worker.chunk.extend(chunk)
            busy = [worker for worker in self._workers if worker.chunk or not worker.ready]
            now = time.monotonic()
            for worker in busy:  # the clock of a sample starts when the worker is seen on it
                if worker.progress.value != worker.seen_progress:
                    worker.seen_progress, worker.seen_since = worker.progress.value, now
            # wake at the first deadline, and often enough to see workers move on to their next sample
            wake = min([worker.seen_since + self.timeout for worker in busy if worker.ready]
                       + [now + min(1.0, self.timeout / 4), started + self.start_timeout])
            # a worker that dies closes its end of the connection: the wait wakes for deaths too
            wait_for([w.connection for w in busy], timeout=max(0.0, wake - now))
            for index, worker in enumerate(list(self._workers)):
                if worker not in busy:
                    continue
                failure = self._collect(worker, results, done, arena)
                if (failure is None and worker.ready and worker.chunk and worker.progress.value == worker.seen_progress
                        and time.monotonic() > worker.seen_since + self.timeout):
                    failure = WorkerFailure(f"no answer in {self.timeout:g} s (sample_timeout); "
                                            "the decoder may hang on this file", timed_out=True)
                if failure is None and not worker.ready and time.monotonic() > started + self.start_timeout:
                    raise RuntimeError(worker.startup_failure(f"did not start in {self.start_timeout:g} s"))
                if failure is not None:
                    culprit = worker.progress.value
                    if culprit in worker.chunk:  # the sample it hung or died on; the others go elsewhere
                        worker.chunk.remove(culprit)
                        results[culprit], done[culprit] = failure, True
                    if worker.chunk:
                        pending.extendleft(reversed(worker.chunk))
                    elif not worker.ready:
                        raise RuntimeError(worker.startup_failure())
                    self._replace(index)
        return results

    def _collect(self, worker: _Worker, results: List[object], done: List[bool],
                 arena: Optional[Arena]) -> Optional[WorkerFailure]:
        """Read every answer the worker has sent; a WorkerFailure when it died."""
        try:
            while worker.connection.poll():
                message = worker.connection.recv()
                if message == "ready":
                    worker.set_ready()
                    continue
                for task, status, payload in message:
                    worker.chunk.remove(task)
                    if status == "ok" and isinstance(payload, list):
                        payload = {name: arena.view(offset, dtype, shape) for name, offset, dtype, shape in payload}
                    results[task], done[task] = payload, True
        except (EOFError, OSError):  # its end closed: it has exited, or is exiting
            try:
                worker.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        if not worker.alive():
            return WorkerFailure(f"the decoding process died ({exit_reason(worker.process.returncode)}) "
                                 "on this file", timed_out=False)
        return None
