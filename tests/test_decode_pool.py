"""DecodePool on its own: answers in order, shared memory or pipe, errors, slow samples and hung ones.

Jobs read files ("file_bytes"), so a named pipe makes a sample as slow as the test wants: reading
it blocks until the test writes to it.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from vito_fast.data.decode_pool import Arena, DecodePool, WorkerFailure
from vito_fast.errors import VideoError


@pytest.fixture
def pool():
    pool = DecodePool(1, timeout=1.0)
    yield pool
    pool.close()


def file_job(path, frames=(1, 2)):
    return ("file_bytes", str(path), list(frames))


def test_answers_in_order_through_shared_memory_or_the_pipe(tmp_path, pool):
    rng = np.random.default_rng()
    payloads = [rng.integers(0, 256, size=int(rng.integers(1, 5000)), dtype=np.uint8) for _ in range(9)]
    for index, payload in enumerate(payloads):
        payload.tofile(tmp_path / f"{index}.bin")
    arena = Arena(1 << 20)
    try:
        # every other task reserves too little: its arrays come back through the pipe instead
        tasks = []
        for index, payload in enumerate(payloads):
            size = 2 * payload.nbytes + 256 if index % 2 == 0 else 16
            tasks.append((file_job(tmp_path / f"{index}.bin", (index, index + 1)), arena.reserve(size), size))
        results = pool.run(tasks, arena)
        for index, (payload, result) in enumerate(zip(payloads, results)):
            np.testing.assert_array_equal(result["encoded"], payload)
            np.testing.assert_array_equal(result["frames"], [index, index + 1])
            in_arena = np.shares_memory(result["encoded"], np.frombuffer(arena.buffer, dtype=np.uint8))
            assert in_arena == (index % 2 == 0), index
        del results, result
    finally:
        arena.close()


def test_a_bad_file_is_an_error_result_not_a_restart(tmp_path, pool):
    (tmp_path / "good.bin").write_bytes(b"abc")
    results = pool.run([(file_job(tmp_path / "missing.bin"), None, 0), (file_job(tmp_path / "good.bin"), None, 0)],
                       None)
    assert isinstance(results[0], VideoError) and "missing.bin" in str(results[0])
    assert bytes(results[1]["encoded"]) == b"abc" and pool.restarts == 0


def _release_later(path, delay: float) -> threading.Thread:
    def write():
        time.sleep(delay)
        try:
            with open(path, "wb") as handle:
                handle.write(b"x")
        except BrokenPipeError:  # the reader gave up first (it cannot read a pipe): what the test wants
            pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_slow_samples_that_move_on_are_not_timeouts(tmp_path, pool):
    # three samples of 0.6 s each (opening a pipe waits for its writer; reading a pipe then fails, as
    # np.fromfile needs a seekable file): together longer than the timeout, each one shorter
    fifos = [tmp_path / f"slow{index}" for index in range(3)]
    for index, fifo in enumerate(fifos):
        os.mkfifo(fifo)
        _release_later(fifo, 0.6 * (index + 1))
    started = time.monotonic()
    results = pool.run([(file_job(fifo), None, 0) for fifo in fifos], None)
    assert time.monotonic() - started > 1.5
    for fifo, result in zip(fifos, results):
        assert isinstance(result, VideoError) and fifo.name in str(result), result  # not a WorkerFailure
    assert pool.restarts == 0


def test_a_hung_sample_times_out_and_the_others_are_served(tmp_path, pool):
    hung = tmp_path / "hung"
    os.mkfifo(hung)  # never written: opening it blocks for good
    (tmp_path / "good.bin").write_bytes(b"ok")
    tasks = [(file_job(tmp_path / "good.bin"), None, 0), (file_job(hung), None, 0),
             (file_job(tmp_path / "good.bin"), None, 0)]
    started = time.monotonic()
    results = pool.run(tasks, None)
    elapsed = time.monotonic() - started
    assert isinstance(results[1], WorkerFailure) and results[1].timed_out
    assert bytes(results[0]["encoded"]) == bytes(results[2]["encoded"]) == b"ok"
    assert pool.restarts == 1 and 1.0 <= elapsed < 3.0, elapsed


def test_arenas_of_dead_owners_are_deleted_and_live_ones_kept(monkeypatch):
    import subprocess
    import sys

    import vito_fast.data.decode_pool as decode_pool

    probe = Arena(4096)
    folder = os.path.dirname(probe.path)  # /dev/shm where it exists
    probe.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has just ended
    stale = os.path.join(folder, f"{decode_pool.ARENA_PREFIX}{dead}-test")
    alive = os.path.join(folder, f"{decode_pool.ARENA_PREFIX}{os.getppid()}-test")
    for path in (stale, alive):
        with open(path, "wb") as handle:
            handle.write(b"x")
    try:
        monkeypatch.setattr(decode_pool, "_swept", False)
        arena = Arena(4096)
        assert not os.path.exists(stale) and os.path.exists(alive)
        assert os.path.basename(arena.path).startswith(f"{decode_pool.ARENA_PREFIX}{os.getpid()}-")
        arena.close()
        assert not os.path.exists(arena.path)
    finally:
        for path in (stale, alive):
            if os.path.exists(path):
                os.unlink(path)


def test_a_worker_that_cannot_start_says_why(tmp_path, monkeypatch):
    # a file in the working directory named like a module the worker imports (this process has
    # imported the real one already): the worker fails while starting, and the error shows its own
    (tmp_path / "numpy.py").write_text('raise ImportError("this numpy.py shadows the real one")\n')
    monkeypatch.chdir(tmp_path)
    pool = DecodePool(1, timeout=1.0)
    try:
        with pytest.raises(RuntimeError) as caught:
            pool.run([(file_job(tmp_path / "numpy.py"), None, 0)], None)
    finally:
        pool.close()
    message = str(caught.value)
    assert "decode worker" in message and "died while starting (exit code 1)" in message, message
    assert "ImportError: this numpy.py shadows the real one" in message, message
