"""The DALI graph that turns sampled view parameters into two augmented views per sample.

The graph draws nothing at random: every per-sample choice arrives through ``fn.external_source``
(fed with ``feed_input``), so its output is a pure function of its inputs. Per view::

    frame (encoded JPEG | raw RGB frame | one of two frames decoded from a video's bytes)
      -> resize(roi = crop box, size = S x S, antialias)        crop + resize in one pass
      -> coord_transform(MT = 3x4 colour matrix), clamp          jitter in its order + grayscale
      -> if blur: gaussian_blur(sigma, window)                   DALI conditionals: per sample,
      -> if solarize: x >= 128 -> 255 - x                        the others skip the work
      -> crop_mirror_normalize(mirror = flip, ImageNet mean/std, HWC layout)

The HWC output lands in a (B, S, S, 3) buffer whose NCHW permutation is channels_last for free.
The same graph runs on the CPU (``device="cpu"``) or the GPU (``"gpu"``: JPEG through the mixed
nvJPEG/hardware decoder, raw frames copied to the GPU before the resize). DALI is imported only
inside these functions: ``import vito_fast.data`` never loads it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import numpy as np

from vito_fast.data.augment import (IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD, blur_window,
                                    colour_matrices)

__all__ = ["import_dali", "build_pair_pipeline", "decode_video_pair", "view_arguments", "feed_pipeline", "INPUT_KINDS"]

# what the graph receives per sample: encoded JPEG frames, raw RGB frames, or a video file's bytes
INPUT_KINDS = ("jpeg", "frames", "video")


def import_dali():
    """(fn, pipeline_def, types) of NVIDIA DALI, or an ImportError that says how to install it."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as error:
        raise ImportError(
            "vito_fast's PairLoader needs NVIDIA DALI, which is not installed: "
            "pip install nvidia-dali-cuda130 (or nvidia-dali-cuda120 for CUDA 12); "
            "see ../shared/offline-gpu/README.md for hosts without a package index"
        ) from error
    return fn, pipeline_def, types


def build_pair_pipeline(input_kind: str, *, batch_size: int, image_size: int, device: str, output_dtype: str,
                        num_threads: int, device_id: Optional[int] = None,
                        hw_decoder_load: float = 0.65, prefetch: int = 2):
    """Build (and return) the DALI pipeline of one source kind; outputs (view1, view2), each (B, S, S, 3).

    input_kind: "jpeg" (inputs ``image0``/``image1``: encoded JPEG bytes), "frames" (``image0``/
    ``image1``: HWC uint8 RGB frames) or "video" (``encoded``: a whole video file's bytes, ``frames``:
    (2,) int32 frame numbers in view order, decoded by ``fn.decoders.video``; ``transpose``,
    ``flip_rows``, ``flip_columns``: () bool, the display orientation, see :func:`decode_video_pair`). Per view v also
    ``roi_start{v}``/``roi_end{v}`` (2,) float (y, x), ``colour{v}`` (3, 4) float, ``blur{v}`` () bool,
    ``sigma{v}`` () float, ``window{v}`` () int32, ``solarize{v}`` () bool, ``mirror{v}`` () int32
    (see :func:`view_arguments`).
    output_dtype: "float16" or "float32". prefetch: iterations DALI holds; the first ``schedule_run``
    needs that many batches fed, each later one a batch more (feeding overlaps running).
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"build_pair_pipeline: input_kind must be one of {INPUT_KINDS}, not {input_kind!r}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"build_pair_pipeline: device must be 'cpu' or 'gpu', not {device!r}")
    fn, pipeline_def, types = import_dali()
    dtype = {"float16": types.FLOAT16, "float32": types.FLOAT}[output_dtype]
    on_gpu = device == "gpu"

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if on_gpu else None,
                  prefetch_queue_depth=prefetch, exec_dynamic=True, enable_conditionals=True)
    def pair_pipeline():
        if input_kind == "video":
            frames = decode_video_pair(fn, types, on_gpu)
        elif input_kind == "jpeg":
            # no_copy: the loader keeps every fed array alive and unchanged until its batch's outputs are taken
            encoded = [fn.external_source(name=f"image{v}", dtype=types.UINT8, no_copy=True) for v in (0, 1)]
            decoder = {"device": "mixed", "hw_decoder_load": hw_decoder_load} if on_gpu else {"device": "cpu"}
            frames = [fn.decoders.image(data, output_type=types.RGB, **decoder) for data in encoded]
        else:
            frames = [fn.external_source(name=f"image{v}", dtype=types.UINT8, layout="HWC", no_copy=True)
                      for v in (0, 1)]
            frames = [frame.gpu() if on_gpu else frame for frame in frames]
        return tuple(_augment(fn, types, frames[v], v, image_size, dtype, on_gpu) for v in (0, 1))

    pipeline = pair_pipeline()
    pipeline.build()
    return pipeline


def decode_video_pair(fn, types, on_gpu: bool) -> List:
    """The two frames of each sample from its video file's bytes, as players show them.

    External inputs: ``encoded`` (the file's bytes), ``frames`` (2,) int32, and ``transpose``,
    ``flip_rows``, ``flip_columns`` () bool (the clip's display orientation, from the manifest:
    ``fn.decoders.video`` does not read the display matrix). Needs ``enable_conditionals``.
    """
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, no_copy=False)
    frame_numbers = fn.external_source(name="frames", dtype=types.INT32)
    transpose, flip_rows, flip_columns = (fn.external_source(name=name, dtype=types.BOOL)
                                          for name in ("transpose", "flip_rows", "flip_columns"))
    video = fn.decoders.video(encoded, frames=frame_numbers, device="mixed" if on_gpu else "cpu")
    shown = []
    for frame in (video[0], video[1]):
        if transpose:  # a quarter turn: rows become columns (then the flips finish the turn)
            frame = fn.transpose(frame, perm=[1, 0, 2], transpose_layout=False)  # still called HWC
        frame = fn.flip(frame, horizontal=fn.cast(flip_columns, dtype=types.INT32),
                        vertical=fn.cast(flip_rows, dtype=types.INT32))
        shown.append(frame)
    return shown


def _augment(fn, types, frame, view: int, image_size: int, dtype, on_gpu: bool):
    """One view's chain (see the module docstring); all parameters are per-sample external inputs."""
    from nvidia.dali import math as dali_math

    roi_start = fn.external_source(name=f"roi_start{view}", dtype=types.FLOAT)
    roi_end = fn.external_source(name=f"roi_end{view}", dtype=types.FLOAT)
    colour = fn.external_source(name=f"colour{view}", dtype=types.FLOAT)
    blur = fn.external_source(name=f"blur{view}", dtype=types.BOOL)
    sigma = fn.external_source(name=f"sigma{view}", dtype=types.FLOAT)
    window = fn.external_source(name=f"window{view}", dtype=types.INT32)
    solarize = fn.external_source(name=f"solarize{view}", dtype=types.BOOL)
    mirror = fn.external_source(name=f"mirror{view}", dtype=types.INT32)
    image = fn.resize(frame, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                      size=[image_size, image_size], antialias=True, interp_type=types.INTERP_LINEAR)
    image = dali_math.clamp(fn.coord_transform(image, MT=colour, dtype=types.FLOAT), 0.0, 255.0)
    # per-sample branches (DALI conditionals): samples without blur or solarize skip the work
    if blur:
        image = fn.gaussian_blur(image, sigma=sigma, window_size=window, dtype=types.FLOAT)
    if solarize:
        image = image + (image >= SOLARIZE_THRESHOLD) * (255.0 - 2.0 * image)
    return fn.crop_mirror_normalize(image, mirror=mirror, mean=[255.0 * m for m in IMAGENET_MEAN],
                                    std=[255.0 * s for s in IMAGENET_STD], dtype=dtype, output_layout="HWC")


def view_arguments(params, view: int, max_window: int) -> Dict[str, np.ndarray]:
    """The per-sample graph inputs of recipe ``view`` (0 or 1) of a ``ViewParams``, keyed by input name.

    Each value is one dense array whose first axis is the batch (DALI takes it as B samples).
    max_window: the blur window at this image size (``augment.view_blur_window``).
    """
    boxes = params.crop_boxes[:, view].astype(np.float32)  # top, left, height, width
    sigmas = params.blur_sigma[:, view].astype(np.float32)
    blurred = sigmas > 0
    return {
        f"roi_start{view}": np.ascontiguousarray(boxes[:, 0:2]),
        f"roi_end{view}": np.ascontiguousarray(boxes[:, 0:2] + boxes[:, 2:4]),
        f"colour{view}": colour_matrices(params, view),
        f"blur{view}": blurred,
        f"sigma{view}": np.where(blurred, sigmas, 1.0).astype(np.float32),
        f"window{view}": np.where(blurred, blur_window(max_window, sigmas), 1).astype(np.int32),
        f"solarize{view}": params.solarize[:, view].astype(bool),
        f"mirror{view}": params.flips[:, view].astype(np.int32),
    }


def feed_pipeline(pipeline, inputs: Dict[str, Union[np.ndarray, List[np.ndarray]]]) -> None:
    """Feed one batch: every external input of the graph, a list of samples or one dense array."""
    for name, batch in inputs.items():
        pipeline.feed_input(name, batch)
