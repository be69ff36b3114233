"""Preparing data: probe and scan videos into a manifest, extract JPEG frame stores, transcode clips.

Holds ``probe`` (one file or many, in worker processes with timeouts), ``scan`` (folders -> clip
records and rejections), ``frame_store_write`` (the store's writer; the reader is
``vito_fast.data.frame_store``), ``clip_decode`` and ``transcode``. May import vito_fast.data (the
manifest and store formats, the video reader) and the lower layers; nothing above.
"""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "probe_video": ".probe",
        "probe_videos": ".probe",
        "RejectedVideo": ".probe",
        "VideoInfo": ".probe",
        "scan_videos": ".scan",
        "split_into_clips": ".scan",
        "find_videos": ".scan",
        "extract_frames": ".frame_store_write",
        "transcode_clips": ".transcode",
    },
)
