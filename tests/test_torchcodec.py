"""torchcodec on a machine without FFmpeg (vito_fast.decoders.ffmpeg_libs): it decodes in processes that
load the FFmpeg inside PyAV's wheel, meets the decoder contract there (everyday sizes, H.264 with
B-frames, an MP4 whose edit list hides its first frames, clips stored sideways or mirrored), and says
in one line why it cannot run where no FFmpeg is to be had.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from videos import decode_frame_number, write_late_start_copy, write_video
from vito_fast.decoders import ffmpeg_libs
from vito_fast.data.config import usable_cores
from vito_fast.decoders.choice import choose_decoder, loader_streams
from vito_fast.decoders.decoder_process import DecoderProcess
from vito_fast.decoders.trial import psnr_db
from vito_fast.decoders.video_decoders import FrameRequest, make_decoder
from vito_fast.prepare.scan import scan_videos

# asked of a process like those it decodes in (a torchcodec built for another torch or CUDA loads nothing)
REASON = ffmpeg_libs.torchcodec_problem("cpu")
needs_torchcodec = pytest.mark.skipif(REASON is not None, reason=f"torchcodec: {REASON}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Plain clips (VP9 at odd sizes, H.264 with B-frames, the same H.264 with its first frames cut by an
    edit list) and clips stored turned by 90°, by 270° and turned and mirrored."""
    folder = tmp_path_factory.mktemp("torchcodec")
    (folder / "plain").mkdir()
    (folder / "turned").mkdir()
    for width, height in ((312, 176), (63, 47)):
        write_video(folder / "plain" / f"vp9-{width}x{height}.webm", codec="vp9", width=width, height=height,
                    fps=25, num_frames=36, gop=9)
    h264 = write_video(folder / "plain" / "h264.mp4", codec="h264", width=176, height=144, fps=30, num_frames=45,
                       gop=15)
    write_late_start_copy(h264, folder / "plain" / "late-start.mp4", skip_frames=4)
    for name, rotation, mirror in (("quarter", 90, False), ("three-quarters", 270, False), ("mirror", 90, True)):
        write_video(folder / "turned" / f"{name}.mp4", codec="h264", width=80, height=48, fps=25, num_frames=30,
                    gop=10, rotation=rotation, mirror=mirror)
    plain, _ = scan_videos([str(folder / "plain")], workers=0, progress=False)
    turned, _ = scan_videos([str(folder / "turned")], workers=0, progress=False)
    assert len(plain) == 4 and len(turned) == 3
    return {"plain": plain, "turned": turned}


def request(record, frames) -> FrameRequest:
    return FrameRequest(record.path, tuple(frames), record.codec, record.height, record.width,
                        tuple(record.keyframes), tuple(record.keyframe_pts),
                        tuple(bool(turn) for turn in record.orientation or (False, False, False)))


@needs_torchcodec
def test_torchcodec_in_its_own_process_gives_the_frames_pyav_gives(corpus):
    records = corpus["plain"] + corpus["turned"]
    requests = [request(record, frames) for record in records
                for frames in ((2, record.num_frames - 3), (record.num_frames - 1, 0))]  # forward, backward
    with DecoderProcess("torchcodec", "cpu") as process:
        decoded = process.decode(requests, 120.0)
    reference = make_decoder("pyav")
    for job, frames in zip(requests, decoded):
        expected = reference.decode(job)
        for number, frame, truth in zip(job.frames, frames, expected):
            assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.flags["C_CONTIGUOUS"]
            assert frame.shape == truth.shape, (job.path, number)
            assert decode_frame_number(frame) == decode_frame_number(truth), (job.path, number)
            assert psnr_db(frame, truth) >= 35, (job.path, number)


@needs_torchcodec
def test_a_decoder_process_with_threads_gives_each_request_its_own_frames_in_order(corpus):
    """Threads of the decoder process (as on a GPU, where each holds an NVDEC session) decode a batch's
    requests at once, each thread with a decoder of its own; the answer keeps the batch's order."""
    records = corpus["plain"] * 3
    requests = [request(record, (index % 5, record.num_frames - 1 - index % 7)) for index, record in enumerate(records)]
    answers = {}
    for threads in (1, 3):
        with DecoderProcess("torchcodec", "cpu", threads=threads) as process:
            answers[threads] = process.decode(requests, 120.0)
    for job, one, three in zip(requests, answers[1], answers[3]):
        assert [decode_frame_number(frame) for frame in three] == [decode_frame_number(frame) for frame in one]
        assert all(np.array_equal(a, b) for a, b in zip(one, three)), job.path
    with pytest.raises(ValueError, match="threads must be at least 1"):
        DecoderProcess("torchcodec", "cpu", threads=0)


@needs_torchcodec
def test_the_trial_verifies_torchcodec_on_turned_and_mirrored_clips(corpus, tmp_path):
    """torchcodec turns frames by the display matrix's angle but never mirrors them; the decoder does the
    rest from the scan's record, and the trial (against PyAV, in a process of its own) verifies it."""
    choice = choose_decoder(corpus["turned"], device="cpu", candidates=["pyav", "torchcodec"], samples=6,
                            timeout=120, cache_path=tmp_path / "cache.json")
    trial = next(trial for trial in choice.trials if trial.decoder == "torchcodec")
    assert trial.verified and trial.min_psnr_db >= 35, trial
    # the loader runs it in the device stage's decoder process, one stream on the CPU; PyAV on every core
    cores = usable_cores()
    assert trial.loader_rate == pytest.approx(min(trial.pairs_per_s, cores * 1e3 / trial.cpu_ms_per_pair))


def test_the_loaders_streams_per_decoder_are_what_the_choice_counts():
    from vito_fast.decoders.decoder_process import GPU_THREADS

    assert loader_streams("pyav", "cpu", 6) == loader_streams("pyav", "gpu", 6) == 6  # a worker per core
    assert loader_streams("dali", "cpu", 6) == 6 and loader_streams("dali", "gpu", 6) == 1  # one NVDEC pipeline
    assert loader_streams("torchcodec", "cpu", 6) == 1  # the decoder process's one thread on the CPU
    assert loader_streams("nvc", "gpu", 6) == loader_streams("torchcodec", "gpu", 6) == GPU_THREADS


def test_the_ffmpeg_in_pyavs_wheel_is_lent_to_torchcodecs_processes(tmp_path, monkeypatch):
    """The folder of links names each of PyAV's renamed libraries as torchcodec asks for it, and a process
    started with ``child_environment`` loads torchcodec with that FFmpeg; the asking process imports
    neither torch nor torchcodec to find out."""
    bundled = ffmpeg_libs.bundled_ffmpeg()
    if bundled is None:
        pytest.skip("this PyAV brings no FFmpeg of its own (built against the system's)")
    major, folder, files = bundled
    assert {"libavutil", "libavcodec", "libavformat"} <= {name.split(".so.")[0] for name in files}
    if not ffmpeg_libs.torchcodec_builds() or ffmpeg_libs.system_ffmpeg() is not None:
        pytest.skip("torchcodec is not installed, or finds an FFmpeg of its own here")
    path = ffmpeg_libs.torchcodec_library_path()
    if path is None:
        pytest.skip(f"torchcodec has no build for PyAV's FFmpeg {major}")
    links = Path(path.split(os.pathsep)[0])
    for name, target in files.items():
        assert (links / name).resolve() == target.resolve()
    environment = ffmpeg_libs.child_environment(dict(os.environ, LD_LIBRARY_PATH="/nonexistent"))
    assert environment["LD_LIBRARY_PATH"] == f"{path}{os.pathsep}/nonexistent"  # ahead of what was there
    probe = ("import sys; from vito_fast.decoders import ffmpeg_libs; lent = ffmpeg_libs.torchcodec_library_path(); "
             "print('torch' in sys.modules, lent); import torchcodec; print(torchcodec.ffmpeg_major_version)")
    asked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert asked == ["False", path, "None"]  # no torch imported to ask; torchcodec alone loads nothing here
    loaded = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == ["False", "None", str(major)]  # a process lent the libraries needs no more and loads them


def test_a_cache_that_cannot_be_written_lends_the_links_from_the_temporary_folder(tmp_path, monkeypatch):
    bundled = ffmpeg_libs.bundled_ffmpeg()
    if bundled is None or bundled[0] not in ffmpeg_libs.torchcodec_builds() or ffmpeg_libs.system_ffmpeg() is not None:
        pytest.skip("torchcodec and PyAV's FFmpeg are not both here, or a system FFmpeg is")
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    monkeypatch.setenv("VITO_FAST_CACHE_DIR", str(tmp_path / "cache" / "vito_fast"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    try:
        path = ffmpeg_libs.torchcodec_library_path(fresh=True)
    finally:
        monkeypatch.undo()
        ffmpeg_libs.torchcodec_library_path(fresh=True)  # the others' answer again
    assert path and path.startswith(str(tmp_path / "tmp")), path
    assert (Path(path.split(os.pathsep)[0]) / f"libavutil.so.{bundled[0] + ffmpeg_libs.AVUTIL_TO_FFMPEG}").exists()


@needs_torchcodec
def test_torchcodec_in_a_process_without_the_lent_ffmpeg_says_how_to_start_one(corpus):
    if ffmpeg_libs.system_ffmpeg() is not None:
        pytest.skip("this machine has an FFmpeg torchcodec loads anywhere")
    from vito_fast.errors import DecoderFailure

    with pytest.raises(DecoderFailure, match="torchcodec finds no FFmpeg in this process: start it with "
                                             "LD_LIBRARY_PATH=.* or decode through .*DecoderProcess"):
        make_decoder("torchcodec").decode(request(corpus["plain"][0], (0, 1)))


def test_torchcodec_says_in_one_line_why_it_cannot_run(monkeypatch):
    from vito_fast.decoders.video_decoders import TorchCodecDecoder

    monkeypatch.setattr(ffmpeg_libs, "torchcodec_builds", lambda: ())
    assert TorchCodecDecoder("cpu").unavailable("h264") == "torchcodec is not installed (pip install torchcodec)"
    monkeypatch.setattr(ffmpeg_libs, "torchcodec_builds", lambda: (4, 5, 6, 7, 8))
    monkeypatch.setattr(ffmpeg_libs, "system_ffmpeg", lambda: None)
    monkeypatch.setattr(ffmpeg_libs, "torchcodec_library_path", lambda: None)  # no FFmpeg here, none in PyAV
    reason = TorchCodecDecoder("cpu").unavailable("h264")
    assert reason.startswith("torchcodec finds no FFmpeg here: none of versions 4-9 is installed")
    assert "\n" not in reason
    monkeypatch.setattr(ffmpeg_libs, "torchcodec_library_path", lambda: "/lent/ffmpeg")
    assert TorchCodecDecoder("cpu").unavailable("h264") is None  # the processes it decodes in will load PyAV's
    if REASON is None:  # an FFmpeg found, but torchcodec loads nothing with it (another torch's build)
        import torchcodec

        monkeypatch.setattr(ffmpeg_libs, "system_ffmpeg", lambda: 8)
        monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None)
        reason = TorchCodecDecoder("cpu").unavailable("h264")
        assert reason.startswith("torchcodec does not load with FFmpeg 8 here: was it built for another torch"), reason
