"""VideoFrameReader on real encodes: every frame is dense RGB as players show it, and the right frame.

Each frame shows its frame number (tests/videos.py), so a test reads back which frame it got.
Which encodes this FFmpeg build makes, and so which combinations run:

- H.264 (libx264, .mp4): 4:2:0 and 4:2:2 need an even width and height, so yuv420p, yuvj420p
  (full range), yuv420p10le (High 10) and yuv422p10le run at even sizes, yuv444p and yuvj444p at
  odd ones.
- VP9 (libvpx-vp9, .webm): 8 bits only, any size: yuv420p, yuv444p, yuv440p and gbrp at odd heights.

Widths 312, 426, 456, 602 and 854 give rgb24 rows that FFmpeg pads to its alignment, which DALI's
``feed_input`` refuses; at width 176 the rows happen to be aligned. Frames are drawn fresh at
random each run, and every assertion names the frames it read.
"""
from __future__ import annotations

import io
import math
import pickle
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np
import pytest

from videos import (decode_frame_number, frame_image, shown_image, write_late_start_copy, write_resolution_change,
                    write_variable_frame_rate, write_video)
from vito_fast.data.manifest import ClipRecord, read_manifest, write_manifest
from vito_fast.prepare.scan import scan_videos, split_into_clips
from vito_fast.prepare.probe import VideoInfo, probe_video
from vito_fast.data.video_source import VideoFrameReader
from vito_fast.errors import VideoError

av = pytest.importorskip("av", reason="PyAV is not installed: the reader decodes with it")

NUM_FRAMES, GOP = 12, 5
SUFFIX = {"h264": "mp4", "vp9": "webm"}
# (codec, pixel format, width, height); see the module docstring for why each size
CASES = [
    ("h264", "yuv420p", 426, 240),
    ("h264", "yuv420p", 854, 480),
    ("h264", "yuvj420p", 312, 240),
    ("h264", "yuv420p10le", 602, 240),
    ("h264", "yuv422p10le", 456, 100),
    ("h264", "yuv444p", 456, 99),
    ("h264", "yuvj444p", 176, 99),
    ("h264", "yuv444p", 602, 241),
    ("vp9", "yuv420p", 176, 99),
    ("vp9", "yuv420p", 312, 241),
    ("vp9", "yuv420p", 456, 99),
    ("vp9", "yuv420p", 602, 241),
    ("vp9", "yuv420p", 854, 241),
    ("vp9", "yuv444p", 426, 241),
    ("vp9", "yuv440p", 312, 99),
    ("vp9", "gbrp", 176, 241),
]
PADDED_WIDTHS = (312, 426, 456, 602, 854)


@pytest.fixture(scope="module")
def encode(tmp_path_factory):
    """``encode(codec, pixel_format, width, height)`` -> path of that clip, written once per module."""
    folder, written = tmp_path_factory.mktemp("decode"), {}

    def clip(codec: str, pixel_format: str, width: int, height: int) -> str:
        key = (codec, pixel_format, width, height)
        if key not in written:
            path = folder / f"{codec}_{pixel_format}_{width}x{height}.{SUFFIX[codec]}"
            written[key] = str(write_video(path, codec=codec, pixel_format=pixel_format, width=width, height=height,
                                           num_frames=NUM_FRAMES, gop=GOP))
        return written[key]

    return clip


def probed(path) -> VideoInfo:
    info = probe_video(str(path), decode_check="full")
    assert isinstance(info, VideoInfo), info
    return info


def read_with_index(path, frames, reader=None):
    info = probed(path)
    return (reader or VideoFrameReader()).read(str(path), info.fps, frames, info.keyframes, info.keyframe_pts)


def assert_dense_rgb(image: np.ndarray, height: int, width: int, context: str) -> None:
    assert image.dtype == np.uint8 and image.shape == (height, width, 3), f"{context}: {image.dtype} {image.shape}"
    assert image.flags["C_CONTIGUOUS"] and image.strides == (3 * width, 3, 1), f"{context}: strides {image.strides}"


@pytest.mark.parametrize("codec, pixel_format, width, height", CASES,
                         ids=[f"{c}-{p}-{w}x{h}" for c, p, w, h in CASES])
def test_frames_are_dense_rgb_of_the_probed_size_and_the_right_frame(encode, codec, pixel_format, width, height):
    path = encode(codec, pixel_format, width, height)
    info = probed(path)
    assert (info.width, info.height, info.num_frames) == (width, height, NUM_FRAMES)
    frames = np.random.default_rng().integers(0, NUM_FRAMES, 5).tolist()  # any order, repeats allowed
    images = VideoFrameReader().read(path, info.fps, frames, info.keyframes, info.keyframe_pts)
    for frame, image in zip(frames, images):
        context = f"{path} frame {frame} of {frames}"
        assert_dense_rgb(image, height, width, context)
        assert decode_frame_number(image) == frame, context
        # levels survive: a full-range or 10-bit frame converted as limited-range 8-bit is ~15 off
        error = np.abs(image.astype(np.int16) - frame_image(frame, width, height)).mean()
        assert error < 4.0, f"{context}: mean error {error:.2f}"


@pytest.mark.parametrize("width", PADDED_WIDTHS)
def test_padded_rows_come_back_dense_and_dali_takes_them(encode, width):
    """PyAV's rgb24 arrays of these widths are strided views; DALI refuses them, and the reader's frames not."""
    path = encode("vp9", "yuv420p", width, 241 if width != 456 else 99)
    with av.open(path) as container:
        raw = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert not raw.flags["C_CONTIGUOUS"], "the bug this guards against no longer shows at this width"
    image = read_with_index(path, [0])[0]
    np.testing.assert_array_equal(image, raw)
    dali = pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    from nvidia.dali import fn, types

    @dali.pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def passthrough():
        return fn.external_source(name="image", dtype=types.UINT8, layout="HWC")

    pipeline = passthrough()
    pipeline.build()
    with pytest.raises(RuntimeError, match="Strided"):
        pipeline.feed_input("image", [raw])
    pipeline.feed_input("image", [image])
    (output,) = pipeline.run()
    np.testing.assert_array_equal(np.array(output[0]), image)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
@pytest.mark.parametrize("rotation, mirror", [(90, False), (-90, False), (180, False), (90, True), (0, True)])
def test_display_matrix_is_applied(tmp_path, codec, rotation, mirror):
    """A phone video stored 96x60 with a quarter turn shows (and probes) as 60x96.

    Plain turns match what OpenCV's FFmpeg backend shows (checked by hand, OpenCV 5.0); mirrors
    follow PyAV's writer (``set_display_rotation``: turn, then mirror), OpenCV ignores them.
    """
    width, height = 96, 60
    path = write_video(tmp_path / f"phone.{SUFFIX[codec]}", codec=codec, width=width, height=height,
                       num_frames=NUM_FRAMES, gop=GOP, xy_gradient=True, rotation=rotation, mirror=mirror)
    info = probed(path)
    shown_height, shown_width = shown_image(np.zeros((height, width)), rotation, mirror).shape
    assert (info.height, info.width) == (shown_height, shown_width)
    frames = np.random.default_rng().permutation(NUM_FRAMES)[:4].tolist()
    for frame, image in zip(frames, read_with_index(path, frames)):
        context = f"{path} frame {frame} of {frames}"
        assert_dense_rgb(image, shown_height, shown_width, context)
        expected = shown_image(frame_image(frame, width, height, xy_gradient=True), rotation, mirror)
        error = np.abs(image.astype(np.int16) - expected).mean()
        assert error < 6.0, f"{context}: mean error {error:.2f} against the turned frame"


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_variable_frame_rate_frame_k_is_the_kth_frame(tmp_path, codec):
    """Bursts of three frames 1/30 s apart, then 2/15 s still: time x mean rate repeats and skips frames."""
    path = write_variable_frame_rate(tmp_path / f"vfr.{SUFFIX[codec]}", codec=codec, num_frames=24,
                                     durations=(3, 3, 3, 12))
    info = probed(path)
    assert info.variable_frame_rate and info.num_frames == 24
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = sorted(float((packet.pts - (stream.start_time or 0)) * stream.time_base)
                       for packet in container.demux(stream) if packet.size)
    assert len({round(time * info.fps) for time in times}) < 20  # why frames are counted, not timed
    frames = np.random.default_rng().permutation(24).tolist()
    for index in ((info.keyframes, info.keyframe_pts), (None, None)):
        images = VideoFrameReader().read(str(path), info.fps, frames, *index)
        assert [decode_frame_number(image) for image in images] == frames, f"{path} with index {index}"


def test_frames_an_mp4_edit_list_hides_are_neither_counted_nor_returned(tmp_path):
    source = write_video(tmp_path / "source.mp4", codec="h264", num_frames=20, gop=8,
                         encoder_options={"preset": "fast", "bf": "2"})
    path = write_late_start_copy(source, tmp_path / "cut.mp4", skip_frames=3)
    info = probed(path)  # "full": every frame decodes
    assert info.num_frames == 17 and info.duration == pytest.approx(17 / 25)
    frames = np.random.default_rng().permutation(17).tolist()
    for index in ((info.keyframes, info.keyframe_pts), (None, None)):
        images = VideoFrameReader().read(str(path), info.fps, frames, *index)
        assert [decode_frame_number(image) for image in images] == [frame + 3 for frame in frames], frames


def test_a_stream_that_changes_size_keeps_the_declared_size(tmp_path):
    path = write_resolution_change(tmp_path / "resized.webm", sizes=((96, 64), (48, 32)), frames_each=6)
    info = probed(path)
    assert (info.width, info.height, info.num_frames) == (96, 64, 12)
    frames = np.random.default_rng().permutation(12).tolist()
    for frame, image in zip(frames, read_with_index(path, frames)):
        assert_dense_rgb(image, 64, 96, f"{path} frame {frame}")
        assert decode_frame_number(image) == frame, frames


class _CountingContainer:
    """An open container that counts the reader's calls to ``demux`` (``decode`` reads packets itself)."""

    def __init__(self, container, calls: list):
        self._container, self._calls = container, calls

    def demux(self, *args, **kwargs):
        self._calls.append(args)
        return self._container.demux(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_probe_indexes_keyframes_and_reading_with_the_index_demuxes_nothing(tmp_path, monkeypatch, codec):
    path = str(write_video(tmp_path / f"gop.{SUFFIX[codec]}", codec=codec, num_frames=30, gop=7))
    with av.open(path) as container:
        decoded_keyframes = [number for number, frame in enumerate(container.decode(video=0)) if frame.key_frame]
    info = probed(path)
    assert info.keyframes == decoded_keyframes and len(info.keyframe_pts) == len(decoded_keyframes)
    assert decoded_keyframes[0] == 0 and len(decoded_keyframes) >= 4

    calls, real_open = [], av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: _CountingContainer(real_open(*args, **kwargs), calls))
    frames = np.random.default_rng().integers(0, 30, 6).tolist()
    reader = VideoFrameReader()
    indexed = reader.read(path, info.fps, frames, info.keyframes, info.keyframe_pts)
    indexed += reader.read(path, info.fps, frames[::-1], info.keyframes, info.keyframe_pts)
    assert calls == [], "a read with the manifest's keyframe index demuxed the file"
    demuxed = VideoFrameReader().read(path, info.fps, frames + frames[::-1])
    assert len(calls) == 1, "an older manifest's read demuxes once per file"
    for frame, with_index, without in zip(frames + frames[::-1], indexed, demuxed):
        np.testing.assert_array_equal(with_index, without, err_msg=f"frame {frame} of {frames}")
        assert decode_frame_number(with_index) == frame


def test_clips_carry_the_keyframes_that_cover_them_through_the_manifest(tmp_path):
    path = write_video(tmp_path / "long.webm", codec="vp9", num_frames=100, fps=25, gop=9)
    info = probed(path)
    clips = split_into_clips(info, clip_seconds=1.0, min_seconds=0.5)
    assert len(clips) == 4
    # each keyframe is in one clip, plus at most one per clip for the keyframe before its start
    assert sum(len(clip.keyframes) for clip in clips) <= len(info.keyframes) + len(clips)
    manifest = write_manifest(tmp_path / "manifest.jsonl", clips)
    rng = np.random.default_rng()
    reader = VideoFrameReader()
    for clip in read_manifest(manifest):
        first = math.ceil(clip.clip_start * clip.fps - 1e-6)
        assert clip.keyframes[0] <= first and clip.keyframes[-1] < first + clip.num_frames
        frames = (first + rng.integers(0, clip.num_frames, 4)).tolist()
        images = reader.read(clip.path, clip.fps, frames, clip.keyframes, clip.keyframe_pts)
        assert [decode_frame_number(image) for image in images] == frames, f"clip from {first}: {frames}"


def test_scan_writes_the_index_and_older_manifests_still_read(tmp_path):
    (tmp_path / "videos").mkdir()
    path = write_video(tmp_path / "videos" / "a.webm", codec="vp9", num_frames=30, gop=7)
    records, rejected = scan_videos([tmp_path / "videos"], workers=0, progress=False)
    assert rejected == [] and records[0].keyframes == [0, 7, 14, 21, 28]
    old_line = ClipRecord(str(path), 30, 25.0, 64, 48, "vp9", 1.2).to_json()
    assert "keyframes" not in old_line
    (tmp_path / "old.jsonl").write_text(old_line + "\n")
    (record,) = read_manifest(tmp_path / "old.jsonl")
    assert record.keyframes is None and record.keyframe_pts is None
    images = VideoFrameReader().read(record.path, record.fps, [29, 3], record.keyframes, record.keyframe_pts)
    assert [decode_frame_number(image) for image in images] == [29, 3]


def test_reader_pickles_without_files_and_threads_share_it(encode):
    path = encode("vp9", "yuv420p", 176, 99)
    reader = VideoFrameReader(max_open=2)
    read_with_index(path, [3], reader)  # leaves a file open in this thread
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.max_open == 2
    frames = np.random.default_rng().integers(0, NUM_FRAMES, 16).tolist()
    with ThreadPoolExecutor(2) as pool:
        images = list(pool.map(lambda frame: read_with_index(path, [frame], copy)[0], frames))
    assert [decode_frame_number(image) for image in images] == frames
    reader.close()


def test_an_index_without_keyframes_decodes_from_the_start(encode):
    """A stream whose packets carry no keyframe flag still reads: every frame counts from the first."""
    path = encode("vp9", "yuv420p", 176, 99)
    frames = np.random.default_rng().permutation(NUM_FRAMES)[:4].tolist()
    images = VideoFrameReader().read(path, 25.0, frames, keyframes=[], keyframe_pts=[])
    assert [decode_frame_number(image) for image in images] == frames


def test_errors_name_the_file(tmp_path, encode):
    path = encode("vp9", "yuv420p", 176, 99)
    reader = VideoFrameReader()
    with pytest.raises(VideoError, match="past the last decodable frame") as error:
        read_with_index(path, [NUM_FRAMES], reader)
    assert path in str(error.value)
    with pytest.raises(ValueError, match="keyframe_pts"):
        reader.read(path, 25.0, [0], keyframes=[0])
    with pytest.raises(VideoError, match="missing.webm"):
        reader.read(str(tmp_path / "missing.webm"), 25.0, [0])


def test_fractional_rates_count_frames_exactly(tmp_path):
    """NTSC 30000/1001 in WebM's 1 ms time base: frames are counted from the keyframe, never rounded from times."""
    path = write_video(tmp_path / "ntsc.webm", codec="vp9", num_frames=40, fps=Fraction(30000, 1001), gop=6)
    frames = np.random.default_rng().permutation(40)[:10].tolist()
    assert [decode_frame_number(image) for image in read_with_index(path, frames)] == frames


def test_rotated_video_is_stored_and_transcoded_as_shown(tmp_path):
    """The frame store and ``prepare transcode`` turn frames as players do (no squashed pictures)."""
    from PIL import Image

    from vito_fast.data.frame_store import FrameStore
    from vito_fast.prepare.frame_store_write import extract_frames
    from vito_fast.prepare.scan import scan_videos
    from vito_fast.data.manifest import write_manifest
    from vito_fast.prepare.transcode import transcode_clips

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "phone.mp4", codec="h264", width=96, height=64, fps=10, num_frames=20,
                gop=5, rotation=90)
    records, rejected = scan_videos([str(tmp_path / "videos")], workers=0, progress=False, min_seconds=0.5)
    assert not rejected and (records[0].width, records[0].height) == (64, 96)
    manifest = write_manifest(tmp_path / "manifest.jsonl", records)
    reader = VideoFrameReader()

    def close_to_shown(image: np.ndarray, frame: int) -> None:
        shown = reader.read(records[0].path, records[0].fps, [frame], records[0].keyframes, records[0].keyframe_pts)[0]
        assert image.shape == shown.shape, (image.shape, shown.shape)
        assert np.abs(image.astype(np.float64) - shown).mean() < 12, frame

    extract_frames(manifest, tmp_path / "store", fps=10, short_side=64, workers=1, progress=False)
    with FrameStore(tmp_path / "store") as store:
        for frame in (0, 7, 19):
            close_to_shown(np.asarray(Image.open(io.BytesIO(store.frame_bytes(0, frame))).convert("RGB")), frame)
    (transcoded,) = transcode_clips(manifest, tmp_path / "vp9", codec="vp9", short_side=64, workers=1,
                                    progress=False)
    assert (transcoded.width, transcoded.height) == (64, 96) and transcoded.keyframes
    again = VideoFrameReader().read(transcoded.path, transcoded.fps, [0, 7, 19], transcoded.keyframes,
                                    transcoded.keyframe_pts)
    for frame, image in zip((0, 7, 19), again):
        close_to_shown(image, frame)
