"""Built-in synthetic videos: textured objects of K classes, with masks and labels (``videos``; the
frames are drawn by ``render``), and the
settings of the built-in data set that ``vito-fast pretrain`` (without ``--data``) and ``vito-fast
demo`` both use (``builtin``). May import: vito_fast.data (manifests) and the lower layers.
"""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SyntheticDataset": ".videos",
        "VideoSettings": ".videos",
        "generate_dataset": ".videos",
        "decode_video_frames": ".videos",
        "BuiltinVideos": ".builtin",
        "builtin_dataset": ".builtin",
    },
)
