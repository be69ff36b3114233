"""`vito-fast prepare`: scan, manifests, the JPEG frame store, transcoding and the CLI.

Every video here is synthetic (tests/videos.py): each frame shows its frame number in big black
and white squares, so a test can tell exactly which source frame ended up where.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videos import (decode_frame_number, encoder_available, read_frame_numbers, write_audio_only,
                    write_empty_video_stream, write_text_file, write_truncated_copy, write_variable_frame_rate,
                    write_video, write_zero_byte_file)
from vito_fast.cli.main import main as cli_main
from vito_fast.data import ClipRecord, FrameStore, read_manifest, write_manifest
from vito_fast.prepare import extract_frames, scan_videos, transcode_clips
from vito_fast.prepare.clip_decode import extract_clip_pyav
from vito_fast.prepare.frame_store_write import ShardWriter
from vito_fast.prepare.scan import split_into_clips
from vito_fast.prepare.probe import VideoInfo, probe_videos
from vito_fast.errors import StoreError, VideoError

HAS_H264 = encoder_available("h264")
needs_h264 = pytest.mark.skipif(not HAS_H264, reason="PyAV's FFmpeg has no H.264 encoder (libx264/libopenh264)")
try:
    import nvidia.dali  # noqa: F401

    HAS_DALI = True
except ImportError:
    HAS_DALI = False
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")

# name -> (codec, width, height, fps, frames); all usable with the default min_seconds=1
GOOD_VIDEOS = {
    "vp9_25fps.webm": ("vp9", 64, 48, 25, 50),
    "vp9_24fps_portrait.webm": ("vp9", 48, 64, 24, 72),
    "h264_30fps.mp4": ("h264", 80, 60, 30, 45),
}
# name -> the reason the default scan must give
BAD_VIDEOS = {
    "single_frame.webm": "too_short",
    "truncated.webm": "truncated",
    "truncated.mp4": "truncated",
    "zero_bytes.mp4": "unreadable",
    "notes.mp4": "unreadable",
    "audio_only.mp4": "no_video_stream",
    "no_frames.avi": "zero_frames",
    "variable_rate.mp4": "variable_frame_rate",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder with the good and the bad videos above (H.264 ones only when an encoder exists)."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, (codec, width, height, fps, frames) in GOOD_VIDEOS.items():
        if codec == "h264" and not HAS_H264:
            continue
        write_video(folder / name, codec=codec, width=width, height=height, fps=fps, num_frames=frames)
    write_video(folder / "single_frame.webm", codec="vp9", num_frames=1, fps=25)
    whole = tmp_path_factory.mktemp("whole")
    write_truncated_copy(write_video(whole / "long.webm", codec="vp9", fps=25, num_frames=75), folder / "truncated.webm")
    if HAS_H264:
        write_truncated_copy(write_video(whole / "long.mp4", codec="h264", fps=25, num_frames=75),
                             folder / "truncated.mp4")
        write_variable_frame_rate(folder / "variable_rate.mp4")
    write_zero_byte_file(folder / "zero_bytes.mp4")
    write_text_file(folder / "notes.mp4")
    write_audio_only(folder / "audio_only.mp4")
    write_empty_video_stream(folder / "no_frames.avi")
    return folder


MADE_WITH_H264 = {"h264_30fps.mp4", "truncated.mp4", "variable_rate.mp4"}


def expected_names(table: dict) -> set:
    """The names of ``table`` that the corpus holds (H.264 files only where an encoder exists)."""
    return {name for name in table if HAS_H264 or name not in MADE_WITH_H264}


@pytest.fixture(scope="module")
def manifest(corpus, tmp_path_factory) -> list:
    """Records of the good videos, split into 1 s clips (so some clips start mid-video)."""
    records, _ = scan_videos([corpus], clip_seconds=1.0, min_seconds=0.5, workers=0, progress=False)
    return records


# ----------------------------------------------------------------------------- scan


def test_scan_accepts_and_rejects_exactly_the_right_files(corpus):
    records, rejected = scan_videos([corpus], workers=2, progress=False)
    accepted = {Path(record.path).name: record for record in records}
    assert set(accepted) == expected_names(GOOD_VIDEOS)
    for name, record in accepted.items():
        codec, width, height, fps, frames = GOOD_VIDEOS[name]
        assert (record.codec, record.width, record.height, record.num_frames) == (codec, width, height, frames)
        assert record.fps == pytest.approx(fps) and record.duration == pytest.approx(frames / fps)
        assert record.clip_start is None and record.clip_end is None
    reasons = {Path(entry.path).name: entry.reason for entry in rejected}
    assert reasons == {name: BAD_VIDEOS[name] for name in expected_names(BAD_VIDEOS)}
    assert all(entry.detail for entry in rejected)


def test_scan_thresholds_and_decoder_filter(corpus):
    records, rejected = scan_videos([corpus / "single_frame.webm"], min_seconds=0, workers=0, progress=False)
    assert [(r.num_frames, r.duration) for r in records] == [(1, pytest.approx(1 / 25))] and not rejected
    _, rejected = scan_videos([corpus / "vp9_25fps.webm"], min_seconds=2.5, workers=0, progress=False)
    assert [(e.reason, e.detail) for e in rejected] == [("too_short", "2.00 s is shorter than 2.5 s")]
    if HAS_H264:
        records, rejected = scan_videos([corpus / "h264_30fps.mp4", corpus / "vp9_25fps.webm"], decoder="dali-cpu",
                                        workers=0, progress=False)
        assert [r.codec for r in records] == ["vp9"] and [e.reason for e in rejected] == ["undecodable_codec"]
        records, _ = scan_videos([corpus / "variable_rate.mp4"], reject_variable_frame_rate=False, workers=0,
                                 progress=False)
        assert len(records) == 1 and records[0].num_frames == 40


def test_scan_catches_a_file_missing_only_its_last_frames(tmp_path):
    whole = write_video(tmp_path / "whole.webm", codec="vp9", fps=24, num_frames=96)
    write_truncated_copy(whole, tmp_path / "cut.webm", keep_fraction=0.93)
    records, rejected = scan_videos([tmp_path], workers=0, progress=False)
    assert [Path(r.path).name for r in records] == ["whole.webm"] and records[0].num_frames == 96
    assert [(Path(e.path).name, e.reason) for e in rejected] == [("cut.webm", "truncated")]
    assert "of the 4.00 s its header declares" in rejected[0].detail


@needs_h264
def test_h264_with_b_frames_is_probed_and_sampled_exactly(tmp_path):
    path = write_video(tmp_path / "bframes.mp4", codec="h264", fps=30, num_frames=90, gop=12,
                       encoder_options={"preset": "medium", "bf": "3"})
    records, rejected = scan_videos([path], clip_seconds=1.0, workers=0, progress=False)
    assert not rejected and [(r.clip_start, r.num_frames) for r in records] == [(0, 30), (1, 30), (2, 30)]
    for record in records:
        clip = extract_clip_pyav(record, 8, 32, 90)
        assert [jpeg_frame_number(jpeg) for jpeg in clip.jpegs] == expected_source_frames(record, 8) == clip.source_frames


def test_scan_never_modifies_inputs(corpus):
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in corpus.iterdir()}
    scan_videos([corpus], workers=0, progress=False, decode_check="full")
    assert {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in corpus.iterdir()} == before


def misbehaving_probe(path: str, decode_check: str):
    """A probe that hangs on *hang* files and kills its process on *crash* files (runs in a worker)."""
    from vito_fast.prepare.probe import probe_video

    if "hang" in path:
        time.sleep(60)
    if "crash" in path:
        os._exit(3)
    return probe_video(path, decode_check)


def test_probe_workers_survive_hangs_and_crashes(corpus):
    good = str(corpus / "vp9_25fps.webm")
    paths = ["/x/hang.webm", good, "/x/crash.webm", good, good]
    started = time.monotonic()
    results = dict(probe_videos(paths, workers=2, timeout=2.0, probe=misbehaving_probe))
    assert time.monotonic() - started < 30
    assert results[0].reason == "unreadable" and "longer than 2 s" in results[0].detail
    assert results[2].reason == "unreadable" and "crashed" in results[2].detail
    assert all(isinstance(results[index], VideoInfo) for index in (1, 3, 4))


def test_split_into_clips_covers_the_video_once():
    info = VideoInfo("v.webm", "vp9", 64, 48, 24.0, 168, 7.0, False)
    clips = split_into_clips(info, 3.0, min_seconds=1.0)
    assert [(c.clip_start, c.clip_end, c.num_frames) for c in clips] == [(0, 3, 72), (3, 6, 72), (6, 7, 24)]
    merged = split_into_clips(info, 3.0, min_seconds=1.5)  # a 1 s remainder joins the last clip
    assert [(c.clip_start, c.clip_end, c.num_frames) for c in merged] == [(0, 3, 72), (3, 7, 96)]
    assert [(c.clip_start, c.num_frames) for c in split_into_clips(info, None, 1.0)] == [(None, 168)]
    odd = VideoInfo("v.webm", "vp9", 64, 48, 25.0, 50, 2.0, False)
    assert sum(c.num_frames for c in split_into_clips(odd, 0.3, 0.1)) == 50


def test_manifest_round_trip_is_atomic_and_resolves_relative_paths(tmp_path):
    records = [ClipRecord("/data/a.webm", 50, 25.0, 64, 48, "vp9", 2.0),
               ClipRecord("clips/b.mp4", 30, 30000 / 1001, 80, 60, "h264", 1.001, "dog", 0.5, 1.501)]
    path = write_manifest(tmp_path / "m.jsonl", records)
    assert os.listdir(tmp_path) == ["m.jsonl"]
    assert "label" not in json.loads(path.read_text().splitlines()[0])
    loaded = read_manifest(path)
    assert loaded[0] == records[0]
    assert loaded[1].path == str(tmp_path / "clips/b.mp4") and loaded[1].label == "dog"
    assert loaded[1].fps == records[1].fps and loaded[1].clip_end == 1.501
    (tmp_path / "bad.jsonl").write_text('{"path": "a"}\n')
    with pytest.raises(VideoError, match="bad.jsonl:1"):
        read_manifest(tmp_path / "bad.jsonl")


# ----------------------------------------------------------------------------- frame store


def jpeg_frame_number(payload) -> int:
    return decode_frame_number(np.asarray(Image.open(io.BytesIO(bytes(payload))).convert("RGB")))


def expected_source_frames(record: ClipRecord, store_fps: float) -> list:
    start = record.clip_start or 0.0
    end = record.clip_end if record.clip_end is not None else record.duration
    count = math.ceil((end - start) * store_fps - 1e-6)
    return [math.floor((start + k / store_fps) * record.fps + 1e-6) for k in range(count)]


def test_frames_are_extracted_at_the_right_times(manifest, tmp_path):
    extract_frames(manifest, tmp_path / "store", fps=8, short_side=32, workers=2, progress=False)
    store = FrameStore(tmp_path / "store")
    assert len(store) == len(manifest) > 3
    for clip, record in enumerate(manifest):
        meta = store.clip(clip)
        expected = expected_source_frames(record, 8)
        assert meta.source_frames == expected and store.num_frames(clip) == len(expected)
        assert [jpeg_frame_number(store.frame_bytes(clip, k)) for k in range(len(expected))] == expected
        assert min(meta.width, meta.height) == 32 and meta.source == record.path
        image = Image.open(io.BytesIO(bytes(store.frame_bytes(clip, 0))))
        assert image.size == (meta.width, meta.height)
    store.validate()


def test_store_shards_and_index_round_trip(manifest, tmp_path):
    index_path = extract_frames(manifest, tmp_path, fps=5, short_side=32, shard_bytes=16_000, workers=1,
                                progress=False)
    index = json.loads(index_path.read_text())
    assert len(index["shards"]) > 1 and (index["fps"], index["short_side"], index["quality"]) == (5, 32, 90)
    with FrameStore(index_path) as store:
        members = {}
        for shard in store.shards:  # any tar tool sees the same frames as the index
            with tarfile.open(tmp_path / shard["name"]) as tar:
                for member in tar.getmembers():
                    members[member.name] = tar.extractfile(member).read()
        assert len(members) == sum(store.num_frames(c) for c in range(len(store)))
        for clip in range(len(store)):
            manifest_index = store.index["clips"][clip]["manifest_index"]
            for k in range(store.num_frames(clip)):
                assert bytes(store.frame_bytes(clip, k)) == members[f"{manifest_index:08d}/{k:06d}.jpg"]
    with pytest.raises(StoreError, match="shard-00000.json: made from another manifest or other settings"):
        extract_frames(manifest, tmp_path, fps=5, short_side=32, quality=80, shard_bytes=16_000, progress=False)
    assert extract_frames(manifest, tmp_path, fps=5, short_side=32, shard_bytes=16_000, progress=False) == index_path
    assert json.loads(index_path.read_text()) == index  # a finished store is left as it is


def test_interrupted_extraction_resumes_to_identical_store(manifest, tmp_path, monkeypatch):
    options = dict(fps=8, short_side=32, shard_bytes=12_000, workers=1, progress=False)
    extract_frames(manifest, tmp_path / "reference", **options)
    reference = {p.name: p.read_bytes() for p in (tmp_path / "reference").iterdir()}
    assert sum(name.endswith(".tar") for name in reference) >= 3

    total_frames = sum(name.endswith(".jpg") for tar in (tmp_path / "reference").glob("*.tar")
                       for name in tarfile.open(tar).getnames())
    original_add_frame, calls = ShardWriter.add_frame, []

    def add_frame_then_die(self, member, payload):
        calls.append(member)
        if len(calls) == total_frames // 2:
            raise KeyboardInterrupt("simulated kill")
        return original_add_frame(self, member, payload)

    monkeypatch.setattr(ShardWriter, "add_frame", add_frame_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract_frames(manifest, tmp_path / "store", **options)
    monkeypatch.undo()
    store_dir = tmp_path / "store"
    assert not (store_dir / "index.json").exists()
    sidecars = sorted(store_dir.glob("shard-*.json"))
    assert 1 <= len(sidecars) < sum(name.endswith(".tar") for name in reference)
    for sidecar in sidecars:  # every shard a sidecar claims is complete
        assert store_dir.joinpath(sidecar.stem + ".tar").read_bytes() == reference[sidecar.stem + ".tar"]
    # what a hard kill leaves behind: a temporary shard, and a renamed shard whose sidecar never came
    (store_dir / f"shard-{len(sidecars):05d}.tar.tmp").write_bytes(b"half a shard")
    (store_dir / f"shard-{len(sidecars):05d}.tar").write_bytes(b"renamed, no sidecar yet")

    finished_before = {s.stem: os.stat(store_dir / f"{s.stem}.tar").st_mtime_ns for s in sidecars}
    frames_finished = sum(len(clip["frame_sizes"]) for s in sidecars for clip in json.loads(s.read_text())["clips"])
    monkeypatch.setattr(ShardWriter, "add_frame", lambda self, m, p: (calls.append(m), original_add_frame(self, m, p))[1])
    calls.clear()
    extract_frames(manifest, store_dir, **options)
    assert {p.name: p.read_bytes() for p in store_dir.iterdir()} == reference
    assert len(calls) == total_frames - frames_finished  # finished shards were not redone
    assert all(os.stat(store_dir / f"{stem}.tar").st_mtime_ns == mtime for stem, mtime in finished_before.items())


def test_validate_names_a_truncated_or_corrupt_shard(manifest, tmp_path):
    extract_frames(manifest, tmp_path, fps=4, short_side=32, shard_bytes=12_000, workers=1, progress=False)
    FrameStore(tmp_path).validate()
    shard = tmp_path / "shard-00001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="shard-00001.tar"):
        FrameStore(tmp_path).validate()
    store = FrameStore(tmp_path)
    offset = store.index["clips"][0]["frame_offsets"][1]
    shard.write_bytes(data)
    first = tmp_path / "shard-00000.tar"
    corrupt = bytearray(first.read_bytes())
    corrupt[offset - 512: offset - 412] = b"x" * 100  # overwrite the member name in the tar header
    first.write_bytes(bytes(corrupt))
    with pytest.raises(StoreError, match=r"shard-00000.tar: clip 0 frame 1"):
        FrameStore(tmp_path).validate()
    (tmp_path / "index.json").unlink()
    with pytest.raises(StoreError, match="index.json"):
        FrameStore(tmp_path)


@needs_dali
def test_dali_cpu_extraction_picks_the_same_frames(manifest, tmp_path):
    vp9 = [record for record in manifest if record.codec == "vp9"]
    extract_frames(vp9, tmp_path / "dali", fps=8, short_side=32, device="dali-cpu", progress=False)
    extract_frames(vp9, tmp_path / "pyav", fps=8, short_side=32, workers=1, progress=False)
    dali, pyav = FrameStore(tmp_path / "dali"), FrameStore(tmp_path / "pyav")
    for clip in range(len(vp9)):
        assert dali.clip(clip).source_frames == pyav.clip(clip).source_frames
        assert (dali.clip(clip).width, dali.clip(clip).height) == (pyav.clip(clip).width, pyav.clip(clip).height)
        numbers = [jpeg_frame_number(dali.frame_bytes(clip, k)) for k in range(dali.num_frames(clip))]
        assert numbers == dali.clip(clip).source_frames
    dali.validate()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidiactl"),
                    reason="a GPU may be present")
def test_gpu_extraction_without_a_gpu_says_what_is_missing(manifest, tmp_path):
    with pytest.raises(VideoError, match="(CUDA GPU|NVIDIA DALI)"):
        extract_frames(manifest[:1], tmp_path, device="gpu", progress=False)


@pytest.mark.cuda
@needs_dali
@needs_h264
def test_gpu_extraction_decodes_h264_with_nvdec(manifest, tmp_path):
    records = [record for record in manifest if record.codec == "h264"]
    extract_frames(records, tmp_path, fps=8, short_side=32, device="gpu", progress=False)
    store = FrameStore(tmp_path)
    for clip, record in enumerate(records):
        expected = expected_source_frames(record, 8)
        assert [jpeg_frame_number(store.frame_bytes(clip, k)) for k in range(store.num_frames(clip))] == expected


def test_import_never_touches_dali():
    code = ("import sys, vito_fast, vito_fast.data.frame_store, vito_fast.prepare.frame_store_write, "
            "vito_fast.prepare.transcode, vito_fast.cli.prepare; "
            "assert not any(m.startswith('nvidia') for m in sys.modules), 'DALI imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- transcode


@pytest.fixture(scope="module")
def transcoded(manifest, tmp_path_factory):
    return manifest, transcode_clips(manifest, tmp_path_factory.mktemp("vp9"), codec="vp9", short_side=32, gop=4,
                                     workers=2, progress=False)


def test_transcode_keeps_exactly_the_clip_frames(transcoded):
    sources, outputs = transcoded
    assert len(outputs) == len(sources)
    for source, output in zip(sources, outputs):
        first = math.ceil((source.clip_start or 0) * source.fps - 1e-6)
        assert read_frame_numbers(output.path) == list(range(first, first + source.num_frames))
        assert output.codec == "vp9" and min(output.width, output.height) == 32
        assert output.width % 2 == 0 and output.height % 2 == 0 and output.num_frames == source.num_frames
    assert read_manifest(Path(outputs[0].path).parent / "manifest.jsonl") == outputs


def test_transcode_rerun_reuses_outputs(transcoded):
    sources, outputs = transcoded
    folder = Path(outputs[0].path).parent
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.webm")}
    again = transcode_clips(sources, folder, codec="vp9", short_side=32, gop=4, workers=1, progress=False)
    assert again == outputs and {p.name: p.stat().st_mtime_ns for p in folder.glob("*.webm")} == before


@needs_dali
def test_transcoded_vp9_is_decodable_by_dali_on_the_cpu(transcoded):
    from nvidia.dali import fn, pipeline_def

    sources, outputs = transcoded
    first_frames = [math.ceil((s.clip_start or 0) * s.fps - 1e-6) for s in sources]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def reader():
        video, label = fn.experimental.readers.video(
            filenames=[o.path for o in outputs], labels=list(range(len(outputs))), sequence_length=3, step=3,
            device="cpu", random_shuffle=False)
        return video, label

    pipeline = reader()
    pipeline.build()
    seen = set()
    for _ in range(6):
        video, label = pipeline.run()
        frames, clip = np.asarray(video[0]), int(np.asarray(label[0]).ravel()[0])
        numbers = [decode_frame_number(frame) for frame in frames]
        assert numbers[1] == numbers[0] + 1 and numbers[2] == numbers[0] + 2
        assert first_frames[clip] <= numbers[0] < first_frames[clip] + outputs[clip].num_frames
        seen.add(clip)
    assert seen


# ----------------------------------------------------------------------------- CLI


def test_cli_scan_frames_transcode(corpus, tmp_path, capsys):
    manifest_path = tmp_path / "manifest.jsonl"
    assert cli_main(["prepare", "scan", str(corpus), "-o", str(manifest_path), "--clip-seconds", "1",
                     "--workers", "2", "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "usable clips" in summary and "total hours" in summary and "truncated" in summary
    rejected = [json.loads(line) for line in (tmp_path / "manifest.rejected.jsonl").read_text().splitlines()]
    assert {Path(e["path"]).name: e["reason"] for e in rejected} == {n: BAD_VIDEOS[n] for n in expected_names(BAD_VIDEOS)}
    records = read_manifest(manifest_path)
    assert f"usable clips {len(records):>10}".split() == [line for line in summary.splitlines()
                                                          if line.startswith("usable clips")][0].split()

    assert cli_main(["prepare", "frames", str(manifest_path), "-o", str(tmp_path / "store"), "--fps", "4",
                     "--short-side", "32", "--workers", "1", "--no-progress"]) == 0
    assert f"{len(records)} clips" in capsys.readouterr().out
    FrameStore(tmp_path / "store").validate()

    assert cli_main(["prepare", "transcode", str(manifest_path), "-o", str(tmp_path / "vp9"), "--short-side", "32",
                     "--gop", "4", "--workers", "2", "--no-progress"]) == 0
    assert len(read_manifest(tmp_path / "vp9" / "manifest.jsonl")) == len(records)


def test_cli_rejects_bad_arguments_and_missing_files(tmp_path, capsys):
    assert cli_main(["prepare", "scan", str(tmp_path / "nope"), "-o", str(tmp_path / "m.jsonl")]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli_main(["prepare", "frames", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "s")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert cli_main(["prepare", "frames", "m.jsonl", "-o", "s", "--fps", "0"]) == 2
    assert cli_main(["prepare", "transcode", "m.jsonl", "-o", "d", "--codec", "av1"]) == 2
    assert cli_main(["prepare"]) == 2
    assert cli_main(["prepare", "scan", str(tmp_path)]) == 2  # -o is required
    write_text_file(tmp_path / "notes.mp4")
    assert cli_main(["prepare", "scan", str(tmp_path), "-o", str(tmp_path / "m.jsonl"), "--no-progress",
                     "--workers", "0"]) == 1  # nothing usable
    assert "no usable video" in capsys.readouterr().err


def test_scan_names_clips_far_from_random_access_and_the_nvdec_preset_fixes_them(tmp_path, capsys):
    import av
    from videos import write_video

    from vito_fast.prepare.scan import frames_per_random_frame

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "short_gop.webm", codec="vp9", width=64, height=48, fps=25, num_frames=40, gop=10)
    write_video(tmp_path / "videos" / "long_gop.webm", codec="vp9", width=64, height=48, fps=25, num_frames=48, gop=48)
    manifest = tmp_path / "manifest.jsonl"
    assert cli_main(["prepare", "scan", str(tmp_path / "videos"), "-o", str(manifest), "--workers", "0",
                     "--no-progress", "--min-seconds", "0.5"]) == 0
    summary = capsys.readouterr().out
    costs = {Path(record.path).name: frames_per_random_frame(record) for record in read_manifest(manifest)}
    assert costs == {"short_gop.webm": 5.5, "long_gop.webm": 24.5}  # frames 1..10 per GOP of 10; 1..48
    assert "clips above 16" in summary and "1 of 2 clips have keyframes far apart" in summary
    assert "--preset nvdec" in summary
    assert cli_main(["prepare", "transcode", str(manifest), "-o", str(tmp_path / "nvdec"), "--preset", "nvdec",
                     "--short-side", "48", "--workers", "1", "--no-progress"]) == 0
    assert "to h264, a keyframe every 16 frames" in capsys.readouterr().out
    transcoded = read_manifest(tmp_path / "nvdec" / "manifest.jsonl")
    assert {record.codec for record in transcoded} == {"h264"}
    for record in transcoded:
        assert np.all(np.diff(record.keyframes) == 16) and frames_per_random_frame(record) <= 8.5
        with av.open(record.path) as container:  # no B-frames: frames come out in the order they are stored
            assert container.streams.video[0].codec_context.has_b_frames == 0


def test_scan_in_parts_and_merge_write_exactly_what_one_scan_writes(corpus, tmp_path, capsys):
    """Parts I/N are contiguous blocks of the sorted files; the merge joins them in order. Different
    settings, another file list, a missing or doubled part are refused by name."""
    import shutil

    common = ["--clip-seconds", "1", "--workers", "0", "--no-progress"]
    assert cli_main(["prepare", "scan", str(corpus), "-o", str(tmp_path / "whole.jsonl"), *common]) == 0
    whole = (tmp_path / "whole.jsonl").read_bytes()
    whole_rejected = (tmp_path / "whole.rejected.jsonl").read_bytes()
    assert whole and whole_rejected
    for count in (2, 3):
        parts = [tmp_path / f"part{index}of{count}.jsonl" for index in range(count)]
        for index, part in reversed(list(enumerate(parts))):  # the order parts run in does not matter
            assert cli_main(["prepare", "scan", str(corpus), "-o", str(part), "--part", f"{index}/{count}", *common]) == 0
        assert 0 < len(parts[0].read_bytes()) < len(whole)
        merged = tmp_path / f"merged{count}.jsonl"
        assert cli_main(["prepare", "merge", *map(str, reversed(parts)), "-o", str(merged)]) == 0
        assert merged.read_bytes() == whole
        assert (tmp_path / f"merged{count}.rejected.jsonl").read_bytes() == whole_rejected
    capsys.readouterr()
    parts = [tmp_path / f"part{index}of2.jsonl" for index in range(2)]
    assert cli_main(["prepare", "merge", str(parts[0]), "-o", str(tmp_path / "m.jsonl")]) == 1
    assert "parts 1/2 are missing" in capsys.readouterr().err
    assert cli_main(["prepare", "merge", str(parts[0]), str(parts[0]), str(parts[1]), "-o", str(tmp_path / "m.jsonl")]) == 1
    assert "given twice" in capsys.readouterr().err
    other = tmp_path / "other1of2.jsonl"
    assert cli_main(["prepare", "scan", str(corpus), "-o", str(other), "--part", "1/2", "--clip-seconds", "2",
                     "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli_main(["prepare", "merge", str(parts[0]), str(other), "-o", str(tmp_path / "m.jsonl")]) == 1
    assert "differ in the scan settings" in capsys.readouterr().err
    moved = tmp_path / "moved"
    shutil.copytree(corpus, moved)
    (moved / "extra.webm").write_bytes((corpus / "vp9_25fps.webm").read_bytes())
    extra = tmp_path / "extra1of2.jsonl"
    assert cli_main(["prepare", "scan", str(moved), "-o", str(extra), "--part", "1/2", *common]) == 0
    capsys.readouterr()
    assert cli_main(["prepare", "merge", str(parts[0]), str(extra), "-o", str(tmp_path / "m.jsonl")]) == 1
    assert "differ in the list of files" in capsys.readouterr().err
    assert cli_main(["prepare", "merge", str(tmp_path / "whole.jsonl"), "-o", str(tmp_path / "m.jsonl")]) == 1
    assert "not written by `prepare scan --part I/N`" in capsys.readouterr().err
    assert cli_main(["prepare", "scan", str(corpus), "-o", str(tmp_path / "x.jsonl"), "--part", "2/2"]) == 1
    assert "need 0 <= I < N" in capsys.readouterr().err


def test_frames_in_parts_and_merge_give_the_clips_and_frames_of_one_extraction(manifest, tmp_path, capsys):
    """Each part extracts a contiguous block of the manifest's clips into a store of its own; the merge
    links their shards into one store: the same clips, frames (the same JPEG bytes) and labels as one
    extraction, shards split at the parts' boundaries."""
    from vito_fast.data.frame_store_index import clip_documents, read_index

    path = write_manifest(tmp_path / "manifest.jsonl", manifest)
    common = ["--fps", "4", "--short-side", "32", "--workers", "1", "--no-progress"]
    assert cli_main(["prepare", "frames", str(path), "-o", str(tmp_path / "whole"), *common]) == 0
    for index in (1, 0):
        assert cli_main(["prepare", "frames", str(path), "-o", str(tmp_path / f"part{index}"), "--part", f"{index}/2",
                         *common]) == 0
    assert cli_main(["prepare", "merge", str(tmp_path / "part1"), str(tmp_path / "part0"), "-o",
                     str(tmp_path / "merged")]) == 0
    assert f"({len(manifest)} clips" in capsys.readouterr().out
    whole, merged = FrameStore(tmp_path / "whole"), FrameStore(tmp_path / "merged")
    merged.validate()
    assert len(whole) == len(merged) == len(manifest) and whole.label_names == merged.label_names
    assert len(merged.shards) == 2  # one per part here: shards never span the parts' boundary
    for clip in range(len(whole)):
        assert whole.source(clip) == merged.source(clip)
        count = len(whole.frame_offsets(clip))
        assert count == len(merged.frame_offsets(clip)) > 0
        for frame in range(count):
            assert whole.frame_bytes(clip, frame) == merged.frame_bytes(clip, frame)
    documents = {name: clip_documents(read_index(tmp_path / name).arrays, read_index(tmp_path / name).header["labels"])
                 for name in ("whole", "merged")}
    for one, other in zip(documents["whole"], documents["merged"]):
        assert {key: value for key, value in one.items() if key not in ("shard", "frame_offsets")} == \
            {key: value for key, value in other.items() if key not in ("shard", "frame_offsets")}
    whole.close()
    merged.close()
    capsys.readouterr()
    assert cli_main(["prepare", "merge", str(tmp_path / "part0"), "-o", str(tmp_path / "m")]) == 1
    assert "parts 1/2 are missing" in capsys.readouterr().err
    assert cli_main(["prepare", "merge", str(tmp_path / "whole"), "-o", str(tmp_path / "m")]) == 1
    assert "not written by `prepare frames --part I/N`" in capsys.readouterr().err
    assert cli_main(["prepare", "frames", str(path), "-o", str(tmp_path / "other1"), "--part", "1/2", "--fps", "2",
                     "--short-side", "32", "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli_main(["prepare", "merge", str(tmp_path / "part0"), str(tmp_path / "other1"), "-o", str(tmp_path / "m")]) == 1
    assert "parts of different extractions" in capsys.readouterr().err
