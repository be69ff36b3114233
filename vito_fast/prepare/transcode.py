"""Re-encode clips for fast random access: short side 256, short GOP, VP9/WebM or H.264/MP4.

The main use is a CPU-only setting: DALI's CPU video decoder reads VP8/VP9/MJPEG only, so an H.264
corpus becomes usable after ``transcode_clips(..., codec="vp9")``. Each manifest record becomes
one file holding exactly its clip (``[clip_start, clip_end)``), at the source frame rate with
timestamps renumbered 0, 1, 2, ...; ``out_dir/manifest.jsonl`` lists the outputs. Outputs are
written under a temporary name and renamed, and existing outputs are reused, so a rerun resumes.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence, Union

from vito_fast._spawn import main_left_alone
from vito_fast.prepare.clip_decode import clip_bounds, output_size
from vito_fast.data.config import usable_cores
from vito_fast.data.manifest import ClipRecord, read_manifest, write_manifest
from vito_fast.storage.shards import open_container, video_stem
from vito_fast.errors import VideoError

PathLike = Union[str, os.PathLike]

# codec -> (container suffix, PyAV encoder, FFmpeg codec name, encoder options)
CODECS = {
    "vp9": (".webm", "libvpx-vp9", "vp9", {"deadline": "good", "cpu-used": "5", "row-mt": "1", "b": "0"}),
    "h264": (".mp4", "libx264", "h264", {"preset": "veryfast", "bf": "0"}),
}
DEFAULT_CRF = {"vp9": 32, "h264": 23}

# Clips made for random access (``--preset``): a keyframe every 16 frames (a random frame costs ~8.5
# decoded frames on any decoder) and no B-frames. "nvdec": H.264 4:2:0 8-bit, which every NVDEC
# generation decodes; "cpu": VP9, which DALI's CPU video decoder reads (H.264 it cannot).
PRESETS = {"nvdec": {"codec": "h264", "gop": 16}, "cpu": {"codec": "vp9", "gop": 16}}
# A clip whose random frame costs more than this many decoded frames is named by the scan's summary.
SLOW_RANDOM_ACCESS = 16.0


def _even_output_size(record: ClipRecord, short_side: int):
    width, height = output_size(record.width, record.height, short_side)
    return width - width % 2, height - height % 2  # 4:2:0 chroma needs even sizes


def transcode_clip(record: ClipRecord, output: PathLike, *, codec: str = "vp9", short_side: int = 256,
                   gop: int = 16, crf: Optional[int] = None) -> ClipRecord:
    """Encode one clip into ``output`` (via ``output.tmp`` + rename) and return its record."""
    import av
    from av.video.frame import PictureType
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()  # reuses its scaler between frames
    suffix, encoder, codec_name, options = CODECS[codec]
    output = Path(output)
    temporary = output.with_name(output.name + ".tmp")
    start, end = clip_bounds(record)
    width, height = _even_output_size(record, short_side)
    rate = Fraction(record.fps).limit_denominator(1001)
    options = {**options, "crf": str(DEFAULT_CRF[codec] if crf is None else crf)}
    if codec == "h264":
        options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    written = 0
    try:
        with open_container(record.path) as source, \
                av.open(str(temporary), "w", format=suffix.lstrip("."),
                        options={"movflags": "+faststart"} if suffix == ".mp4" else {}) as target:
            video = source.streams.video[0]
            video.thread_type = "AUTO"
            origin, time_base = video.start_time or 0, video.time_base
            stream = target.add_stream(encoder, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = 1 / rate
            stream.codec_context.gop_size = gop
            if start > 0:
                source.seek(origin + int(start / time_base), stream=video, backward=True)
            for frame in source.decode(video):
                frame_time = float((frame.pts - origin) * time_base)
                if frame_time < start - 1e-6:
                    continue
                if frame_time >= end - 1e-6:
                    break
                resized = _shown_frame(reformatter, frame, width, height)
                resized.pts, resized.time_base = written, 1 / rate
                resized.pict_type = PictureType.NONE  # the source's I-frames would force keyframes off the GOP
                target.mux(stream.encode(resized))
                written += 1
            target.mux(stream.encode(None))
    except Exception as error:
        temporary.unlink(missing_ok=True)
        raise VideoError(f"{record.path}: transcoding to {codec} failed: {error}") from error
    if written == 0:
        temporary.unlink(missing_ok=True)
        raise VideoError(f"{record.path}: no frame in [{start:.3f} s, {end:.3f} s) to transcode")
    os.replace(temporary, output)
    probed = _existing_output(record, output, codec, (width, height))  # with the keyframe index
    if probed is not None:
        return probed
    return ClipRecord(str(output.resolve()), written, float(rate), width, height, codec_name,
                      round(written / float(rate), 6), record.label)


def _shown_frame(reformatter, frame, width: int, height: int):
    """``frame`` scaled to (width, height) in yuv420p, turned as players show it (rotation metadata)."""
    import av

    from vito_fast.data.video_source import display_orientation, upright

    if not any(display_orientation(frame)):
        return reformatter.reformat(frame, width=width, height=height, format="yuv420p", interpolation="AREA")
    turned = display_orientation(frame)[0]
    rgb = reformatter.reformat(frame, width=height if turned else width, height=width if turned else height,
                               format="rgb24", interpolation="AREA").to_ndarray()
    return av.VideoFrame.from_ndarray(upright(rgb, frame), format="rgb24").reformat(format="yuv420p")


def _transcode_or_error(record, output, codec, short_side, gop, crf):
    try:
        return transcode_clip(record, output, codec=codec, short_side=short_side, gop=gop, crf=crf)
    except VideoError as error:
        return error


def _existing_output(record: ClipRecord, output: Path, codec: str, expected_size) -> Optional[ClipRecord]:
    """The record of an output left by an earlier run, when it still probes as complete."""
    if not output.is_file():
        return None
    from vito_fast.prepare.probe import VideoInfo, probe_video

    info = probe_video(str(output), decode_check="none")
    if not isinstance(info, VideoInfo) or info.codec != CODECS[codec][2]:
        return None
    if (info.width, info.height) != expected_size:
        return None  # made with another --short-side
    return ClipRecord(str(output.resolve()), info.num_frames, info.fps, info.width, info.height, info.codec,
                      round(info.duration, 6), record.label, keyframes=info.keyframes, keyframe_pts=info.keyframe_pts)


def transcode_clips(manifest: Union[PathLike, Sequence[ClipRecord]], out_dir: PathLike, *, codec: str = "vp9",
                    short_side: int = 256, gop: int = 16, crf: Optional[int] = None, workers: Optional[int] = None,
                    progress: bool = True) -> List[ClipRecord]:
    """Transcode every clip of a manifest into ``out_dir`` and write ``out_dir/manifest.jsonl``.

    Returns the new records, in manifest order. Clips that fail are reported on stderr and left out
    (``out_dir/manifest.failed.jsonl`` lists them); existing outputs from an earlier run are reused.
    """
    if codec not in CODECS:
        raise ValueError(f"transcode_clips: codec must be one of {sorted(CODECS)}, not {codec!r}")
    if gop < 1:
        raise ValueError(f"transcode_clips: gop must be at least 1, not {gop}")
    records = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = [folder / f"{index:06d}-{video_stem(record.path)}{CODECS[codec][0]}" for index, record in enumerate(records)]
    results: List[Union[ClipRecord, VideoError, None]] = [
        _existing_output(record, output, codec, _even_output_size(record, short_side))
        for record, output in zip(records, outputs)]
    todo = [index for index, result in enumerate(results) if result is None]
    workers = usable_cores() if workers is None else workers
    from tqdm import tqdm

    with tqdm(total=len(records), initial=len(records) - len(todo), desc="transcode", unit="clip",
              disable=not progress) as bar:
        if workers <= 1:
            for index in todo:
                results[index] = _transcode_or_error(records[index], outputs[index], codec, short_side, gop, crf)
                bar.update(1)
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
                with main_left_alone():  # submit starts the processes: the caller's script is not run again
                    futures = {index: executor.submit(_transcode_or_error, records[index], outputs[index], codec,
                                                      short_side, gop, crf) for index in todo}
                for index, future in futures.items():
                    results[index] = future.result()
                    bar.update(1)
    usable = [result for result in results if isinstance(result, ClipRecord)]
    failed = [(record, result) for record, result in zip(records, results) if isinstance(result, VideoError)]
    write_manifest(folder / "manifest.jsonl", usable)
    if failed:
        from vito_fast.prepare.probe import RejectedVideo

        write_manifest(folder / "manifest.failed.jsonl",
                       [RejectedVideo(record.path, "unreadable", str(error)) for record, error in failed])
        import sys

        for record, error in failed:
            print(f"transcode: {error}", file=sys.stderr)
    return usable
