"""Worker processes that decode samples out of the trainer's process, with a timeout per sample.

Why not ``torch.utils.data`` workers or DALI's parallel external source: both treat a worker that
hangs or dies as the end of the iteration (a loader-wide timeout, a pipeline error), while a
training run must replace that one sample, restart the worker and go on. So the pool is small and
does exactly that:

* ``DecodePool(workers)`` starts ``workers`` processes (spawned: the trainer holds CUDA and torch
  threads). Each runs chunks of jobs (``sample_jobs``), answers once per chunk (the trainer's
  process wakes up once for several samples), and shows the job it runs in shared memory.
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

import mmap
import multiprocessing
import os
import tempfile
import time
from collections import deque
from multiprocessing.connection import wait as wait_for
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Arena", "DecodePool", "WorkerFailure"]


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
    if _swept:
        return
    _swept = True
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        owner = name[len(ARENA_PREFIX):].split("-", 1)[0] if name.startswith(ARENA_PREFIX) else ""
        if not owner.isdigit() or int(owner) == os.getpid():
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass
        except PermissionError:  # alive, another user's
            pass


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


# ----------------------------------------------------------------------------- the worker side


def _place(arrays: Dict[str, np.ndarray], arena_path: Optional[str], offset: Optional[int], size: int, maps: dict):
    """Write ``arrays`` at ``offset`` of the arena when they fit: [(name, offset, dtype, shape)]; else the arrays."""
    total = sum(-(-array.nbytes // 64) * 64 for array in arrays.values())
    if arena_path is None or offset is None or total > size:
        return arrays
    if arena_path not in maps:
        if len(maps) >= 8:  # arenas the trainer replaced: unmap the oldest
            maps.pop(next(iter(maps))).close()
        with open(arena_path, "r+b") as handle:
            maps[arena_path] = mmap.mmap(handle.fileno(), 0)
    buffer, places = maps[arena_path], []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        np.frombuffer(buffer, dtype=np.uint8, count=array.nbytes, offset=offset)[:] = array.reshape(-1).view(np.uint8)
        places.append((name, offset, array.dtype.str, array.shape))
        offset += -(-array.nbytes // 64) * 64
    return places


def _worker_main(connection, progress, max_open: int) -> None:
    """Run chunks of (task id, job, arena path, offset, size) until told None; answer once per chunk.

    ``progress.value`` is the task being run (shared memory): the parent reads it to tell which
    sample a hung or dead worker was on, and that a slow chunk is still moving.
    """
    from vito_fast.data.sample_jobs import JobRunner

    runner, maps = JobRunner(max_open), {}
    connection.send("ready")
    while True:
        chunk = connection.recv()
        if chunk is None:
            return
        answers = []
        for task_id, job, arena_path, offset, size in chunk:
            progress.value = task_id
            try:
                answers.append((task_id, "ok", _place(runner(job), arena_path, offset, size, maps)))
            except Exception as error:  # one sample's failure: the parent replaces the sample
                error = error if _picklable(error) else RuntimeError(f"{type(error).__name__}: {error}")
                answers.append((task_id, "error", error))
        progress.value = -1
        connection.send(answers)  # one message per chunk: the trainer's process wakes once for several samples


def _picklable(error: Exception) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return True
    except Exception:
        return False


# ----------------------------------------------------------------------------- the trainer side


class _Worker:
    def __init__(self, context, max_open: int):
        self.connection, child_end = context.Pipe()
        self.progress = context.Value("q", -1, lock=False)  # the task the worker runs now (-1: none)
        self.seen_progress = -1
        self.process = context.Process(target=_worker_main, args=(child_end, self.progress, max_open), daemon=True,
                                       name="vito-decode-worker")
        self.process.start()
        child_end.close()
        self.ready = False
        self.chunk: deque = deque()  # tasks sent and not answered, in order (at most two chunks)
        self.seen_since = float("inf")  # when the parent first saw progress == seen_progress

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


class DecodePool:
    """``workers`` decoding processes; see the module docstring. ``restarts`` counts replaced workers."""

    def __init__(self, workers: int, *, timeout: float = 30.0, max_open: int = 16, start_timeout: float = 120.0):
        if workers < 1:
            raise ValueError(f"DecodePool: workers must be >= 1, got {workers}")
        self.timeout, self.max_open, self.start_timeout = float(timeout), max_open, start_timeout
        self._context = multiprocessing.get_context("spawn")
        self._workers: List[_Worker] = [_Worker(self._context, max_open) for _ in range(workers)]
        self.restarts = 0

    def __len__(self) -> int:
        return len(self._workers)

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.connection.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(timeout=2)
            worker.stop()
        self._workers = []

    def _replace(self, index: int) -> None:
        self._workers[index].stop()
        self._workers[index] = _Worker(self._context, self.max_open)
        self.restarts += 1

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
            ready = set(wait_for([w.connection for w in busy] + [w.process.sentinel for w in busy],
                                 timeout=max(0.0, wake - now)))
            for index, worker in enumerate(list(self._workers)):
                if worker not in busy:
                    continue
                failure = self._collect(worker, ready, results, done, arena)
                if (failure is None and worker.ready and worker.chunk and worker.progress.value == worker.seen_progress
                        and time.monotonic() > worker.seen_since + self.timeout):
                    failure = WorkerFailure(f"no answer in {self.timeout:g} s (sample_timeout); "
                                            "the decoder may hang on this file", timed_out=True)
                if failure is None and not worker.ready and time.monotonic() > started + self.start_timeout:
                    raise RuntimeError(f"DecodePool: a worker did not start in {self.start_timeout:g} s")
                if failure is not None:
                    culprit = worker.progress.value
                    if culprit in worker.chunk:  # the sample it hung or died on; the others go elsewhere
                        worker.chunk.remove(culprit)
                        results[culprit], done[culprit] = failure, True
                    if worker.chunk:
                        pending.extendleft(reversed(worker.chunk))
                    elif not worker.ready:
                        raise RuntimeError(f"DecodePool: a worker died while starting ({failure})")
                    self._replace(index)
        return results

    def _collect(self, worker: _Worker, ready: set, results: List[object], done: List[bool],
                 arena: Optional[Arena]) -> Optional[WorkerFailure]:
        """Read every answer the worker has sent; a WorkerFailure when it died."""
        try:
            while worker.connection.poll():
                message = worker.connection.recv()
                if message == "ready":
                    worker.ready = True
                    continue
                for task, status, payload in message:
                    worker.chunk.remove(task)
                    if status == "ok" and isinstance(payload, list):
                        payload = {name: arena.view(offset, dtype, shape) for name, offset, dtype, shape in payload}
                    results[task], done[task] = payload, True
        except (EOFError, OSError):
            pass
        if worker.process.sentinel in ready or not worker.process.is_alive():
            worker.process.join(timeout=1)
            return WorkerFailure(f"the decoding process died (exit code {worker.process.exitcode}) "
                                 "on this file", timed_out=False)
        return None
