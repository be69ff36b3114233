"""PairLoader: batches of two augmented views per clip, from a frame store or from video files.

A batch is a pure function of (seed, epoch, step, rank, world_size) and the data::

    permutation = default_rng((seed, epoch, tag)).permutation(num_clips)
    rank's part = permutation[rank * n : (rank + 1) * n],  n = num_clips // world_size
    step s      = clips part[s * B : (s + 1) * B]          (the last partial batch is dropped)
    views       = sample_view_params(clips, ...) applied by the DALI graph (pipeline.py)

so ``PairLoader(..., start_step=k)`` (or ``load_state_dict``) yields exactly batches k, k+1, ...
of an uninterrupted run. A clip whose data cannot be used is replaced by the clip drawn from
``default_rng((seed, epoch, position, attempt))``; its views use sampler id
``clip + attempt * num_clips``, so a replacement never duplicates another sample's views. A sample
is replaced exactly when its own two frames fail (to read, or to decode: a DALI failure is traced
to its samples by decoding them on the host), so replacements too are a pure function of the
position and the data. The file is named in a warning (once) and counted in ``stats``; the epoch
goes on.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import numpy as np

from vito_fast.data.augment import view_blur_window
from vito_fast.data.sampler import ViewConfig, ViewParams, sample_view_params
from vito_fast.errors import StoreError, VideoError

__all__ = ["LoaderConfig", "LoaderStats", "PairLoader"]

_PERMUTATION_TAG, _REPLACEMENT_TAG = 0x5045524D, 0x5245504C  # "PERM", "REPL"
_DATA_ERRORS = (StoreError, VideoError, OSError)


@dataclass(frozen=True)
class LoaderConfig:
    """Settings of a PairLoader. ``dtype``: "bfloat16", "float16" or "float32" (bfloat16 leaves DALI
    as float32 and is cast by torch on the output device). ``num_threads`` (None = CPU count) serves
    DALI and the host decoding pool; ``prefetch``: batches in flight ahead of the caller (the host
    prepares one while DALI, on its own thread, makes the next).
    ``video_decoder``: "pyav" (host seek-to-keyframe decoding, the fastest measured here) or "dali"
    (``fn.decoders.video`` on the file's bytes). ``hw_decoder_load``: share of JPEGs sent to the
    hardware JPEG engines (A100/H100/H200) by the mixed decoder. ``device_id``: None = the current
    CUDA device. ``max_replacements``: bad samples in a row before a position gives up."""

    image_size: int = 224
    dtype: str = "bfloat16"
    views: ViewConfig = field(default_factory=ViewConfig)
    num_threads: Optional[int] = None
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
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"LoaderConfig.hw_decoder_load: must lie in [0, 1], got {self.hw_decoder_load!r}")


@dataclass
class LoaderStats:
    """samples: served so far; replaced: samples served from a replacement clip; failed_files:
    file (or shard) name -> the first error seen for it."""

    samples: int = 0
    replaced: int = 0
    failed_files: Dict[str, str] = field(default_factory=dict)


@dataclass
class _HostBatch:
    """What the host prepared for one step: the clips, their view parameters and the graph inputs."""

    step: int
    clips: np.ndarray
    attempts: np.ndarray
    params: ViewParams
    inputs: List[Dict[str, np.ndarray]]


class PairLoader:
    """Iterable of batches of view pairs; see the module docstring for the order.

    Each batch: ``view1``/``view2`` (B, 3, S, S) torch tensors on ``device``, dtype per config,
    channels_last, ImageNet-normalised (view1 = recipe 1: blur p=1; view2 = recipe 2: solarize
    p=0.2); ``sample_ids`` (B,) int64 (clip index in the manifest / store), ``frame_indices``
    (B, 2) int64, ``crops`` (B, 2, 4) int64 (top, left, height, width in decoded-frame pixels),
    ``labels`` (B,) int64 (-1 without a label), all NumPy. ``len()`` = steps per epoch. Iterating
    continues from the current position; once an epoch is exhausted the next ``iter()`` starts
    the next epoch (``set_epoch`` chooses one explicitly).
    """

    def __init__(self, source, batch_size: int, *, device: str = "gpu", seed: int, epoch: int = 0,
                 start_step: int = 0, rank: int = 0, world_size: int = 1, config: Optional[LoaderConfig] = None):
        from vito_fast.data.pair_sources import open_source

        self.config = LoaderConfig() if config is None else config
        if device not in ("gpu", "cpu"):
            raise ValueError(f"PairLoader: device must be 'gpu' or 'cpu', not {device!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"PairLoader: need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"PairLoader: batch_size must be an integer >= 1, got {batch_size!r}")
        from vito_fast.data.pipeline import import_dali

        import_dali()  # a missing DALI shows now, with how to install it, not at the first batch
        if device == "gpu":
            _require_cuda()
        self.device, self.batch_size, self.seed = device, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.source = open_source(source, self.config.video_decoder, self.config.max_open_videos)
        self.num_clips = len(self.source)
        self.per_rank = self.num_clips // world_size
        if self.per_rank // batch_size == 0:
            raise ValueError(f"PairLoader: {source}: {self.num_clips} clips over {world_size} rank(s) "
                             f"do not fill one batch of {batch_size}")
        self.epoch, self.step = int(epoch), int(start_step)
        if not 0 <= self.step <= len(self):
            raise ValueError(f"PairLoader: start_step {start_step} outside [0, {len(self)}]")
        self.stats = LoaderStats()
        self._reported: Dict[int, str] = {}
        self._threads = self.config.num_threads or os.cpu_count() or 1
        self._decoders = ThreadPoolExecutor(self._threads, thread_name_prefix="vito-decode")
        self._pipeline = None
        self._stream = None  # CUDA stream of the output copies (device="gpu")
        self._active = None  # the generator of the current iteration
        self._epoch_clips = None
        self._max_window = view_blur_window(self.config.image_size, self.config.blur_kernel_at_224)

    def close(self) -> None:
        """Stop the iteration and the decoding threads, drop the DALI pipeline (also on ``with`` exit)."""
        if self._active is not None:
            self._active.close()
        self._decoders.shutdown(wait=True)
        self._pipeline = None

    def __enter__(self) -> "PairLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def classes(self) -> List[str]:
        """Label names; ``labels`` in a batch index this list."""
        return self.source.classes

    def __len__(self) -> int:
        return self.per_rank // self.batch_size

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

    # ------------------------------------------------------------------------- sample order

    def epoch_clips(self, epoch: int) -> np.ndarray:
        """(len(self) * batch_size,) clip ids this rank visits in ``epoch``, in order (read-only)."""
        cached = self._epoch_clips
        if cached is not None and cached[0] == epoch:
            return cached[1]
        permutation = np.random.default_rng((self.seed, epoch, _PERMUTATION_TAG)).permutation(self.num_clips)
        part = permutation[self.rank * self.per_rank: (self.rank + 1) * self.per_rank]
        clips = part[: len(self) * self.batch_size].astype(np.int64)
        clips.flags.writeable = False
        self._epoch_clips = (epoch, clips)  # one tuple: safe to swap under the prefetch thread
        return clips

    def _replacement(self, epoch: int, position: int, attempt: int) -> int:
        generator = np.random.default_rng((self.seed, epoch, position, attempt, _REPLACEMENT_TAG))
        return int(generator.integers(self.num_clips))

    def _params(self, clips: np.ndarray, attempts: np.ndarray, epoch: int) -> ViewParams:
        source = self.source
        return sample_view_params(clips + attempts * self.num_clips, source.num_frames[clips], source.fps[clips],
                                  source.frame_hw[clips], seed=self.seed, epoch=epoch, config=self.config.views)

    def _mark_bad(self, clip: int, error: Exception) -> None:
        if clip in self._reported:
            return
        name = self.source.name(clip)
        self._reported[clip] = name
        self.stats.failed_files.setdefault(name, str(error))
        warnings.warn(f"PairLoader: {name}: {error}; its samples are replaced by others", RuntimeWarning, stacklevel=3)

    def _load(self, clip: int, frames) -> Optional[Dict[str, np.ndarray]]:
        # Always tried, even for a file that failed before: a truncated video or a shard with one bad
        # JPEG still serves its good frames, and whether a sample is replaced must not depend on
        # what this loader saw earlier (a resumed run has seen nothing).
        try:
            return self.source.load(clip, frames)
        except _DATA_ERRORS as error:
            self._mark_bad(clip, error)
            return None

    def _fill(self, batch: _HostBatch, epoch: int, rows: np.ndarray) -> None:
        """Replace the samples at ``rows`` (by the next attempt) until each one loads."""
        first = batch.step * self.batch_size + self.rank * self.per_rank
        while rows.size:
            for row in rows:
                batch.attempts[row] += 1
                if batch.attempts[row] > self.config.max_replacements:
                    raise RuntimeError(f"PairLoader: {self.config.max_replacements} replacements in a row failed at "
                                       f"epoch {epoch} step {batch.step}; is most of the data unreadable?")
                batch.clips[row] = self._replacement(epoch, first + int(row), int(batch.attempts[row]))
            fresh = self._params(batch.clips[rows], batch.attempts[rows], epoch)
            for name, values in fresh.to_dict().items():
                getattr(batch.params, name)[rows] = values
            rows = self._load_rows(batch, rows)

    def _load_rows(self, batch: _HostBatch, rows: np.ndarray) -> np.ndarray:
        """Load the inputs of ``rows`` (in parallel); returns the rows that failed."""
        frames = batch.params.frame_indices
        load = lambda row: self._load(int(batch.clips[row]), frames[row])  # noqa: E731
        # host decoding (PyAV) runs on the thread pool; slicing a memory-mapped store does not need it
        loaded = list(self._decoders.map(load, rows) if self.source.decodes_on_host else map(load, rows))
        for row, inputs in zip(rows, loaded):
            batch.inputs[row] = inputs
        return np.array([row for row, inputs in zip(rows, loaded) if inputs is None], dtype=np.int64)

    def _prepare(self, epoch: int, step: int) -> _HostBatch:
        clips = self.epoch_clips(epoch)[step * self.batch_size: (step + 1) * self.batch_size].copy()
        attempts = np.zeros(self.batch_size, dtype=np.int64)
        batch = _HostBatch(step, clips, attempts, self._params(clips, attempts, epoch), [None] * self.batch_size)
        self._fill(batch, epoch, self._load_rows(batch, np.arange(self.batch_size)))
        return batch

    # ------------------------------------------------------------------------- running the graph

    def _build(self):
        from vito_fast.data.pipeline import build_pair_pipeline

        config = self.config
        device_id = config.device_id
        if self.device == "gpu" and device_id is None:
            import torch

            device_id = torch.cuda.current_device()
        self._device_id = device_id
        output_dtype = "float16" if config.dtype == "float16" else "float32"
        return build_pair_pipeline(self.source.input_kind, batch_size=self.batch_size, image_size=config.image_size,
                                   device=self.device, output_dtype=output_dtype, num_threads=self._threads,
                                   device_id=device_id, hw_decoder_load=config.hw_decoder_load)

    def _run(self, batch: _HostBatch, epoch: int):
        from vito_fast.data.pipeline import feed_pipeline, view_arguments

        if self._pipeline is None:
            self._pipeline = self._build()
        while True:
            inputs = {name: [sample[name] for sample in batch.inputs] for name in batch.inputs[0]}
            for view in (0, 1):
                inputs.update(view_arguments(batch.params, view, self._max_window))
            feed_pipeline(self._pipeline, inputs)
            try:
                return self._pipeline.run()
            except Exception as error:  # a decoder in the graph failed: find the sample(s) on the host
                bad = self._find_bad(batch)
                if bad.size == 0:
                    raise
                self._fill(batch, epoch, bad)

    def _find_bad(self, batch: _HostBatch) -> np.ndarray:
        def check(row):
            try:
                self.source.verify(int(batch.clips[row]), batch.params.frame_indices[row])
                return None
            except _DATA_ERRORS as error:
                self._mark_bad(int(batch.clips[row]), error)
                return row

        rows = self._decoders.map(check, range(self.batch_size))
        return np.array([row for row in rows if row is not None], dtype=np.int64)

    def _to_torch(self, output):
        import torch

        size = self.config.image_size
        dali_dtype = torch.float16 if self.config.dtype == "float16" else torch.float32
        if self.device == "cpu":
            views = torch.from_numpy(np.array(output.as_tensor())).permute(0, 3, 1, 2)
            return views.to(torch.bfloat16) if self.config.dtype == "bfloat16" else views
        from nvidia.dali.plugin.pytorch import feed_ndarray

        device = torch.device("cuda", self._device_id)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        with torch.cuda.stream(self._stream):  # allocated and written on the loader's own stream
            hwc = torch.empty((self.batch_size, size, size, 3), dtype=dali_dtype, device=device)
            feed_ndarray(output.as_tensor(), hwc, cuda_stream=self._stream)
            views = hwc.permute(0, 3, 1, 2)  # NHWC storage seen as NCHW: channels_last without a copy
            return views.to(torch.bfloat16) if self.config.dtype == "bfloat16" else views

    def _produce(self, prepared, epoch: int):
        """(batch, samples replaced, CUDA event or None) of a host batch: runs on the DALI thread."""
        batch = prepared.result()
        view1, view2 = self._run(batch, epoch)
        out = {"view1": self._to_torch(view1), "view2": self._to_torch(view2),
               "sample_ids": batch.clips.copy(), "frame_indices": batch.params.frame_indices.copy(),
               "crops": batch.params.crop_boxes.copy(), "labels": self.source.labels[batch.clips]}
        ready = None
        if self.device == "gpu":
            ready = self._stream.record_event()
        return out, int((batch.attempts > 0).sum()), ready

    def _hand_over(self, batch: Dict[str, object], ready) -> None:
        """Make the views safe to use on the consumer's current CUDA stream."""
        import torch

        current = torch.cuda.current_stream(torch.device("cuda", self._device_id))
        current.wait_event(ready)
        for name in ("view1", "view2"):
            batch[name].record_stream(current)

    def __iter__(self) -> Iterator[Dict[str, object]]:
        if self._active is not None:  # one producer at a time: the DALI pipeline is not shareable
            self._active.close()
        if self.step >= len(self):
            self.epoch, self.step = self.epoch + 1, 0
        self._active = self._generate(self.epoch, self.step)
        return self._active

    def _generate(self, epoch: int, first: int) -> Iterator[Dict[str, object]]:
        # Two threads, each in order: the host prepares batch k + 2 while DALI runs k + 1 and the
        # caller trains on k. The DALI pipeline is only ever built and run on the "vito-dali" thread.
        preparer = ThreadPoolExecutor(1, thread_name_prefix="vito-prepare")
        runner = ThreadPoolExecutor(1, thread_name_prefix="vito-dali")

        def submit(step):
            return runner.submit(self._produce, preparer.submit(self._prepare, epoch, step), epoch)

        try:
            pending = [submit(step) for step in range(first, min(len(self), first + self.config.prefetch))]
            for step in range(first, len(self)):
                batch, replaced, ready = pending.pop(0).result()
                if step + self.config.prefetch < len(self):
                    pending.append(submit(step + self.config.prefetch))
                if ready is not None:
                    self._hand_over(batch, ready)
                if (self.epoch, self.step) != (epoch, step):
                    return  # set_epoch / load_state_dict during the loop: a new iter() follows them
                self.step = step + 1
                self.stats.samples += self.batch_size
                self.stats.replaced += replaced
                yield batch
        finally:
            preparer.shutdown(wait=True, cancel_futures=True)
            runner.shutdown(wait=True, cancel_futures=True)


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("PairLoader(device='gpu') needs a CUDA GPU and none is visible; "
                           "use device='cpu' (DALI's CPU decoders: JPEG frame stores, VP8/VP9/MJPEG videos)")
