"""Data: the view sampler, manifests, the frame store and the loaders."""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        # view sampler (C++ with a NumPy reference)
        "ViewConfig": ".sampler",
        "ViewParams": ".sampler",
        "sample_view_params": ".sampler",
        "sample_view_params_numpy": ".sampler",
        # manifests: scanning a folder of videos
        "ClipRecord": ".manifest",
        "scan_videos": ".manifest",
        "read_manifest": ".manifest",
        "write_manifest": ".manifest",
        # frame store: JPEG frames in tar shards plus an index
        "FrameStore": ".frame_store",
        "extract_frames": ".frame_store",
        "transcode_clips": ".transcode",
        # DALI loader of augmented frame pairs
        "LoaderConfig": ".loader",
        "PairLoader": ".loader",
        "LoaderStats": ".loader",
    },
)
