"""Remote videos read by GOP (vito_fast.storage.ranged_file): the file object PyAV reads serves the bytes
of the object exactly, fetches hinted spans in one round trip, and a sample of a remote video fetches
the groups of pictures its frames sit in (from the keyframe byte offsets the scan records)."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from vito_fast.storage.ranged_file import FIRST_BLOCK_BYTES, RangedFile

from videos import write_noisy_video  # noqa: E402


def ranged(data: bytes):
    calls = []

    def read_ranges(spans):
        calls.append(list(spans))
        return [data[offset:offset + size] for offset, size in spans]

    return RangedFile(read_ranges, len(data), "object"), calls


def read_exactly(file, size: int) -> bytes:
    """Reads until ``size`` bytes or the end (a read returns what one span holds, like a raw file)."""
    pieces = []
    while size > 0:
        piece = file.read(size)
        if not piece:
            break
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)


def test_reads_give_the_objects_bytes_wherever_they_seek():
    rng = np.random.default_rng()
    data = rng.integers(0, 256, int(rng.integers(300_000, 900_000)), dtype=np.uint8).tobytes()
    file, _ = ranged(data)
    for _ in range(50):
        offset, size = int(rng.integers(0, len(data))), int(rng.integers(1, 200_000))
        file.seek(offset)
        assert read_exactly(file, size) == data[offset:offset + size]
    file.seek(-10, io.SEEK_END)
    assert file.read() == data[-10:] and file.read(5) == b""
    assert file.bytes_fetched <= 50 * (200_000 + 4 * FIRST_BLOCK_BYTES) and file.requests > 0


def test_hinted_spans_come_in_one_round_trip_and_blocks_grow_only_when_reading_on():
    data = bytes(range(256)) * 8192  # 2 MiB
    file, calls = ranged(data)
    file.hint([(500_000, 700_000), (100_000, 300_000), (100_000, 300_000)])
    assert calls == [[(100_000, 200_000), (500_000, 200_000)]]  # sorted, once each, together
    file.seek(150_000)
    assert read_exactly(file, 100_000) == data[150_000:250_000] and len(calls) == 1  # served from the hinted span
    file.hint([(120_000, 180_000)])  # held already: no request
    assert len(calls) == 1
    calls.clear()
    file.seek(1_000_000)
    while file.tell() < 1_600_000:
        file.read(32_768)
    sizes = [size for (call,) in calls for _, size in [call]]
    assert sizes[:3] == [FIRST_BLOCK_BYTES, FIRST_BLOCK_BYTES, 2 * FIRST_BLOCK_BYTES]  # then doubling
    calls.clear()
    file.seek(450_000)  # a block stops where a held span starts
    assert read_exactly(file, 100_000) == data[450_000:550_000]
    assert calls == [[(450_000, 50_000)]]


@pytest.mark.parametrize("name, codec", [("clip.webm", "vp9"), ("clip.mp4", "h264")])
def test_a_remote_sample_reads_the_planned_spans_in_one_round_trip(tmp_path, name, codec):
    """A sample of a remote video reads exactly ``planned_spans``: its opening (for WebM the Cues at its end,
    for an MP4 written without faststart the moov there), the GOPs of its frames (H.264 with B-frames
    too), joined where FFmpeg reads through a short forward seek. No other request: one round trip."""
    pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
    from range_server import RangeServer

    from vito_fast.data.video_source import VideoFrameReader, planned_spans
    from vito_fast.prepare import scan_videos

    (tmp_path / "videos").mkdir()
    path = write_noisy_video(tmp_path / "videos" / name, num_frames=48, gop=8, codec=codec)
    (record,), _ = scan_videos([str(tmp_path / "videos")], workers=0, progress=False, min_seconds=0.5)
    offsets, size = record.keyframe_bytes, path.stat().st_size
    assert offsets is not None and len(offsets) == len(record.keyframes) + 1
    assert offsets == sorted(offsets) and offsets[-1] == size
    with RangeServer(tmp_path) as server:
        url = f"{server.url}/videos/{name}"
        for frames in ([11, 35], [1, 2], [47, 9], [17, 21]):
            want = VideoFrameReader().read(record.path, record.fps, frames, record.keyframes, record.keyframe_pts)
            seen = len(server.requests)
            got = VideoFrameReader().read(url, record.fps, frames, record.keyframes, record.keyframe_pts,
                                          record.keyframe_bytes, file_bytes=size)
            for one, other in zip(got, want):
                np.testing.assert_array_equal(one, other)
            ranges = sorted(header for method, _, header in server.requests[seen:])
            plan = planned_spans(url, frames, record.keyframes, record.keyframe_bytes, size, opening=True)
            assert ranges == sorted(f"bytes={start}-{end - 1}" for start, end in plan), frames
            assert sum(end - start for start, end in plan) < size  # not the whole file


def test_remote_videos_keep_their_blocks_in_the_cache_for_later_epochs(tmp_path):
    pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
    from range_server import RangeServer

    from vito_fast.data import LoaderConfig, PairLoader
    from vito_fast.data.manifest import write_manifest
    from vito_fast.prepare import scan_videos

    (tmp_path / "videos").mkdir()
    for index in range(2):
        write_noisy_video(tmp_path / "videos" / f"clip{index}.webm", num_frames=30, gop=10)
    records, _ = scan_videos([str(tmp_path / "videos")], workers=0, progress=False, min_seconds=0.5)
    config = LoaderConfig(image_size=32, dtype="float32", num_threads=2, backend="torch", video_decoder="pyav",
                          cache_dir=str(tmp_path / "cache"), cache_gb=1.0)
    with RangeServer(tmp_path) as server:
        remote = [dataclasses.replace(record, path=f"{server.url}/videos/{Path(record.path).name}")
                  for record in records]
        manifest = write_manifest(tmp_path / "remote.jsonl", remote * 3)
        with PairLoader(str(manifest), 2, device="cpu", seed=4, config=config) as loader:
            first = list(loader)
            fetched = len(server.requests)
            loader.set_epoch(0)
            again = list(loader)  # the same samples: every block they read is on disk now
            assert len(server.requests) == fetched > 0
    assert any((tmp_path / "cache").rglob("0*"))
    for one, other in zip(first, again):
        assert torch.equal(one["view1"], other["view1"])


def test_a_chunk_of_remote_samples_is_fetched_in_one_round_trip(tmp_path):
    """A decode worker gets its samples in chunks: JobRunner.fetch_ahead fetches every remote sample's
    header and GOPs together (one wait for the network), and the samples then decode without a request."""
    pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
    from range_server import RangeServer

    from vito_fast.data.manifest import write_manifest
    from vito_fast.data.pair_sources import VideoFileSource
    from vito_fast.data.sample_jobs import JobRunner
    from vito_fast.prepare import scan_videos

    (tmp_path / "videos").mkdir()
    for index in range(3):
        write_noisy_video(tmp_path / "videos" / f"clip{index}.webm", num_frames=30, gop=10)
    records, _ = scan_videos([str(tmp_path / "videos")], workers=0, progress=False, min_seconds=0.5)
    assert all(record.file_bytes == Path(record.path).stat().st_size for record in records)
    local = VideoFileSource(write_manifest(tmp_path / "local.jsonl", records))
    with RangeServer(tmp_path) as server:
        remote = VideoFileSource(write_manifest(tmp_path / "remote.jsonl", [
            dataclasses.replace(record, path=f"{server.url}/videos/{Path(record.path).name}") for record in records]))
        jobs = [remote.job(clip, frames) for clip, frames in ((0, [3, 25]), (1, [12, 14]), (2, [0, 29]))]
        runner = JobRunner(max_open=1)
        runner.fetch_ahead(jobs)
        fetched = len(server.requests)
        results = [runner(job) for job in jobs]
        assert len(server.requests) == fetched and all(method == "GET" for method, _, _ in server.requests)
    for (clip, frames), result in zip(((0, [3, 25]), (1, [12, 14]), (2, [0, 29])), results):
        want = local.load(clip, frames)
        np.testing.assert_array_equal(result["image0"], want["image0"])
        np.testing.assert_array_equal(result["image1"], want["image1"])
