"""Data: from a manifest or frame store to batches of augmented view pairs.

Holds the view sampler (``sampler``, C++ with a NumPy reference), the manifest and frame-store
formats and readers, the video frame reader, and ``PairLoader`` in its parts (``loader``'s
docstring names the file of each: order, source, host preparation, device stage, producer), with
its settings in ``config`` and on-device synthetic pairs in ``synthetic_pairs``. May import vito_fast.errors, vito_fast._cpp and the other lower layers; never
prepare, curate, synthetic, train, eval, demo or cli.
"""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        # view sampler (C++ with a NumPy reference)
        "ViewConfig": ".sampler",
        "ViewParams": ".sampler",
        "sample_view_params": ".sampler",
        "sample_view_params_numpy": ".sampler",
        # manifests (written by vito_fast.prepare's scan)
        "ClipRecord": ".manifest",
        "read_manifest": ".manifest",
        "write_manifest": ".manifest",
        # frame store reader (the writer is vito_fast.prepare.frame_store_write)
        "FrameStore": ".frame_store",
        # DALI loader of augmented frame pairs, its settings and its parts' interfaces
        "DataConfig": ".config",
        "LoaderConfig": ".config",
        "usable_cores": ".config",
        "decode_workers": ".config",
        "PairLoader": ".loader",
        "LoaderStats": ".stats",
        "PairSource": ".pair_sources",
        "DeviceStage": ".device_stage",
        # random pairs made on the device (data.source: synthetic)
        "SyntheticPairSource": ".synthetic_pairs",
    },
)
