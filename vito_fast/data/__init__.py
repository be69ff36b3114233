"""Data: the view sampler, manifests, the frame store and the loaders."""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ViewConfig": ".sampler",
        "ViewParams": ".sampler",
        "sample_view_params": ".sampler",
        "sample_view_params_numpy": ".sampler",
        "FrameStore": ".frame_store",
        "read_manifest": ".manifest",
        "write_manifest": ".manifest",
    },
)
