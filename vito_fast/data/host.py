"""Host preparation, the CPU part of a PairLoader: from a position to the device stage's inputs.

``HostPreparation.prepare(epoch, step)`` takes the clips of that position from the order
(``SampleOrder``), draws their frames and views (``sample_view_params``) and reads each sample
through its source (``PairSource.read``): a frame store reads its JPEGs itself; a video source
hands decode jobs to the ``SampleDecoder`` this module gives it, which runs them in
``decode_workers`` processes (``DecodePool``; frames come back in shared-memory ``Arena``s) or on
threads of this process (``decode_workers=0``). The result is a ``HostBatch``.

For remote videos the bytes of the next ``read_ahead`` batches are fetched while this one decodes
(``read_ahead.ReadAhead``: the decode workers fetch them into shared memory, each job names where).

A sample whose data cannot be used is replaced by ``SampleOrder.replacement`` until one loads; the
file is named once in a warning and in the stats. A clip that hung or killed a worker is not read
again. The device stage asks for the same repair after a failure inside its graph
(``find_bad``, then ``replace``), and gives a batch's shared memory back with ``release``.
"""
from __future__ import annotations

import queue
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from vito_fast.data.config import LoaderConfig
from vito_fast.data.decode_pool import Arena, DecodePool, WorkerFailure
from vito_fast.data.pair_sources import PairSource
from vito_fast.data.sample_jobs import JobRunner
from vito_fast.data.sample_order import SampleOrder
from vito_fast.data.sampler import ViewParams, sample_view_params
from vito_fast.data.stats import LoaderStats
from vito_fast.errors import StoreError, VideoError, about, failed_object
from vito_fast.storage.read_ahead import ReadAhead

__all__ = ["DATA_ERRORS", "HostBatch", "HostPreparation"]

# errors that mean "this sample's data is unusable" (replace it); anything else is a bug and shows
DATA_ERRORS = (StoreError, VideoError, OSError, WorkerFailure)


@dataclass
class HostBatch:
    """What the host prepared for one step: the clips, their view parameters and the graph inputs."""

    epoch: int
    step: int
    clips: np.ndarray
    repeats: np.ndarray
    attempts: np.ndarray
    params: ViewParams
    inputs: List[Optional[Dict[str, np.ndarray]]]
    arena: Optional[Arena] = None
    padding: bool = False  # fed only to fill a new graph's first prefetch; its output is dropped

    @property
    def replaced(self) -> int:
        """Samples of this batch served from a replacement clip."""
        return int((self.attempts > 0).sum())


class HostPreparation:
    """Prepares batches on the host; owns the reading threads, the decode workers and their arenas.

    ``pinned``: page-lock the arenas for CUDA copies (a GPU loader). ``stats``: the loader's
    ``LoaderStats``; this part counts ``failed_files``, ``timeouts`` and ``worker_restarts``.
    """

    def __init__(self, source: PairSource, order: SampleOrder, config: LoaderConfig, *, seed: int,
                 pinned: bool, stats: LoaderStats):
        self.source, self.order, self.config, self.seed = source, order, config, int(seed)
        self.batch_size = order.batch_size
        self.stats = stats
        self._pinned = pinned
        self._threads = ThreadPoolExecutor(config.threads(), thread_name_prefix="vito-read")
        self._workers = config.workers()
        self._runner = JobRunner(config.max_open_videos)  # decoding on this process's threads (0 workers)
        self._pool: Optional[DecodePool] = None  # started on the first decode job
        self._arenas: List[Arena] = []  # every arena made (closed with this part)
        self._pinned_arenas = 0
        self._free_arenas: "queue.SimpleQueue[Arena]" = queue.SimpleQueue()
        self._reported: Dict[int, str] = {}
        self._given_up: Dict[int, Exception] = {}  # clips that hung or killed a worker
        self._ahead: Optional[ReadAhead] = None
        if config.read_ahead and getattr(source, "reads_remote", False):  # remote videos (not a frame store)
            self._ahead = ReadAhead(config.read_ahead, order.steps)
            self._ahead_thread = ThreadPoolExecutor(1, thread_name_prefix="vito-read-ahead")  # with no workers

    # ------------------------------------------------------------------ read-only views (tests, benches)

    @property
    def decode_worker_pids(self) -> Tuple[int, ...]:
        """Process ids of the decode workers running now (empty before the first decode job)."""
        return () if self._pool is None else tuple(self._pool.worker_pids())

    @property
    def arena_count(self) -> int:
        """Shared-memory arenas made so far (reused from batch to batch)."""
        return len(self._arenas)

    @property
    def read_ahead(self) -> Optional[ReadAhead]:
        """Where the bytes of the batches ahead are fetched to (None: no read-ahead: local data, or
        ``read_ahead=0``)."""
        return self._ahead

    @property
    def arenas_pinned(self) -> bool:
        """Whether every arena is page-locked for CUDA copies (False before the first)."""
        return bool(self._arenas) and self._pinned_arenas == len(self._arenas)

    # ------------------------------------------------------------------ the part's work

    def prepare(self, epoch: int, step: int) -> HostBatch:
        """The batch of (epoch, step): every sample loaded, or replaced until it loads."""
        clips, repeats = self.order.epoch(epoch)
        rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
        clips, repeats = clips[rows].copy(), repeats[rows].copy()
        attempts = np.zeros(self.batch_size, dtype=np.int64)
        batch = HostBatch(epoch, step, clips, repeats, attempts, self._view_params(clips, repeats, attempts, epoch),
                          [None] * self.batch_size)
        self._read_ahead(epoch, step)
        self.replace(batch, self._load_rows(batch, np.arange(self.batch_size)))
        if self._ahead is not None:
            self._ahead.finished(epoch, step)
        return batch

    def replace(self, batch: HostBatch, rows: np.ndarray) -> None:
        """Replace the samples at ``rows`` (by the next attempt) until each one loads."""
        epoch, first = batch.epoch, self.order.first_position(batch.step)
        while rows.size:
            for row in rows:
                batch.attempts[row] += 1
                if batch.attempts[row] > self.config.max_replacements:
                    errors = "; ".join(list(self.stats.failed_files.values())[-3:])
                    raise RuntimeError(f"PairLoader: {self.config.max_replacements} replacements in a row failed at "
                                       f"epoch {epoch} step {batch.step}; is most of the data unreadable? "
                                       f"Last errors: {errors}")
                batch.clips[row] = self.order.replacement(epoch, first + int(row), int(batch.attempts[row]))
            fresh = self._view_params(batch.clips[rows], batch.repeats[rows], batch.attempts[rows], epoch)
            for name, values in fresh.to_dict().items():
                getattr(batch.params, name)[rows] = values
            rows = self._load_rows(batch, rows)

    def find_bad(self, batch: HostBatch) -> np.ndarray:
        """Rows of ``batch`` whose frames do not decode on the host (after a failure in a device graph)."""
        def check(row):
            try:
                self.source.verify(int(batch.clips[row]), batch.params.frame_indices[row])
                return None
            except DATA_ERRORS as error:
                self._mark_bad(int(batch.clips[row]), error)
                return row

        rows = self._threads.map(check, range(self.batch_size))
        return np.array([row for row in rows if row is not None], dtype=np.int64)

    def describe(self, batch: HostBatch) -> Dict[str, np.ndarray]:
        """The batch's NumPy fields: ``sample_ids``, ``frame_indices``, ``crops``, ``labels`` (copies)."""
        return {"sample_ids": batch.clips.copy(), "frame_indices": batch.params.frame_indices.copy(),
                "crops": batch.params.crop_boxes.copy(), "labels": self.source.labels[batch.clips]}

    def release(self, batch: HostBatch) -> None:
        """The device stage is done with ``batch``'s inputs: its arena serves another batch."""
        if batch.arena is not None and not batch.padding:
            arena, batch.arena, batch.inputs = batch.arena, None, []
            arena.reset()
            self._free_arenas.put(arena)

    def close(self) -> None:
        """Stop the reading threads and decode workers; free the arenas and the read-ahead's spool."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._ahead is not None:
            self._ahead_thread.shutdown(wait=False, cancel_futures=True)
            self._ahead.close()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for arena in self._arenas:
            arena.close()
        self._arenas.clear()

    # ------------------------------------------------------------------ helpers

    def _read_ahead(self, epoch: int, step: int) -> None:
        """Start fetching the remote bytes of the batches after (epoch, step) not asked for yet."""
        if self._ahead is None:
            return
        for ahead_epoch, ahead_step in self._ahead.positions_after(epoch, step):
            clips, repeats = self.order.epoch(ahead_epoch)
            rows = slice(ahead_step * self.batch_size, (ahead_step + 1) * self.batch_size)
            clips, repeats = clips[rows], repeats[rows]
            params = self._view_params(clips, repeats, np.zeros(len(clips), dtype=np.int64), ahead_epoch)
            jobs = self.source.read_ahead_jobs(clips, params.frame_indices)
            if not jobs:
                continue
            folder = self._ahead.folder(ahead_epoch, ahead_step)
            if self._workers == 0:
                self._ahead_thread.submit(self._runner.read_ahead, folder, jobs)
                continue
            if self._pool is None:
                self._pool = self._new_pool()
            self._pool.read_ahead(folder, jobs)

    def _new_pool(self) -> DecodePool:
        return DecodePool(self._workers, timeout=self.config.sample_timeout, max_open=self.config.max_open_videos)

    def _view_params(self, clips: np.ndarray, repeats: np.ndarray, attempts: np.ndarray, epoch: int) -> ViewParams:
        source = self.source
        return sample_view_params(self.order.sampler_ids(clips, repeats, attempts), source.num_frames[clips],
                                  source.fps[clips], source.frame_hw[clips], seed=self.seed, epoch=epoch,
                                  config=self.config.views)

    def _mark_bad(self, clip: int, error: Exception) -> None:
        """Name the clip's file once, or the object whose reads failed (a tar shard, a store's shard) once for
        all the clips it holds."""
        if clip in self._reported:
            return
        name = self.source.name(clip)
        self._reported[clip] = name
        failed = failed_object(error)
        if failed is not None and failed != name:
            name = failed
        if name in self.stats.failed_files:
            return  # named already, for another of its clips (a shard's, or another clip of the same file)
        self.stats.failed_files[name] = str(error)
        warnings.warn(f"PairLoader: {name}: {about(name, error)}; its samples are replaced by others", RuntimeWarning,
                      stacklevel=3)

    def _load_rows(self, batch: HostBatch, rows: np.ndarray) -> np.ndarray:
        """Load the inputs of ``rows``; returns the rows that failed."""
        frames = batch.params.frame_indices
        results: Dict[int, object] = {}
        todo = []
        for row in rows:
            clip = int(batch.clips[row])
            if clip in self._given_up:
                results[int(row)] = self._given_up[clip]
            else:
                todo.append(int(row))
        if todo:
            read = self.source.read(batch.clips[todo], frames[todo], SampleDecoder(self, batch))
            results.update(zip(todo, read))
        failed = []
        for row in map(int, rows):
            result, clip = results[row], int(batch.clips[row])
            if isinstance(result, BaseException):
                if not isinstance(result, DATA_ERRORS):
                    raise result  # a bug, not bad data: let it show
                if isinstance(result, WorkerFailure) and clip not in self._given_up:
                    self._given_up[clip] = result
                    self.stats.timeouts += int(result.timed_out)
                self._mark_bad(clip, result)
                failed.append(row)
            else:
                batch.inputs[row] = result
        return np.array(failed, dtype=np.int64)

    def _decode(self, batch: HostBatch, jobs: Sequence[tuple], nbytes: Sequence[int], largest: int) -> List[object]:
        if self._ahead is not None and self._ahead.requested(batch.epoch, batch.step):
            folder = self._ahead.folder(batch.epoch, batch.step)  # its remote bytes are read ahead there
            jobs = [job[:4] + ({**job[4], "ahead": folder},) + job[5:] if len(job) > 4 else job for job in jobs]
        if self._workers == 0:
            return list(self._threads.map(self._run_here, jobs))
        if batch.arena is None:
            batch.arena = self._take_arena(largest)
        tasks = []
        for job, size in zip(jobs, nbytes):
            offset = batch.arena.reserve(int(size)) if size else None
            tasks.append((job, offset, int(size)))
        if self._pool is None:
            self._pool = self._new_pool()
        results = self._pool.run(tasks, batch.arena)
        self.stats.worker_restarts = self._pool.restarts
        return results

    def _run_here(self, job: tuple) -> object:
        try:
            return self._runner(job)
        except DATA_ERRORS as error:
            return error

    def _take_arena(self, largest: int) -> Arena:
        try:
            return self._free_arenas.get_nowait()
        except queue.Empty:
            # sized for the largest clips (a sparse file: pages are used only where frames land)
            arena = Arena(int(1.5 * self.batch_size * largest) + (64 << 10))
            if self._pinned and arena.pin():
                self._pinned_arenas += 1
            elif self._pinned:
                warnings.warn("PairLoader: CUDA would not page-lock the decode arena; frames are copied to "
                              "the GPU from pageable memory", RuntimeWarning, stacklevel=2)
            self._arenas.append(arena)
            return arena


class SampleDecoder:
    """What a source decodes through for one batch (``PairSource.read``'s ``decoder``).

    ``decode(jobs, nbytes, largest)`` runs ``sample_jobs`` jobs and returns one result per job: the
    arrays, or the error. ``nbytes``: the bytes each job's arrays take (0: unknown), reserved in the
    batch's shared memory; ``largest``: the largest such size in the source (sizes the arenas).
    """

    def __init__(self, host: HostPreparation, batch: HostBatch):
        self._host, self._batch = host, batch

    def decode(self, jobs: Sequence[tuple], nbytes: Sequence[int], largest: int) -> List[object]:
        return self._host._decode(self._batch, jobs, nbytes, largest)
