"""PairLoader: batches of two augmented views per clip, from a frame store or from video files.

The loader is five parts, each owning its state and used through public methods; this module
puts them together and keeps the position (epoch, step):

=================  =====================  ==================================================
part               file                   what it does
=================  =====================  ==================================================
order              ``sample_order.py``    ``SampleOrder``: which clip each sample shows
source             ``pair_sources.py``    ``PairSource``: clip metadata and ``read``
host preparation   ``host.py``            ``HostPreparation``: views drawn, samples read,
                                          bad ones replaced; decode workers, arenas
device stage       ``device_stage.py``    ``DeviceStage``: the interface; ``DaliStage``
                   ``dali_stage.py``      (the DALI graph of ``pipeline.py``) and ``TorchStage``
                   ``torch_stage.py``     (nvJPEG + batched torch ops, ``torch_augment.py``)
                   ``backends.py``        implement it; ``LoaderConfig.backend`` picks one
producer           ``producer.py``        ``Producer``: the threads that run host and stage
=================  =====================  ==================================================

``config.py`` holds the settings (``LoaderConfig``; ``DataConfig``, the ``data.*`` users set) and
the worker rule; ``stats.py`` the counters (``LoaderStats``) the parts add to.

A batch is a pure function of (seed, epoch, step, rank, world_size) and the data: which clip each
sample shows is ``SampleOrder`` (a corpus smaller than a batch repeats its clips with new frames
and views), and ``sample_view_params`` draws the two frames and both views from the sample's
sampler id, applied by the device stage. ``PairLoader(..., start_step=k)`` (or
``load_state_dict``) yields exactly batches k, k+1, ... of an uninterrupted run.

Three stages run at once, each on its own thread, so none waits on another in the steady state:

1. *host* ("vito-prepare"): the samples of batch k + 2 are read and decoded by ``decode_workers``
   processes (``DecodePool``: frames come back in shared memory), or by threads of this process
   with ``decode_workers=0``;
2. *device* ("vito-dali"): batch k + 1 is fed while the device stage runs the ``prefetch``
   batches it holds (DALI: ``schedule_run``/``outputs``; torch: work queued on its CUDA stream);
3. *you*: train on batch k. ``stats.wait_share`` is the share of your time spent waiting for data.

A sample whose data cannot be used (unreadable, truncated, a decoder that fails, a worker that
dies or gives no answer within ``sample_timeout`` s) is replaced by the clip drawn from
``SampleOrder.replacement(epoch, position, attempt)``; the file is named once in a warning and in
``stats``, and the epoch goes on. A file that timed out or killed a worker is not tried again by
this loader. Everything else is replaced exactly when its own two frames fail, so replacements too
are a pure function of the position and the data.
"""
from __future__ import annotations

import atexit
import dataclasses
import sys
import time
import warnings
import weakref
from typing import Dict, Iterator, List, Optional

import numpy as np

from vito_fast.data.config import LoaderConfig, usable_cores
from vito_fast.data.device_stage import DeviceStage
from vito_fast.data.host import HostPreparation
from vito_fast.data.producer import Producer
from vito_fast.data.stats import LoaderStats
from vito_fast.errors import DecoderFailure
from vito_fast.data.sample_order import SampleOrder

__all__ = ["LoaderConfig", "LoaderStats", "PairLoader", "usable_cores"]


class PairLoader:
    """Iterable of batches of view pairs; see the module docstring for the order and the stages.

    Each batch: ``view1``/``view2`` (B, 3, S, S) torch tensors on ``device``, dtype per config,
    channels_last, ImageNet-normalised (view1 = recipe 1: blur p=1; view2 = recipe 2: solarize
    p=0.2); ``sample_ids`` (B,) int64 (clip index in the manifest / store), ``frame_indices``
    (B, 2) int64, ``crops`` (B, 2, 4) int64 (top, left, height, width in decoded-frame pixels),
    ``labels`` (B,) int64 (-1 without a label), all NumPy. ``len()`` = steps per epoch. Iterating
    continues from the current position; once an epoch is exhausted the next ``iter()`` starts
    the next epoch (``set_epoch`` chooses one explicitly). ``close()`` (or ``with``) stops the workers.
    ``backend``: the ``BackendChoice`` (which device stage makes the views, and why);
    ``decoders.choice``: with ``video_decoder="auto"`` on videos, the ``ManifestChoice`` (None otherwise).
    """

    def __init__(self, source, batch_size: int, *, device: str = "gpu", seed: int, epoch: int = 0,
                 start_step: int = 0, rank: int = 0, world_size: int = 1, config: Optional[LoaderConfig] = None):
        self.config = LoaderConfig() if config is None else config
        if device not in ("gpu", "cpu"):
            raise ValueError(f"PairLoader: device must be 'gpu' or 'cpu', not {device!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"PairLoader: need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"PairLoader: batch_size must be an integer >= 1, got {batch_size!r}")
        device_id = self.config.device_id
        if device == "gpu":
            _require_cuda()
            if device_id is None:  # the caller's current device: the stage's thread would see device 0
                import torch

                device_id = torch.cuda.current_device()
        self.device, self.batch_size, self.seed = device, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        video_decoder, self.decoder_choice = self.config.video_decoder, None
        self._requested_decoder = video_decoder
        if video_decoder == "auto":
            video_decoder, self.decoder_choice = _choose_video_decoder(source, self.config, device, device_id,
                                                                       announce=rank == 0)
            # the stages make the decoder the config names: the chosen one, not "auto"
            self.config = dataclasses.replace(self.config, video_decoder=video_decoder)
        self._source_path, self._device_id = source, device_id
        self._open_source(video_decoder)
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
        self._active = None  # the generator of the current iteration
        self._producers: list = [None]  # the Producer of the current position (a slot shared with the finalizer)
        self._start_parts()
        _open_loaders.add(self)

    def _open_source(self, video_decoder: str) -> None:
        """``source`` (decoded by ``video_decoder``) and the ``backend`` that takes its inputs."""
        from vito_fast.data.backends import choose_backend
        from vito_fast.data.pair_sources import open_source

        import uuid

        # this loader's own quarantine of objects whose reads keep failing (remote.RemoteSettings)
        settings = dataclasses.replace(self.config.remote_settings(), quarantine_scope=uuid.uuid4().hex)
        host_codecs = tuple(getattr(self.decoder_choice, "host_codecs", ()))
        self.source = open_source(self._source_path, video_decoder, self.config.max_open_videos,
                                  _block_cache(self.config), settings, host_codecs)
        if self.source.input_kind == "requests":  # a decoder of the device stage: which codecs can it decode here?
            from vito_fast.decoders.video_decoders import make_decoder

            decoder = make_decoder(video_decoder, self.device)
            reasons = {codec: decoder.unavailable(codec) for codec in self.source.codecs if codec not in host_codecs}
            missing = {codec: reason for codec, reason in reasons.items() if reason}
            if missing and all(codec in missing or codec in host_codecs for codec in self.source.codecs):
                codec, reason = next(iter(missing.items()))  # nothing would be left for it to decode
                raise RuntimeError(f"PairLoader: video_decoder={video_decoder!r} cannot decode {codec} here: {reason}")
            if missing:  # its other codecs decode with PyAV on the host, in the same batches
                for codec, reason in missing.items():
                    warnings.warn(f"PairLoader: video_decoder={video_decoder!r} cannot decode {codec} here ({reason}); "
                                  f"its clips decode with PyAV on the host", RuntimeWarning, stacklevel=3)
                self.source.leave_to_host(tuple(missing))
        self.backend = choose_backend(self.config.backend, self.source.input_kind, self.device, self._device_id)

    def _start_parts(self) -> None:
        """The host preparation and device stage of the source, and the finalizer that frees them."""
        from vito_fast.data.backends import make_stage

        self.host = HostPreparation(self.source, self.order, self.config, seed=self.seed, pinned=self.device == "gpu",
                                    stats=self.stats)
        self.stage: DeviceStage = make_stage(self.backend, self.source.input_kind, self.batch_size, self.config,
                                             device=self.device, device_id=self._device_id, host=self.host,
                                             announce=self.rank == 0)
        # collected without close(): release without waiting (see Producer.close); open at exit: close()
        self._finalizer = weakref.finalize(self, _release, self._producers, self.host, self.stage, False)
        self._finalizer.atexit = False

    def close(self) -> None:
        """Stop the iteration, the decoding workers and threads; free what the device stage holds."""
        if self._active is not None:
            self._active.close()
            self._active = None
        if self._finalizer.detach() is not None:
            _release(self._producers, self.host, self.stage, True)

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

    def describe(self) -> str:
        """What this loader reads and how, in Markdown: the source and its clips, the data backend and why,
        the video decoder, and with ``video_decoder="auto"`` the choice's tables (what a run folder keeps)."""
        lines = ["# Data", "", f"- source: `{self._source_path}`: {self.num_clips:,} clips; {len(self)} batches of "
                               f"{self.batch_size} per epoch on rank {self.rank} of {self.world_size}",
                 f"- {self.backend.describe()}"]
        decoder = getattr(self.source, "decoder", None)
        if decoder is not None:  # videos
            host = getattr(self.source, "host_codecs", ())
            lines.append(f"- video decoder: {decoder}" + (f" (PyAV on the host for {', '.join(host)})" if host else "")
                         + f"; requested: {self._requested_decoder}")
        if self.decoder_choice is not None:
            lines += ["", f"## {self.decoder_choice.describe()}", "", self.decoder_choice.table()]
        return "\n".join(lines) + "\n"

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

    def __iter__(self) -> Iterator[Dict[str, object]]:
        if self._active is not None:  # one producer at a time: the device stage is not shareable
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
            producer = self._producers[0] = Producer(self.host, self.stage, epoch, first, steps_per_epoch=len(self),
                                                     stats=self.stats)
        started = None
        for step in range(first, len(self)):
            asked = time.perf_counter()
            started = asked if started is None else started
            item = producer.take()
            while isinstance(item, DecoderFailure) and self.source.input_kind in ("video", "requests"):
                producer.close()  # the device's video decoder failed where PyAV decodes: PyAV from here on
                self._fall_back_to_pyav(item, epoch, step)
                producer = self._producers[0] = Producer(self.host, self.stage, epoch, step,
                                                         steps_per_epoch=len(self), stats=self.stats)
                item = producer.take()
            now = time.perf_counter()
            self.stats.wait_seconds += now - asked
            self.stats.elapsed_seconds += now - started
            started = now
            if isinstance(item, BaseException):
                producer.close()
                raise item
            batch, replaced, output = item
            self.stage.hand_over(output)
            if (self.epoch, self.step) != (epoch, step):
                return  # set_epoch / load_state_dict during the loop: a new iter() follows them
            self.step = step + 1
            self.stats.samples += self.batch_size
            self.stats.replaced += replaced
            yield batch

    def _fall_back_to_pyav(self, failure: DecoderFailure, epoch: int, step: int) -> None:
        """Replace the source, host preparation and device stage with PyAV's ("frames") from (epoch, step) on:
        the same samples, frames and views (a pure function of the position), decoded by PyAV."""
        warnings.warn(f"PairLoader: {failure}; decoding with PyAV from epoch {epoch} step {step} on",
                      RuntimeWarning, stacklevel=3)
        self.stats.decoder_fallbacks += 1
        self._finalizer.detach()
        _release([None], self.host, self.stage, True)
        self._open_source("pyav")
        self._start_parts()


_open_loaders: "weakref.WeakSet[PairLoader]" = weakref.WeakSet()


@atexit.register
def _close_open_loaders() -> None:
    """At exit (the main thread, no lock held): close the loaders still open, waiting for their threads."""
    for loader in list(_open_loaders):
        loader.close()


def _release(producers: list, host: HostPreparation, stage: DeviceStage, wait: bool) -> None:
    """Free what a PairLoader holds outside Python's reach: on ``close()`` (``wait``), or when it is
    garbage-collected (the producer's thread frees the rest as it stops: the collector may run on a
    thread that holds a lock the producer needs to stop, so it must not wait for it)."""
    producer, producers[:] = producers[0], [None]

    def free() -> None:
        stage.close()
        host.close()

    if producer is None:
        free()
    else:
        producer.close(wait=wait, then=free)


def _choose_video_decoder(source, config: LoaderConfig, device: str, device_id: Optional[int], *, announce: bool):
    """(a decoder name, the ManifestChoice or None) for ``video_decoder="auto"``: the decoders this loader
    can run (DALI's where its backend can; the device stage's, nvc and torchcodec, where the torch
    backend can), tried on the first clips of each (codec, size class) of the manifest's first 10,000."""
    from itertools import islice
    from pathlib import Path

    from vito_fast.data.backends import dali_problem
    from vito_fast.decoders.choice import choose_decoders
    from vito_fast.data.manifest import iter_manifest
    from vito_fast.decoders.video_decoders import make_decoder

    from vito_fast.storage.remote import is_url

    if is_url(source):
        if not str(source).endswith(".jsonl"):
            return "pyav", None  # a frame store on object storage decodes JPEGs
    else:
        path = Path(source)
        if path.is_dir() or path.name == "index.json" or not path.is_file():
            return "pyav", None  # a frame store decodes JPEGs; a missing file is open_source's to report
    records = list(islice(iter_manifest(source), 10_000))
    codecs = {record.codec for record in records}
    candidates = ["pyav"]
    if config.backend != "torch" and dali_problem(device, device_id) is None:
        candidates.append("dali")
    if config.backend != "dali":  # decoders of the torch stage that load here (the trial checks the rest)
        candidates += [name for name in (("nvc", "torchcodec") if device == "gpu" else ("torchcodec",))
                       if all(make_decoder(name, device).unavailable(codec) is None for codec in codecs)]
    if len(candidates) == 1:
        return "pyav", None
    try:
        choice = choose_decoders(records, device=device, candidates=candidates)
    except (RuntimeError, ValueError) as error:  # no decoder verified on the first clips: PyAV, which replaces
        warnings.warn(f"PairLoader: {path}: {error}; decoding with PyAV", RuntimeWarning, stacklevel=3)
        return "pyav", None
    if announce:
        print(f"vito_fast: {choice.describe()}", file=sys.stderr)
    return choice.decoder, choice


def _block_cache(config: LoaderConfig):
    """The ``storage.remote.BlockCache`` of ``config.cache_dir`` (None without one)."""
    if config.cache_dir is None:
        return None
    from vito_fast.storage.remote import BlockCache

    return BlockCache(config.cache_dir, int(config.cache_gb * (1 << 30)))


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("PairLoader(device='gpu') needs a CUDA GPU and none is visible; "
                           "use device='cpu' (the same graph on the CPU: JPEG frame stores, videos PyAV decodes)")
