"""The producer of a PairLoader: the threads that keep batches coming, host work ahead of the device's.

``Producer(host, stage, epoch, step, ...)`` makes the batches of positions (epoch, step),
(epoch, step + 1), ..., on into the next epochs, and hands them over one at a time (``take``).
Two threads:

* "vito-prepare" runs ``host.prepare`` for batch k + depth + 1 (``HostPreparation``: reads,
  decode workers);
* "vito-dali" submits to the device stage (``DeviceStage``) the batches the host has ready while
  the stage runs the ``depth`` it holds, waits on the host only when the stage holds nothing, and
  hands each finished batch over in order.

The threads hold the host preparation and the device stage, never the loader: a loader dropped
without ``close()`` is still collected, and its finalizer stops them.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

from vito_fast.data.device_stage import DeviceOutput, DeviceStage
from vito_fast.data.host import HostPreparation
from vito_fast.data.stats import LoaderStats

__all__ = ["Producer", "Delivered"]

# what take() gives: (batch dict, samples replaced, the stage's output for hand_over)
Delivered = Tuple[Dict[str, object], int, DeviceOutput]


class Producer:
    """Batches from a position on; ``serves(epoch, step)`` says whether it is there.

    ``stats``: the loader's ``LoaderStats`` (this part counts ``host_wait_seconds``).
    """

    def __init__(self, host: HostPreparation, stage: DeviceStage, epoch: int, step: int, *,
                 steps_per_epoch: int, stats: LoaderStats):
        self._steps_per_epoch = steps_per_epoch
        self.next_position: Tuple[int, int] = (epoch, step)
        self._handoff: "queue.Queue" = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._own_threads: Set[int] = set()
        self._preparer = ThreadPoolExecutor(1, thread_name_prefix="vito-prepare",
                                            initializer=lambda: self._own_threads.add(threading.get_ident()))
        self._on_exit = _ExitHook()
        self._thread = threading.Thread(target=_produce, args=(host, stage, stats, epoch, step, steps_per_epoch,
                                                               self._handoff, self._stop, self._preparer,
                                                               self._on_exit),
                                        name="vito-dali", daemon=True)
        self._thread.start()
        self._failed = False

    def serves(self, epoch: int, step: int) -> bool:
        return not self._failed and self._thread.is_alive() and self.next_position == (epoch, step)

    def take(self):
        """The next batch (a ``Delivered``), or the exception raised making it."""
        item = self._handoff.get()
        if isinstance(item, BaseException):
            self._failed = True
            return item
        epoch, step = self.next_position
        self.next_position = (epoch, step + 1) if step + 1 < self._steps_per_epoch else (epoch + 1, 0)
        return item

    def close(self, wait: bool = True, then: Optional[Callable[[], None]] = None) -> None:
        """Stop the threads; ``then`` runs once they have stopped. ``wait=False`` (a loader collected by
        the garbage collector, which may run on any thread, one holding a lock these threads need)
        returns at once and leaves ``then`` to the producer's thread as it ends."""
        self._stop.set()
        if not wait or threading.current_thread() is self._thread or threading.get_ident() in self._own_threads:
            if then is not None:
                self._on_exit.add(then)
            return
        while self._thread.is_alive():
            try:
                self._handoff.get(timeout=0.05)  # unblock a hand-over in progress
            except queue.Empty:
                pass
        self._thread.join()
        if then is not None:
            then()


class _ExitHook:
    """Callbacks the producer's thread runs as it ends; one added after that runs at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._callbacks: List[Callable[[], None]] = []
        self._ended = False

    def add(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._ended:
                self._callbacks.append(callback)
                return
        callback()

    def run(self) -> None:
        with self._lock:
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


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


def _produce(host: HostPreparation, stage: DeviceStage, stats: LoaderStats, epoch: int, step: int, steps_per_epoch: int,
             handoff: "queue.Queue", stop: threading.Event, preparer: ThreadPoolExecutor, on_exit: _ExitHook) -> None:
    positions = _positions(epoch, step, steps_per_epoch)
    depth = stage.depth
    prepared: deque = deque()

    def prepare_next():
        prepared.append(preparer.submit(host.prepare, *next(positions)))

    try:
        for _ in range(depth + 1):
            prepare_next()
        while not stop.is_set():
            # submit what the host has ready; wait for the host only when the stage holds nothing to
            # give (or a new graph still needs its first `depth` batches)
            while (stage.held() < depth and not stop.is_set()
                   and (not stage.held() or stage.filling() or prepared[0].done())):
                started = time.perf_counter()
                batch = prepared.popleft().result()
                stats.host_wait_seconds += time.perf_counter() - started
                prepare_next()
                stage.submit(batch)
            if stop.is_set():
                break
            output: Optional[DeviceOutput] = stage.take()
            if output is not None:
                views = {"view1": output.views[0], "view2": output.views[1]}
                _put(handoff, ({**views, **host.describe(output.batch)}, output.batch.replaced, output), stop)
    except BaseException as error:  # shown to the consumer, in order
        _put(handoff, error, stop)
    finally:
        preparer.shutdown(wait=True, cancel_futures=True)
        stage.drain()
        on_exit.run()
