"""The thread that keeps a PairLoader's batches coming: host preparation ahead, DALI fed while it runs.

``Producer(loader, epoch, step)`` makes the batches of positions (epoch, step), (epoch, step + 1),
..., on into the next epochs, and hands them over one at a time (``take``). Two threads:

* "vito-prepare" reads and decodes batch k + prefetch + 1 (``loader._prepare``; decode workers);
* "vito-dali" feeds DALI the batches the host has ready while DALI runs the ``prefetch`` it holds,
  waits on the host only when DALI holds nothing, and hands each finished batch over in order.

The threads hold the loader through a weak proxy: a loader dropped without ``close()`` is still
collected, and its finalizer stops them.
"""
from __future__ import annotations

import queue
import threading
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Tuple

__all__ = ["Producer"]


class Producer:
    """Batches of a loader from a position on; ``serves(epoch, step)`` says whether it is there."""

    def __init__(self, loader, epoch: int, step: int):
        self._steps_per_epoch = len(loader)
        self.next_position: Tuple[int, int] = (epoch, step)
        self._handoff: "queue.Queue" = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._preparer = ThreadPoolExecutor(1, thread_name_prefix="vito-prepare")
        self._thread = threading.Thread(target=_produce, args=(weakref.proxy(loader), epoch, step, self._handoff,
                                                               self._stop, self._preparer),
                                        name="vito-dali", daemon=True)
        self._thread.start()
        self._failed = False

    def serves(self, epoch: int, step: int) -> bool:
        return not self._failed and self._thread.is_alive() and self.next_position == (epoch, step)

    def take(self):
        """The next batch (batch dict, samples replaced, CUDA event or None), or the exception raised."""
        item = self._handoff.get()
        if isinstance(item, BaseException):
            self._failed = True
            return item
        epoch, step = self.next_position
        self.next_position = (epoch, step + 1) if step + 1 < self._steps_per_epoch else (epoch + 1, 0)
        return item

    def close(self) -> None:
        self._stop.set()
        here = threading.current_thread()
        if here is self._thread or here in getattr(self._preparer, "_threads", ()):
            return  # the loader was collected on one of our own threads: they stop by themselves
        while self._thread.is_alive():
            try:
                self._handoff.get(timeout=0.05)  # unblock a hand-over in progress
            except queue.Empty:
                pass
        self._thread.join()


def _positions(epoch: int, step: int, steps_per_epoch: int) -> Iterator[Tuple[int, int]]:
    while True:
        for current in range(step, steps_per_epoch):
            yield epoch, current
        epoch, step = epoch + 1, 0


def _put(handoff: "queue.Queue", item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            handoff.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _produce(loader, epoch: int, step: int, handoff: "queue.Queue", stop: threading.Event,
             preparer: ThreadPoolExecutor) -> None:
    positions = _positions(epoch, step, len(loader))
    prefetch = loader.config.prefetch
    prepared: deque = deque()
    in_flight: deque = deque()

    def prepare_next():
        prepared.append(preparer.submit(loader._prepare, *next(positions)))

    try:
        for _ in range(prefetch + 1):
            prepare_next()
        while not stop.is_set():
            # feed what the host has ready; wait for the host only when DALI holds nothing to give
            # (or a new pipeline still needs its first `prefetch` batches)
            while (len(in_flight) < prefetch and not stop.is_set()
                   and (not in_flight or loader._needs_prefetch or prepared[0].done())):
                started = time.perf_counter()
                batch = prepared.popleft().result()
                loader.stats.host_wait_seconds += time.perf_counter() - started
                prepare_next()
                loader._schedule(batch)
                in_flight.append(batch)
            if stop.is_set():
                break
            if loader._copied is not None:
                loader._copied.synchronize()  # outputs() hands DALI back the buffers we copied from
            outputs = loader._take_outputs(in_flight)
            batch = in_flight.popleft()
            item = None if batch.padding else loader._deliver(batch, outputs)
            loader._give_back_arena(batch)
            if item is not None:
                _put(handoff, item, stop)
    except ReferenceError:  # the loader was collected: nobody waits for batches
        return
    except BaseException as error:  # shown to the consumer, in order
        _put(handoff, error, stop)
    finally:
        preparer.shutdown(wait=True, cancel_futures=True)
        try:
            loader._drain(in_flight)
        except ReferenceError:
            pass
