"""The decode worker: a process of its own that runs sample jobs for ``decode_pool.DecodePool``.

``DecodePool`` starts it as ``python -m vito_fast.data.decode_worker CONNECTION PROGRESS STDERR
MAX_OPEN`` (four inherited file descriptors and a number), a fresh interpreter: it holds none of
the trainer's CUDA, DALI or thread state (a fork would), and it never imports the trainer's main
module (``multiprocessing``'s spawn and forkserver do: a script without
``if __name__ == "__main__":`` would run again in every worker, and ``python -`` has no file to run).

* CONNECTION: a ``multiprocessing.connection.Connection`` (a socket) to the trainer: chunks of
  jobs in, one list of answers per chunk out; ("read ahead", FOLDER, JOBS) in, no answer: the
  remote bytes of a later batch's jobs fetched into that folder (``read_ahead``) on a thread of
  their own; ``None`` or the trainer's end closing stops it.
* PROGRESS: 8 bytes of shared memory holding the task the worker runs now (-1: none); the trainer
  reads it to tell which sample a hung or dead worker was on, and that a slow chunk moves on.
* STDERR: the trainer's stderr (-1: none). Until the worker is ready its stderr is a file the
  trainer reads when the worker dies while starting (so the error says why); then it is this one.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import sys
from multiprocessing.connection import Connection
from typing import Dict, Optional

import numpy as np

__all__ = ["main", "serve"]


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


def _picklable(error: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
        return True
    except Exception:
        return False


# seconds a chunk waits for the bytes fetched ahead for it before its samples read on their own
FETCH_AHEAD_WAIT = 10.0


def _fetch_ahead(runner, chunk) -> None:
    try:
        runner.fetch_ahead([job for _, job, _, _, _ in chunk])
    except Exception:  # a read ahead that fails is left to each sample's own read, which reports it
        pass


def _read_ahead(runner, folder: str, jobs) -> None:
    try:
        runner.read_ahead(folder, jobs)
    except Exception:  # as above: the sample's own read reports what fails
        pass


def serve(connection: Connection, progress: ctypes.c_int64, runner) -> None:
    """Run chunks of (task id, job, arena path, offset, size) until told None; answer once per chunk.

    Each chunk's remote bytes are fetched ahead on a thread of their own as soon as the chunk arrives
    (the trainer keeps two chunks in flight per worker): the next chunk's network wait overlaps this
    chunk's decoding."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FetchTimeout

    maps: dict = {}
    fetcher = ThreadPoolExecutor(1, thread_name_prefix="vito-fetch-ahead")
    # later batches' bytes (the trainer's read-ahead), on a thread of their own: a chunk's own fetch
    # never waits behind them
    reader = ThreadPoolExecutor(1, thread_name_prefix="vito-read-ahead")
    received: deque = deque()  # (chunk, its fetch ahead)

    def receive(block: bool) -> bool:
        """Take the chunks that have arrived (wait for one when ``block``); False: stop serving."""
        while block or connection.poll():
            try:
                chunk = connection.recv()
            except EOFError:  # the trainer has gone
                return False
            if chunk is None:
                return False
            if isinstance(chunk, tuple) and chunk[0] == "read ahead":
                reader.submit(_read_ahead, runner, chunk[1], chunk[2])
                continue
            received.append((chunk, fetcher.submit(_fetch_ahead, runner, chunk)))
            block = False
        return True

    try:
        while receive(block=not received):
            chunk, fetched = received.popleft()
            try:
                fetched.result(timeout=FETCH_AHEAD_WAIT)
            except FetchTimeout:  # a stalled read ahead: the samples read (and time out) on their own
                pass
            answers = []
            for task_id, job, arena_path, offset, size in chunk:
                progress.value = task_id
                try:
                    answers.append((task_id, "ok", _place(runner(job), arena_path, offset, size, maps)))
                except Exception as error:  # one sample's failure: the trainer replaces the sample
                    error = error if _picklable(error) else RuntimeError(f"{type(error).__name__}: {error}")
                    answers.append((task_id, "error", error))
            progress.value = -1
            try:
                connection.send(answers)  # one message per chunk: the trainer's process wakes once for several
            except (BrokenPipeError, ConnectionResetError):
                return
    finally:
        fetcher.shutdown(wait=False, cancel_futures=True)
        reader.shutdown(wait=False, cancel_futures=True)


def main(argv=None) -> None:
    connection_fd, progress_fd, stderr_fd, max_open = (int(value) for value in (argv or sys.argv[1:]))
    connection = Connection(connection_fd)
    progress_map = mmap.mmap(progress_fd, 8)
    os.close(progress_fd)
    progress = ctypes.c_int64.from_buffer(progress_map)

    from vito_fast.data.sample_jobs import JobRunner

    runner = JobRunner(max_open)
    if stderr_fd >= 0:  # started: from now on what the worker prints goes where the trainer's does
        sys.stderr.flush()
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
    connection.send("ready")
    serve(connection, progress, runner)


if __name__ == "__main__":
    main()
