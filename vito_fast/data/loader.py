"""PairLoader: batches of two augmented views per clip, from a frame store or from video files.

A batch is a pure function of (seed, epoch, step, rank, world_size) and the data: which clip each
sample shows is ``SampleOrder`` (a corpus smaller than a batch repeats its clips with new frames
and views), and ``sample_view_params`` draws the two frames and both views from the sample's
sampler id, applied by the DALI graph (pipeline.py). ``PairLoader(..., start_step=k)`` (or
``load_state_dict``) yields exactly batches k, k+1, ... of an uninterrupted run.

Three stages run at once, each on its own thread, so none waits on another in the steady state:

1. *host* ("vito-prepare"): the samples of batch k + 2 are read and decoded by ``decode_workers``
   processes (``DecodePool``: frames come back in shared memory), or by threads of this process
   with ``decode_workers=0``;
2. *DALI* ("vito-dali"): batch k + 1 is fed while DALI runs the ``prefetch`` batches it holds
   (``schedule_run``/``outputs``: feeding overlaps running);
3. *you*: train on batch k. ``stats.wait_share`` is the share of your time spent waiting for data.

A sample whose data cannot be used (unreadable, truncated, a decoder that fails, a worker that
dies or gives no answer within ``sample_timeout`` s) is replaced by the clip drawn from
``SampleOrder.replacement(epoch, position, attempt)``; the file is named once in a warning and in
``stats``, and the epoch goes on. A file that timed out or killed a worker is not tried again by
this loader. Everything else is replaced exactly when its own two frames fail, so replacements too
are a pure function of the position and the data.
"""
from __future__ import annotations

import os
import queue
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import numpy as np

from vito_fast.data.augment import view_blur_window
from vito_fast.data.dali_stage import DATA_ERRORS, DaliStage, HostBatch
from vito_fast.data.decode_pool import Arena, DecodePool, WorkerFailure
from vito_fast.data.producer import Producer
from vito_fast.data.sample_order import SampleOrder
from vito_fast.data.sampler import ViewConfig, ViewParams, sample_view_params

__all__ = ["LoaderConfig", "LoaderStats", "PairLoader", "usable_cores"]



def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LoaderConfig:
    """Settings of a PairLoader. ``dtype``: "bfloat16", "float16" or "float32" (bfloat16 leaves DALI
    as float32 and is cast by torch on the output device). ``num_threads`` (None = usable cores):
    DALI's threads. ``decode_workers``: processes that read and decode samples (None = usable
    cores - 1, at least 1; 0 = threads of this process, no timeout). ``sample_timeout``: seconds a
    worker may take for one sample before it is restarted and the sample replaced. ``prefetch``:
    batches DALI holds (fed ahead of the one you get). ``video_decoder``: "pyav" (seek-to-keyframe
    decoding in the workers) or "dali" (``fn.decoders.video`` on the file's bytes).
    ``hw_decoder_load``: share of JPEGs sent to the hardware JPEG engines (A100/H100/H200).
    ``device_id``: None = the CUDA device current when the loader is made. ``max_replacements``:
    bad samples in a row before a position gives up."""

    image_size: int = 224
    dtype: str = "bfloat16"
    views: ViewConfig = field(default_factory=ViewConfig)
    num_threads: Optional[int] = None
    decode_workers: Optional[int] = None
    sample_timeout: float = 30.0
    prefetch: int = 2
    video_decoder: str = "pyav"
    hw_decoder_load: float = 0.9
    blur_kernel_at_224: int = 23
    device_id: Optional[int] = None
    max_open_videos: int = 16
    max_replacements: int = 16

    def __post_init__(self) -> None:
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"LoaderConfig.dtype: must be 'bfloat16', 'float16' or 'float32', not {self.dtype!r}")
        if self.video_decoder not in ("pyav", "dali"):
            raise ValueError(f"LoaderConfig.video_decoder: must be 'pyav' or 'dali', not {self.video_decoder!r}")
        if not isinstance(self.views, ViewConfig):
            raise ValueError(f"LoaderConfig.views: must be a ViewConfig, got {type(self.views).__name__}")
        for name in ("image_size", "prefetch", "blur_kernel_at_224", "max_open_videos", "max_replacements"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LoaderConfig.{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ValueError(f"LoaderConfig.num_threads: must be None or an integer >= 1, got {self.num_threads!r}")
        if self.decode_workers is not None and (not isinstance(self.decode_workers, int) or self.decode_workers < 0):
            raise ValueError(f"LoaderConfig.decode_workers: must be None or an integer >= 0, got {self.decode_workers!r}")
        if not self.sample_timeout > 0:
            raise ValueError(f"LoaderConfig.sample_timeout: must be > 0 seconds, got {self.sample_timeout!r}")
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"LoaderConfig.hw_decoder_load: must lie in [0, 1], got {self.hw_decoder_load!r}")

    def workers(self) -> int:
        return max(1, usable_cores() - 1) if self.decode_workers is None else self.decode_workers


@dataclass
class LoaderStats:
    """samples: served so far; replaced: samples served from a replacement clip; failed_files: file
    (or shard) name -> the first error seen for it; timeouts: samples given up after
    ``sample_timeout``; worker_restarts: decode workers replaced (hung or died). wait_seconds: time
    spent in ``next()`` waiting for a batch, out of elapsed_seconds since the first request;
    host_wait_seconds: time DALI's thread waited for the host to finish a batch."""

    samples: int = 0
    replaced: int = 0
    failed_files: Dict[str, str] = field(default_factory=dict)
    timeouts: int = 0
    worker_restarts: int = 0
    wait_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    host_wait_seconds: float = 0.0

    @property
    def wait_share(self) -> float:
        """Share of the consumer's time spent waiting for data."""
        return self.wait_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


class PairLoader(DaliStage):
    """Iterable of batches of view pairs; see the module docstring for the order and the stages.

    Each batch: ``view1``/``view2`` (B, 3, S, S) torch tensors on ``device``, dtype per config,
    channels_last, ImageNet-normalised (view1 = recipe 1: blur p=1; view2 = recipe 2: solarize
    p=0.2); ``sample_ids`` (B,) int64 (clip index in the manifest / store), ``frame_indices``
    (B, 2) int64, ``crops`` (B, 2, 4) int64 (top, left, height, width in decoded-frame pixels),
    ``labels`` (B,) int64 (-1 without a label), all NumPy. ``len()`` = steps per epoch. Iterating
    continues from the current position; once an epoch is exhausted the next ``iter()`` starts
    the next epoch (``set_epoch`` chooses one explicitly). ``close()`` (or ``with``) stops the workers.
    """

    def __init__(self, source, batch_size: int, *, device: str = "gpu", seed: int, epoch: int = 0,
                 start_step: int = 0, rank: int = 0, world_size: int = 1, config: Optional[LoaderConfig] = None):
        from vito_fast.data.pair_sources import open_source
        from vito_fast.data.pipeline import import_dali

        self.config = LoaderConfig() if config is None else config
        if device not in ("gpu", "cpu"):
            raise ValueError(f"PairLoader: device must be 'gpu' or 'cpu', not {device!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"PairLoader: need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"PairLoader: batch_size must be an integer >= 1, got {batch_size!r}")
        import_dali()  # a missing DALI shows now, with how to install it, not at the first batch
        self._device_id = self.config.device_id
        if device == "gpu":
            _require_cuda()
            if self._device_id is None:  # the caller's current device: DALI's thread would see device 0
                import torch

                self._device_id = torch.cuda.current_device()
        self.device, self.batch_size, self.seed = device, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.source = open_source(source, self.config.video_decoder, self.config.max_open_videos)
        self.num_clips = len(self.source)
        if self.num_clips == 0:
            raise ValueError(f"PairLoader: {source}: holds no clips")
        self.order = SampleOrder(self.num_clips, batch_size, seed=self.seed, rank=rank, world_size=world_size)
        if self.order.repeats_per_batch > 1:
            warnings.warn(f"PairLoader: {source}: {self.num_clips} clips over {world_size} rank(s) do not fill a "
                          f"batch of {batch_size} per rank; each clip appears about "
                          f"{self.order.repeats_per_batch:.1f} times per batch, with other frames and views",
                          RuntimeWarning, stacklevel=2)
        self.epoch, self.step = int(epoch), int(start_step)
        if not 0 <= self.step <= len(self):
            raise ValueError(f"PairLoader: start_step {start_step} outside [0, {len(self)}]")
        self.stats = LoaderStats()
        self._reported: Dict[int, str] = {}
        self._given_up: Dict[int, Exception] = {}  # clips that hung or killed a worker
        self._threads = self.config.num_threads or usable_cores()
        self._host_threads = ThreadPoolExecutor(self._threads, thread_name_prefix="vito-read")
        self._use_pool = self.config.workers() > 0 and hasattr(self.source, "job")
        self._pools: List[Optional[DecodePool]] = [None]  # the decode pool, started on first use (a slot the
        # finalizer shares, like _producers)
        self._largest_sample: Optional[int] = None  # bytes of the largest sample: sizes the arenas
        self._arenas: List[Arena] = []  # every arena made (closed with the loader)
        self._free_arenas: "queue.SimpleQueue[Arena]" = queue.SimpleQueue()
        self._pipeline = None
        self._scheduled = 0  # iterations scheduled on the pipeline and not taken
        self._fed_unscheduled = 0  # batches fed to a new pipeline before its first (prefetching) run
        self._needs_prefetch = True
        self._stream = None  # CUDA stream of the output copies (device="gpu")
        self._copied = None  # CUDA event: the last output copy finished reading DALI's buffers
        self._active = None  # the generator of the current iteration
        self._max_window = view_blur_window(self.config.image_size, self.config.blur_kernel_at_224)
        self._producers: list = [None]  # the Producer of the current position (a slot shared with the finalizer)
        self._finalizer = weakref.finalize(self, _release, self._host_threads, self._producers, self._pools,
                                           self._arenas)

    def close(self) -> None:
        """Stop the iteration, the decoding workers and threads; drop the DALI pipeline."""
        if self._active is not None:
            self._active.close()
            self._active = None
        if self._producers[0] is not None:
            self._producers[0].close()
            self._producers[0] = None
        self._pipeline = None
        if self._pools[0] is not None:
            self._pools[0].close()
            self._pools[0] = None
        self._finalizer()

    def __enter__(self) -> "PairLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def classes(self) -> List[str]:
        """Label names; ``labels`` in a batch index this list."""
        return self.source.classes

    def __len__(self) -> int:
        return self.order.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.step = int(epoch), 0

    def state_dict(self) -> Dict[str, int]:
        """The position: the next batch to yield is ``step`` of ``epoch``."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        for key in ("seed", "world_size", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"PairLoader.load_state_dict: {key} {state[key]} differs from this loader's "
                                 f"{getattr(self, key)}; the order would not continue")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def epoch_clips(self, epoch: int) -> np.ndarray:
        """(len(self) * batch_size,) clip ids this rank visits in ``epoch``, in order (read-only)."""
        return self.order.epoch(epoch)[0]

    # ------------------------------------------------------------------------- host: reading samples

    def _params(self, clips: np.ndarray, repeats: np.ndarray, attempts: np.ndarray, epoch: int) -> ViewParams:
        source = self.source
        return sample_view_params(self.order.sampler_ids(clips, repeats, attempts), source.num_frames[clips],
                                  source.fps[clips], source.frame_hw[clips], seed=self.seed, epoch=epoch,
                                  config=self.config.views)

    def _mark_bad(self, clip: int, error: Exception) -> None:
        if clip in self._reported:
            return
        name = self.source.name(clip)
        self._reported[clip] = name
        self.stats.failed_files.setdefault(name, str(error))
        warnings.warn(f"PairLoader: {name}: {error}; its samples are replaced by others", RuntimeWarning, stacklevel=3)

    @property
    def _pool(self) -> Optional[DecodePool]:
        """The decode pool when it has started (tests and benches read its workers)."""
        return self._pools[0]

    def _decode_pool(self) -> DecodePool:
        if self._pools[0] is None:
            self._pools[0] = DecodePool(self.config.workers(), timeout=self.config.sample_timeout,
                                        max_open=self.config.max_open_videos)
        return self._pools[0]

    def _take_arena(self) -> Optional[Arena]:
        if not self._use_pool or not hasattr(self.source, "sample_nbytes"):
            return None
        try:
            return self._free_arenas.get_nowait()
        except queue.Empty:
            # sized for the largest clips (a sparse file: pages are used only where frames land)
            if self._largest_sample is None:
                self._largest_sample = int(self.source.sample_nbytes(np.arange(self.num_clips)).max())
            arena = Arena(int(1.5 * self.batch_size * self._largest_sample) + (64 << 10))
            if self.device == "gpu" and not arena.pin():
                warnings.warn("PairLoader: CUDA would not page-lock the decode arena; frames are copied to "
                              "the GPU from pageable memory", RuntimeWarning, stacklevel=2)
            self._arenas.append(arena)
            return arena

    def _give_back_arena(self, batch: HostBatch) -> None:
        if batch.arena is not None and not batch.padding:
            arena, batch.arena, batch.inputs = batch.arena, None, []
            arena.reset()
            self._free_arenas.put(arena)

    def _read_in_process(self, clip: int, frames) -> object:
        try:
            return self.source.load(clip, frames)
        except DATA_ERRORS as error:
            return error

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
        if self._use_pool:
            sizes = (self.source.sample_nbytes(batch.clips[todo]) if batch.arena is not None
                     else np.zeros(len(todo), dtype=np.int64))
            tasks = []
            for row, size in zip(todo, sizes):
                offset = batch.arena.reserve(int(size)) if size else None
                tasks.append((self.source.job(int(batch.clips[row]), frames[row]), offset, int(size)))
            results.update(zip(todo, self._decode_pool().run(tasks, batch.arena)))
            self.stats.worker_restarts = self._pools[0].restarts
        elif hasattr(self.source, "load_many"):  # a frame store: parallel preads, no decoding
            results.update(zip(todo, self.source.load_many(batch.clips[todo], frames[todo])))
        else:
            loaded = self._host_threads.map(lambda row: self._read_in_process(int(batch.clips[row]), frames[row]), todo)
            results.update(zip(todo, loaded))
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

    def _fill(self, batch: HostBatch, rows: np.ndarray) -> None:
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
            fresh = self._params(batch.clips[rows], batch.repeats[rows], batch.attempts[rows], epoch)
            for name, values in fresh.to_dict().items():
                getattr(batch.params, name)[rows] = values
            rows = self._load_rows(batch, rows)

    def _prepare(self, epoch: int, step: int) -> HostBatch:
        clips, repeats = self.order.epoch(epoch)
        rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
        clips, repeats = clips[rows].copy(), repeats[rows].copy()
        attempts = np.zeros(self.batch_size, dtype=np.int64)
        batch = HostBatch(epoch, step, clips, repeats, attempts, self._params(clips, repeats, attempts, epoch),
                           [None] * self.batch_size, self._take_arena())
        self._fill(batch, self._load_rows(batch, np.arange(self.batch_size)))
        return batch

    def __iter__(self) -> Iterator[Dict[str, object]]:
        if self._active is not None:  # one producer at a time: the DALI pipeline is not shareable
            self._active.close()
        if self.step >= len(self):
            self.epoch, self.step = self.epoch + 1, 0
        self._active = self._generate(self.epoch, self.step)
        return self._active

    def _generate(self, epoch: int, first: int) -> Iterator[Dict[str, object]]:
        # The producer runs on across epochs: when the next iteration asks for the position it is at
        # (the next epoch's step 0, or the step after an iteration that stopped early) it goes on
        # without a gap; any other position (set_epoch, load_state_dict) starts a new one there.
        producer = self._producers[0]
        if producer is None or not producer.serves(epoch, first):
            if producer is not None:
                producer.close()
            producer = self._producers[0] = Producer(self, epoch, first)
        started = None
        for step in range(first, len(self)):
            asked = time.perf_counter()
            started = asked if started is None else started
            item = producer.take()
            now = time.perf_counter()
            self.stats.wait_seconds += now - asked
            self.stats.elapsed_seconds += now - started
            started = now
            if isinstance(item, BaseException):
                producer.close()
                raise item
            batch, replaced, ready = item
            if ready is not None:
                self._hand_over(batch, ready)
            if (self.epoch, self.step) != (epoch, step):
                return  # set_epoch / load_state_dict during the loop: a new iter() follows them
            self.step = step + 1
            self.stats.samples += self.batch_size
            self.stats.replaced += replaced
            yield batch


def _release(threads: ThreadPoolExecutor, producers: list, pools: list, arenas: List[Arena]) -> None:
    """Free what a PairLoader holds outside Python's reach (also when it is garbage-collected)."""
    for producer in producers:
        if producer is not None:
            producer.close()
    producers[:] = [None]
    threads.shutdown(wait=False, cancel_futures=True)
    for pool in pools:
        if pool is not None:
            pool.close()
    for arena in arenas:
        arena.close()
    arenas.clear()


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("PairLoader(device='gpu') needs a CUDA GPU and none is visible; "
                           "use device='cpu' (DALI's CPU decoders: JPEG frame stores, VP8/VP9/MJPEG videos)")
