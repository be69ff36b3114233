"""The data settings: ``DataConfig`` (what users set), ``LoaderConfig`` (what ``PairLoader`` takes),
and the one rule for the loader's CPU resources.

``DataConfig`` is ``data.*`` of a pretraining config (``vito_fast.train.config``): where the data
is, the batch, the views and the loader's resources; ``DataConfig.loader_config`` turns it into
the ``LoaderConfig`` of this rank. Both say "automatic" the same way, with None.
``usable_cores()`` is the package's one core counter and ``decode_workers(requested)`` the one
rule for how many decoding processes a rank starts; ``cache_folder()`` is where the package keeps
what it measured or built for next time (the decoder choice, manifest indexes, FFmpeg's links).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from vito_fast.data.sampler import ViewConfig

__all__ = ["DataConfig", "LoaderConfig", "usable_cores", "decode_workers", "cache_folder", "VIDEO_DECODERS"]

VIDEO_DECODERS = ("pyav", "dali", "nvc", "torchcodec", "auto")  # video_decoders.DECODERS and "auto"


def cache_folder() -> str:
    """``$VITO_FAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/vito_fast``, else ``~/.cache/vito_fast``."""
    return os.environ.get("VITO_FAST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vito_fast")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_workers(requested: Optional[int]) -> int:
    """Decoding processes for this rank: ``requested`` when given (0: threads of this process), else
    this rank's share of the usable cores (torchrun's ``LOCAL_WORLD_SIZE`` ranks share the node) minus
    one for the rank itself, at least one."""
    if requested is not None:
        return requested
    ranks_on_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, usable_cores() // ranks_on_node - 1)


@dataclass(frozen=True)
class LoaderConfig:
    """Settings of a PairLoader. ``dtype``: "bfloat16", "float16" or "float32" (bfloat16 leaves DALI
    as float32 and is cast by torch on the output device). ``num_threads`` (None = usable cores):
    DALI's threads. ``decode_workers``: processes that read and decode samples (None = this rank's
    share of the usable cores - 1, at least 1, see ``decode_workers()``; 0 = threads of this process,
    no timeout). ``sample_timeout``: seconds a worker may take for one sample before it is restarted
    and the sample replaced. ``prefetch``: batches DALI holds (fed ahead of the one you get).
    ``video_decoder``: "pyav" (seek-to-keyframe decoding in the workers), "dali"
    (``fn.decoders.video`` on the file's bytes), "nvc" or "torchcodec" (decoded in the torch device
    stage: NVDEC frames stay on the GPU) or "auto" (the one that decodes the manifest's first samples
    as PyAV does, fastest; measured once per machine and cached: ``decoders.choice``). ``hw_decoder_load``: share of JPEGs sent to the
    hardware JPEG engines (A100/H100/H200). ``device_id``: None = the CUDA device current when the
    loader is made. ``max_replacements``: bad samples in a row before a position gives up.
    ``backend``: the device stage, "dali", "torch" (nvJPEG and batched PyTorch ops: no DALI needed)
    or "auto" (DALI when it works on this machine, else torch; see ``backends``). ``cache_dir``: a
    local folder for the blocks of a frame store on object storage (``storage.remote.BlockCache``, at most
    ``cache_gb``, least recently used out first), so later epochs read from disk; None: no cache.
    ``remote_timeout``: seconds a read of a frame store on object storage may go without a byte before
    it is tried again, ``remote_retries`` times, then its sample is replaced (None: the environment's
    ``VITO_FAST_REMOTE_TIMEOUT``/``_RETRIES``, else 30 s and 3; videos by URL take the environment's).
    ``read_ahead``: batches whose remote videos' bytes are fetched while earlier ones decode (into shared
    memory: ``read_ahead``; the bytes of that many batches are held); 0: each chunk of samples fetches
    its own as it starts."""

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
    backend: str = "auto"
    cache_dir: Optional[str] = None
    cache_gb: float = 50.0
    remote_timeout: Optional[float] = None
    remote_retries: Optional[int] = None
    read_ahead: int = 2

    def __post_init__(self) -> None:
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"LoaderConfig.dtype: must be 'bfloat16', 'float16' or 'float32', not {self.dtype!r}")
        if self.video_decoder not in VIDEO_DECODERS and ":" not in self.video_decoder:
            raise ValueError(f"LoaderConfig.video_decoder: must be one of {VIDEO_DECODERS} or 'package.module:Class', "
                             f"not {self.video_decoder!r}")
        if self.backend not in ("auto", "dali", "torch"):
            raise ValueError(f"LoaderConfig.backend: must be 'auto', 'dali' or 'torch', not {self.backend!r}")
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
        if not self.cache_gb > 0:
            raise ValueError(f"LoaderConfig.cache_gb: must be > 0, got {self.cache_gb!r}")
        if self.remote_timeout is not None and not self.remote_timeout > 0:
            raise ValueError(f"LoaderConfig.remote_timeout: must be None or > 0 seconds, got {self.remote_timeout!r}")
        if self.remote_retries is not None and (not isinstance(self.remote_retries, int) or self.remote_retries < 0):
            raise ValueError(f"LoaderConfig.remote_retries: must be None or an integer >= 0, got {self.remote_retries!r}")
        if not isinstance(self.read_ahead, int) or self.read_ahead < 0:
            raise ValueError(f"LoaderConfig.read_ahead: must be an integer >= 0 (batches), got {self.read_ahead!r}")
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"LoaderConfig.hw_decoder_load: must lie in [0, 1], got {self.hw_decoder_load!r}")

    def workers(self) -> int:
        """Decoding processes this config starts (``decode_workers()`` of its setting)."""
        return decode_workers(self.decode_workers)

    def remote_settings(self):
        """The ``storage.remote.RemoteSettings`` of ``remote_timeout`` and ``remote_retries`` (the environment's where None)."""
        import dataclasses

        from vito_fast.storage.remote import RemoteSettings

        settings = RemoteSettings.from_environment()
        return dataclasses.replace(settings, **{name: value for name, value in (
            ("timeout", self.remote_timeout), ("retries", self.remote_retries)) if value is not None})

    def threads(self) -> int:
        """DALI's threads, and the host's reading threads: ``num_threads`` or one per usable core."""
        return self.num_threads or usable_cores()


@dataclass
class DataConfig:
    """``data.*`` of a pretraining config; the loader's fields mean what they mean in ``LoaderConfig``
    and default to its values (None: automatic; older configs wrote 0 and -1 for that, read as None)."""

    source: str = "loader"                       # "loader" (PairLoader on `path`) or "synthetic"
    path: str = ""                               # manifest (.jsonl) or frame store; "" = built-in videos
    image_size: int = LoaderConfig.image_size
    batch_size: int = 256                        # per rank; the global batch is batch_size × world size
    seed: int = 0
    synthetic_samples: int = 0                   # synthetic source: distinct pairs (0 = fresh every step)
    steps_per_epoch: int = 0                     # synthetic source only (0: 1,000)
    num_threads: Optional[int] = LoaderConfig.num_threads        # DALI's threads (None: one per usable core)
    decode_workers: Optional[int] = LoaderConfig.decode_workers  # per rank (None: decode_workers(); 0: threads)
    sample_timeout: float = LoaderConfig.sample_timeout          # seconds before a sample is given up and replaced
    backend: str = LoaderConfig.backend                          # "auto" (DALI if it works, else torch), "dali", "torch"
    video_decoder: str = LoaderConfig.video_decoder              # "pyav", "dali", "nvc", "torchcodec", "auto"
    cache_dir: Optional[str] = LoaderConfig.cache_dir            # local cache of a remote frame store's blocks
    cache_gb: float = LoaderConfig.cache_gb                      # its size limit
    read_ahead: int = LoaderConfig.read_ahead                    # batches of remote videos fetched ahead (0: off)
    views: ViewConfig = field(default_factory=ViewConfig)

    def __post_init__(self) -> None:
        # older configs and checkpoints wrote "automatic" as num_threads 0 and decode_workers -1
        if self.num_threads == 0:
            self.num_threads = None
        if self.decode_workers == -1:
            self.decode_workers = None
        if self.source not in ("loader", "synthetic"):
            raise ValueError(f"data.source must be 'loader' or 'synthetic', got {self.source!r}")
        if self.backend not in ("auto", "dali", "torch"):
            raise ValueError(f"data.backend must be 'auto', 'dali' or 'torch', got {self.backend!r}")
        if self.video_decoder not in VIDEO_DECODERS and ":" not in self.video_decoder:
            raise ValueError(f"data.video_decoder must be one of {VIDEO_DECODERS}, got {self.video_decoder!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"data.num_threads: must be null (one per usable core) or >= 1, got {self.num_threads}")
        if not isinstance(self.read_ahead, int) or self.read_ahead < 0:
            raise ValueError(f"data.read_ahead: must be an integer >= 0 (batches), got {self.read_ahead!r}")
        if self.decode_workers is not None and self.decode_workers < 0:
            raise ValueError(f"data.decode_workers: must be null (this rank's share of the cores - 1), 0 (threads) "
                             f"or a number of processes, got {self.decode_workers}")

    def loader_config(self, *, dtype: str, device_id: Optional[int] = None) -> LoaderConfig:
        """The ``LoaderConfig`` of these settings for output ``dtype`` on CUDA device ``device_id``."""
        return LoaderConfig(image_size=self.image_size, views=self.views, dtype=dtype, num_threads=self.num_threads,
                            decode_workers=decode_workers(self.decode_workers),
                            sample_timeout=self.sample_timeout, device_id=device_id, backend=self.backend,
                            video_decoder=self.video_decoder, cache_dir=self.cache_dir, cache_gb=self.cache_gb,
                            read_ahead=self.read_ahead)
