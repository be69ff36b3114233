"""Data on the network (vito_fast.storage.remote): a frame store read over HTTP from a loopback server
with Range support gives what the same store gives on disk; failures are retried, then the sample
is replaced and the object named."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fsspec", reason="fsspec is not installed: pip install 'vito_fast[remote]'")
pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
from range_server import RangeServer  # noqa: E402
from videos import write_small_clips  # noqa: E402

from vito_fast.data import FrameStore, LoaderConfig, PairLoader  # noqa: E402
from vito_fast.data.manifest import write_manifest  # noqa: E402
from vito_fast.prepare import extract_frames, scan_videos  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote")
    write_small_clips(folder / "videos")
    records, _ = scan_videos([str(folder / "videos")], workers=0, progress=False, min_seconds=0.5)
    for index, record in enumerate(records):
        record.label = f"class{index % 2}"
    manifest = write_manifest(folder / "manifest.jsonl", records)
    extract_frames(manifest, folder / "served" / "store", fps=10, short_side=48, quality=90, workers=1,
                   progress=False, shard_bytes=20_000)
    return folder / "served"


def test_a_store_over_http_reads_what_the_disk_holds(store):
    with RangeServer(store) as server:
        local, remote = FrameStore(store / "store"), FrameStore(server.url + "/store")
        assert len(remote) == len(local) and remote.label_names == local.label_names
        assert len(remote.shards) > 1
        pairs = [(clip, frame) for clip in range(len(local)) for frame in (0, local.num_frames(clip) - 1)]
        assert remote.read_frames(pairs) == local.read_frames(pairs)
        ranged = [header for method, path, header in server.requests if method == "GET" and path.endswith(".tar")]
        assert ranged and all(header.startswith("bytes=") for header in ranged)  # never a whole shard
        with pytest.raises(Exception, match="validate a store where it was written"):
            remote.validate()


def test_the_loader_over_http_gives_the_local_batches_and_survives_failures(store):
    config = LoaderConfig(image_size=32, dtype="float32", num_threads=2, backend="torch")
    with PairLoader(str(store / "store"), 3, device="cpu", seed=4, config=config) as loader:
        expected = list(loader)
    with RangeServer(store) as server:
        with PairLoader(server.url + "/store", 3, device="cpu", seed=4, config=config) as loader:
            server.fail_next("shard-00000.tar", 2, status=503)  # retried: the batch is the same
            batches = list(loader)
            assert loader.stats.replaced == 0 and not loader.stats.failed_files
        for got, want in zip(batches, expected):
            np.testing.assert_array_equal(got["sample_ids"], want["sample_ids"])
            assert torch.equal(got["view1"], want["view1"]) and torch.equal(got["view2"], want["view2"])
        with PairLoader(server.url + "/store", 3, device="cpu", seed=4, config=config) as loader:
            server.fail_next("shard-00000.tar", 10_000, status=500)  # keeps failing: replaced and named
            with pytest.warns(RuntimeWarning, match="shard-00000.tar"):
                batches = list(loader)
            assert loader.stats.replaced > 0 and any("shard-00000.tar" in name for name in loader.stats.failed_files)
        assert len(batches) == len(expected)


@pytest.mark.parametrize("workers", [0, 1])
def test_videos_over_http_decode_to_the_local_batches(store, tmp_path, workers):
    """A manifest may name videos by URL (mixed with local paths): PyAV reads them through fsspec's
    ranged reads, from the keyframe before each frame; the batches are those of the local files."""
    import dataclasses

    from vito_fast.data.manifest import read_manifest

    videos = store.parent / "videos"
    local = read_manifest(store.parent / "manifest.jsonl")
    config = LoaderConfig(image_size=32, dtype="float32", num_threads=2, decode_workers=workers, backend="torch")
    with PairLoader(str(store.parent / "manifest.jsonl"), 3, device="cpu", seed=8, config=config) as loader:
        expected = list(loader)
    with RangeServer(videos.parent) as server:
        mixed = [dataclasses.replace(record, path=f"{server.url}/videos/{record.path.rsplit('/', 1)[1]}")
                 if index % 2 == 0 else record for index, record in enumerate(local)]
        manifest = write_manifest(tmp_path / "mixed.jsonl", mixed)
        with PairLoader(str(manifest), 3, device="cpu", seed=8, config=config) as loader:
            batches = list(loader)
            assert not loader.stats.failed_files
        requested = [header for method, path, header in server.requests if method == "GET" and path.endswith(".webm")]
    assert requested and all(header.startswith("bytes=") for header in requested)  # ranged reads, never whole
    for got, want in zip(batches, expected):
        np.testing.assert_array_equal(got["frame_indices"], want["frame_indices"])
        assert torch.equal(got["view1"], want["view1"]) and torch.equal(got["view2"], want["view2"])


def test_a_store_and_videos_in_an_s3_bucket_give_the_local_batches(store, s3_bucket, tmp_path):
    import dataclasses

    from vito_fast.data.manifest import read_manifest

    s3_bucket.put(str(store / "store"), "corpus/store", recursive=True)
    s3_bucket.put(str(store.parent / "videos"), "corpus/videos", recursive=True)
    config = LoaderConfig(image_size=32, dtype="float32", num_threads=2, decode_workers=1, backend="torch")
    for source, remote_source in (
            (str(store / "store"), "s3://corpus/store"),
            (str(store.parent / "manifest.jsonl"), str(write_manifest(tmp_path / "s3.jsonl", [
                dataclasses.replace(record, path=f"s3://corpus/videos/{record.path.rsplit('/', 1)[1]}")
                for record in read_manifest(store.parent / "manifest.jsonl")])))):
        with PairLoader(source, 3, device="cpu", seed=2, config=config) as loader:
            expected = list(loader)
        with PairLoader(remote_source, 3, device="cpu", seed=2, config=config) as loader:
            batches = list(loader)
            assert not loader.stats.failed_files, loader.stats.failed_files
        assert len(batches) == len(expected)
        for got, want in zip(batches, expected):
            np.testing.assert_array_equal(got["sample_ids"], want["sample_ids"])
            assert torch.equal(got["view1"], want["view1"]) and torch.equal(got["view2"], want["view2"])


def test_block_cache_serves_later_epochs_from_disk_and_stays_under_its_limit(store, tmp_path):
    from vito_fast.storage.remote import BlockCache

    config = LoaderConfig(image_size=32, dtype="float32", num_threads=2, backend="torch",
                          cache_dir=str(tmp_path / "cache"), cache_gb=1.0)
    with RangeServer(store) as server:
        with PairLoader(server.url + "/store", 3, device="cpu", seed=6, config=config) as loader:
            first = list(loader)
            fetched = sum(method == "GET" and path.endswith(".tar") for method, path, _ in server.requests)
            loader.set_epoch(0)
            again = list(loader)  # the same epoch: every block is on disk now
            assert sum(method == "GET" and path.endswith(".tar") for method, path, _ in server.requests) == fetched
        assert fetched > 0
        for one, other in zip(first, again):
            assert torch.equal(one["view1"], other["view1"])
    # the size limit: a cache of 3 blocks of 4 kB over a store of more keeps 3 and reads right
    small = BlockCache(tmp_path / "small", max_bytes=3 * 4096, block_bytes=4096)
    with RangeServer(store) as server:
        remote = FrameStore(server.url + "/store", cache=small)
        local = FrameStore(store / "store")
        pairs = [(clip, frame) for clip in range(len(local)) for frame in range(local.num_frames(clip))]
        assert remote.read_frames(pairs) == local.read_frames(pairs)
        small.evict()
        assert 0 < small.size_bytes <= 3 * 4096
    with pytest.raises(ValueError, match="below one block"):
        BlockCache(tmp_path / "tiny", max_bytes=10, block_bytes=4096)


def test_prepare_scan_lists_and_probes_a_bucket(store, s3_bucket, tmp_path):
    """`prepare scan s3://bucket/videos/` lists the prefix (sorted) and probes each object: the same
    records as the local scan but for the paths, keyframe index included."""
    import dataclasses

    from vito_fast.cli.main import main as cli_main
    from vito_fast.data.manifest import read_manifest
    from vito_fast.prepare.scan import scan_videos

    s3_bucket.put(str(store.parent / "videos"), "corpus/videos", recursive=True)
    local, _ = scan_videos([str(store.parent / "videos")], workers=0, progress=False, min_seconds=0.5)
    remote, rejected = scan_videos(["s3://corpus/videos/"], workers=1, progress=False, min_seconds=0.5)
    assert not rejected and len(remote) == len(local) > 0
    for one, other in zip(local, remote):
        assert other.path == f"s3://corpus/videos/{Path(one.path).name}"
        assert dataclasses.replace(other, path=one.path) == one
    with pytest.raises(FileNotFoundError, match="s3://corpus/elsewhere/"):
        scan_videos(["s3://corpus/elsewhere/"], workers=0, progress=False)
    assert cli_main(["prepare", "scan", "s3://corpus/videos/", "-o", str(tmp_path / "m.jsonl"), "--workers", "0",
                     "--min-seconds", "0.5", "--no-progress"]) == 0
    assert [record.path for record in read_manifest(tmp_path / "m.jsonl")] == [record.path for record in remote]


def test_a_protocol_whose_package_is_missing_names_the_extra(monkeypatch, tmp_path, capsys):
    """gcsfs missing (hidden here if installed): the loader and `prepare scan` say in one line which extra installs it."""
    import sys

    from vito_fast.cli.main import main as cli_main
    from vito_fast.errors import MissingExtra

    monkeypatch.setitem(sys.modules, "gcsfs", None)  # import gcsfs fails as when it is not installed
    with pytest.raises(MissingExtra, match=r"gs://bucket/store: the gs:// protocol needs gcsfs: pip install 'vito_fast\[gcs\]'"):
        PairLoader("gs://bucket/store", 2, device="cpu", seed=0)
    assert cli_main(["prepare", "scan", "gs://bucket/videos/", "-o", str(tmp_path / "m.jsonl")]) == 1
    error = capsys.readouterr().err.strip()
    assert error == "vito-fast prepare scan: gs://bucket/videos/: the gs:// protocol needs gcsfs: pip install 'vito_fast[gcs]'"


def test_an_object_that_fails_every_retry_is_quarantined_for_its_loader(store, monkeypatch):
    """A shard or video that keeps failing costs timeout x attempts once per loader, not at every sample
    that reads it: that loader's later reads of it fail at once for QUARANTINE_SECONDS; another loader's
    reads (another scope) and reads outside loaders still try."""
    from vito_fast.storage import remote
    from vito_fast.storage.remote import RemoteFiles, RemoteSettings
    from vito_fast.errors import StoreError

    with RangeServer(store) as server:
        url = server.url + "/store/shard-00000.tar"
        server.fail_next("shard-00000.tar", 10_000, status=500)
        mine = RemoteFiles(url, RemoteSettings(timeout=2.0, retries=1, backoff=0.0, quarantine_scope="loader-a"))
        with pytest.raises(StoreError, match="failed 2 times"):
            mine.read_range(url, 0, 100)
        tried = len(server.requests)
        with pytest.raises(StoreError, match=r"failed 0 s ago \(.*500.*\); not tried again"):  # and why it failed
            mine.read_range(url, 100, 100)
        assert isinstance(mine.read_ranges([(url, 0, 10), (url, 10, 10)])[1], StoreError)
        assert len(server.requests) == tried  # no request: quarantined
        for scope in ("loader-b", None):
            other = RemoteFiles(url, RemoteSettings(timeout=2.0, retries=0, backoff=0.0, quarantine_scope=scope))
            with pytest.raises(StoreError, match="failed 1 times"):
                other.read_range(url, 0, 100)
        assert len(server.requests) == tried + 2
        monkeypatch.setattr(remote, "QUARANTINE_SECONDS", 0.0)  # the quarantine is over: tried again
        with pytest.raises(StoreError, match="failed 2 times"):
            mine.read_range(url, 0, 100)


def test_a_scan_sees_an_object_replaced_since_this_process_read_it(store, s3_bucket, tmp_path):
    """A notebook scans a bucket, a video is uploaded again with other content, the scan runs again in the
    same process: it probes the new object (its size is asked again, not remembered)."""
    from vito_fast.prepare.scan import scan_videos

    from videos import write_noisy_video

    short, longer = (write_noisy_video(tmp_path / f"{frames}.webm", frames, gop=5) for frames in (10, 30))
    s3_bucket.put(str(short), "corpus/again/clip.webm")
    found, rejected = scan_videos(["s3://corpus/again/"], workers=0, progress=False, min_seconds=0.5)
    assert len(found) == 1, rejected
    first = found[0]
    s3_bucket.put(str(longer), "corpus/again/clip.webm")
    found, rejected = scan_videos(["s3://corpus/again/"], workers=0, progress=False, min_seconds=0.5)
    assert len(found) == 1, rejected
    second = found[0]
    assert first.num_frames == 10 and first.file_bytes == short.stat().st_size
    assert not rejected and second.num_frames == 30 and second.file_bytes == longer.stat().st_size


def test_a_block_the_cache_cannot_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A full disk while a block is stored: the error rises and no temporary file stays behind (the
    eviction passes over dot-named files, so one left would hold its bytes for good)."""
    import errno
    import os

    from vito_fast.storage.remote import BlockCache

    cache = BlockCache(tmp_path / "cache", max_bytes=1 << 20, block_bytes=1 << 10)

    def full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        cache.read("https://host/object", 0, 100, lambda start, end: bytes(end - start))
    assert [path for path in (tmp_path / "cache").rglob("*") if path.is_file()] == []
