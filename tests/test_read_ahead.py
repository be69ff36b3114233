"""Reading ahead of the loader (vito_fast.storage.read_ahead): the bytes of the batches ahead are fetched
into shared memory while earlier batches decode, and a batch read ahead needs no network at all."""
from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fsspec", reason="fsspec is not installed: pip install 'vito_fast[remote]'")
pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
from range_server import RangeServer  # noqa: E402
from videos import write_noisy_video  # noqa: E402

from vito_fast.data import LoaderConfig, LoaderStats, PairLoader  # noqa: E402
from vito_fast.data.host import HostPreparation  # noqa: E402
from vito_fast.data.manifest import write_manifest  # noqa: E402
from vito_fast.data.pair_sources import open_source  # noqa: E402
from vito_fast.data.sample_order import SampleOrder  # noqa: E402
from vito_fast.data.video_source import READ_BUFFER_BYTES, SHORT_SEEK_BYTES, merge_spans, planned_spans  # noqa: E402
from vito_fast.storage import read_ahead  # noqa: E402

CLIPS, BATCH, SEED = 6, 2, 3
CONFIG = LoaderConfig(image_size=32, dtype="float32", num_threads=2, backend="torch", max_open_videos=1,
                      remote_timeout=0.5, remote_retries=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six noisy VP9 clips (GOPs of tens of kB, so a sample reads parts of its file) and their scan."""
    from vito_fast.prepare import scan_videos

    folder = tmp_path_factory.mktemp("read_ahead")
    (folder / "videos").mkdir()
    for index in range(CLIPS):
        write_noisy_video(folder / "videos" / f"clip{index}.webm", num_frames=40, gop=8)
    records, _ = scan_videos([str(folder / "videos")], workers=0, progress=False, min_seconds=0.5)
    assert len(records) == CLIPS and all(record.keyframe_bytes and record.file_bytes for record in records)
    return folder, records


def url_manifest(corpus, url: str, path: Path) -> Path:
    folder, records = corpus
    return write_manifest(path, [dataclasses.replace(record, path=f"{url}/videos/{Path(record.path).name}")
                                 for record in records])


def test_spans_closer_than_a_short_seek_are_joined():
    bridge = SHORT_SEEK_BYTES + READ_BUFFER_BYTES
    far = (200 + bridge, 300 + bridge)
    assert merge_spans([far, (0, 100), (50, 120)]) == [(0, 120), far]  # sorted, overlaps joined, far apart kept
    assert merge_spans([(0, 100), (100 + bridge, 200 + bridge)]) == [(0, 200 + bridge)]  # FFmpeg reads the gap
    assert merge_spans([(0, 100), (101 + bridge, 200 + bridge)]) == [(0, 100), (101 + bridge, 200 + bridge)]
    assert merge_spans([(10, 10), (0, 5), (3, 8)], bridge=0) == [(0, 8)]  # empty spans dropped, overlaps joined


def test_bytes_held_serve_their_reader_once_and_stay_bounded(monkeypatch):
    data = bytes(range(256)) * 4
    read_ahead.hold({("http://a/x", 100, 400): data[100:500]})
    assert read_ahead.held("http://a/x", 150, 50) == data[150:200]  # any span the piece covers
    assert read_ahead.held("http://a/x", 450, 100) is None  # past its end: not held
    assert read_ahead.take_held([("http://a/x", 100, 10), ("http://a/x", 490, 10), ("http://b/x", 0, 1)]) == [
        data[100:110], data[490:500], None]  # both from the one piece, which then goes
    assert read_ahead.held("http://a/x", 100, 10) is None
    monkeypatch.setattr(read_ahead, "HELD_LIMIT", 1000)
    for index in range(5):
        read_ahead.hold({(f"http://c/{index}", 0, 400): bytes(400)})
    assert read_ahead.held("http://c/0", 0, 400) is None and read_ahead.held("http://c/4", 0, 400) is not None
    read_ahead.take_held([(f"http://c/{index}", 0, 400) for index in range(5)])


def test_a_spool_is_written_whole_once_and_taken(corpus, tmp_path):
    folder, records = corpus
    spool = tmp_path / "spool"
    spool.mkdir()
    with RangeServer(folder) as server:
        url = f"{server.url}/videos/clip1.webm"
        requests = [(url, 0, 1000), (url, 5000, 3000), (f"{server.url}/videos/missing.webm", 0, 10)]
        assert read_ahead.spool(str(spool), requests) == 4000  # the missing object is left to its reader
        assert read_ahead.spool(str(spool), requests[:2]) == 0 and len(server.requests) == 3  # held already
    whole = (folder / "videos" / "clip1.webm").read_bytes()
    assert read_ahead.take(str(spool), requests) == {requests[0]: whole[:1000], requests[1]: whole[5000:8000]}
    assert sorted(os.listdir(spool)) == sorted(os.path.basename(read_ahead.span_file(str(spool), request))
                                              for request in requests[:2])  # no partial file left
    assert read_ahead.spool(str(tmp_path / "gone"), requests) == 0  # a batch read already: nothing fetched


def _settled(folder: str, seconds: float = 30.0) -> int:
    """Files in ``folder`` once its count has not changed for half a second (the fetchers are done)."""
    deadline, last, since = time.monotonic() + seconds, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len([name for name in os.listdir(folder) if not name.startswith(".")])
        if count != last:
            last, since = count, time.monotonic()
        elif count and time.monotonic() - since > 0.5:
            return count
        time.sleep(0.05)
    return last


@pytest.mark.parametrize("workers, decoder", [(0, "pyav"), (1, "pyav"), (1, "dali")])
def test_a_batch_read_ahead_needs_no_network(corpus, tmp_path, workers, decoder):
    """After batch 0 the next two batches' bytes lie in the spool: with the server failing every request
    they still load, the same as from disk, nothing replaced; each batch's folder goes once it is
    prepared, the spool with the host. PyAV's samples read their GOPs; DALI's (whole files) their files."""
    folder, records = corpus
    config = dataclasses.replace(CONFIG, decode_workers=workers, read_ahead=2)
    local = open_source(str(write_manifest(tmp_path / "local.jsonl", records)), decoder)
    order = SampleOrder(len(local), BATCH, seed=SEED)
    expected = HostPreparation(local, order, config, seed=SEED, pinned=False, stats=LoaderStats())
    assert expected.read_ahead is None  # local files: nothing to read ahead
    with RangeServer(folder) as server:
        source = open_source(str(url_manifest(corpus, server.url, tmp_path / "remote.jsonl")), decoder)
        host = HostPreparation(source, order, config, seed=SEED, pinned=False, stats=LoaderStats())
        try:
            first = host.prepare(0, 0)
            ahead = [host.read_ahead.folder(0, 1), host.read_ahead.folder(0, 2)]
            assert all(_settled(path) > 0 for path in ahead)
            for index in range(CLIPS):
                server.fail_next(f"clip{index}.webm", 10 ** 6, status=500)
            for step in (1, 2):
                batch, want = host.prepare(0, step), expected.prepare(0, step)
                assert batch.replaced == 0 and not host.stats.failed_files
                np.testing.assert_array_equal(batch.clips, want.clips)
                for got, truth in zip(batch.inputs, want.inputs):
                    assert sorted(got) == sorted(truth)
                    for name in truth:  # frames (PyAV), or the file's bytes and frame numbers (DALI)
                        np.testing.assert_array_equal(got[name], truth[name])
                assert not os.path.exists(ahead[step - 1])  # the batch is read: its folder is gone
            assert first.replaced == 0
            root = host.read_ahead.root
            assert os.path.isdir(root)
        finally:
            host.close()
            expected.close()
        assert not os.path.exists(root)


def test_the_loader_reading_ahead_gives_the_local_batches(corpus, tmp_path):
    """Two epochs through PairLoader with a decode worker: read ahead, not, and from disk, the same batches;
    reading ahead fetches each planned span once per batch and nothing else."""
    folder, records = corpus
    local = write_manifest(tmp_path / "local.jsonl", records)
    config = dataclasses.replace(CONFIG, decode_workers=1)

    def epochs(manifest, read):
        with PairLoader(str(manifest), BATCH, device="cpu", seed=SEED,
                        config=dataclasses.replace(config, read_ahead=read)) as loader:
            batches = [batch for _ in range(2) for batch in loader]
            assert loader.stats.replaced == 0 and not loader.stats.failed_files
            spool = None if loader.host.read_ahead is None else loader.host.read_ahead.root
        assert spool is None or not os.path.exists(spool)
        return batches, spool

    expected, _ = epochs(local, 2)
    with RangeServer(folder) as server:
        remote = url_manifest(corpus, server.url, tmp_path / "remote.jsonl")
        sent = {}
        for read in (0, 2):
            seen = len(server.requests)
            batches, spool = epochs(remote, read)
            assert (spool is not None) == bool(read)
            sent[read] = server.requests[seen:]
            for got, want in zip(batches, expected):
                np.testing.assert_array_equal(got["sample_ids"], want["sample_ids"])
                assert torch.equal(got["view1"], want["view1"]) and torch.equal(got["view2"], want["view2"])
            assert len(batches) == len(expected)
    assert all(method == "GET" and header.startswith("bytes=") for method, _, header in sent[2])
    # with read-ahead no span is fetched twice for a batch: each span came at most as often as batches plan it
    # (their samples' openings and GOPs; the loader reads up to two epochs past the ones taken)
    with PairLoader(str(local), BATCH, device="cpu", seed=SEED, config=config) as loader:
        later = [batch for _ in range(4) for batch in loader]
    plans = Counter()
    for batch in later:
        spans = set()
        for clip, frames in zip(batch["sample_ids"].tolist(), batch["frame_indices"].tolist()):
            record = records[clip]
            for opening in (True, False):  # a batch not read ahead skips the opening of a file held open
                spans |= {(Path(record.path).name, start, end) for start, end in planned_spans(
                    record.path, frames, record.keyframes, record.keyframe_bytes, record.file_bytes, opening)}
        plans.update(spans)
    fetched = Counter((Path(path).name, int(header[6:].split("-")[0]), int(header.split("-")[1]) + 1)
                      for _, path, header in sent[2])
    assert all(count <= plans[span] for span, count in fetched.items()), fetched - plans


def test_a_spool_left_by_a_killed_trainer_is_swept(tmp_path):
    """A trainer killed before it could clean up leaves its spool; the next one on the machine deletes it."""
    code = ("import os, sys; from vito_fast.storage.read_ahead import ReadAhead; "
            "spool = ReadAhead(1, 10); os.makedirs(spool.folder(0, 1)); "
            "open(os.path.join(spool.folder(0, 1), 'x'), 'wb').write(b'1' * 100); print(spool.root, flush=True); "
            "os._exit(0)")  # exits without closing: its spool stays
    root = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.isdir(root)
    code = "from vito_fast.storage.read_ahead import ReadAhead; ReadAhead(1, 10).close()"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert not os.path.exists(root)


@pytest.mark.usefixtures("one_cpu_thread")
def test_training_on_videos_in_a_bucket_resumes_as_on_disk(corpus, s3_bucket, tmp_path):
    """The clips in an S3 bucket, scanned there: four training steps, interrupted after two and resumed,
    give the losses of four steps on the same clips on local disk (same samples, same order, read ahead
    through a decode worker)."""
    from vito_fast.prepare import scan_videos
    from vito_fast.train.config import load_config
    from vito_fast.train.loop import train

    folder, records = corpus
    s3_bucket.put(str(folder / "videos"), "corpus/videos", recursive=True)
    remote, rejected = scan_videos(["s3://corpus/videos/"], workers=0, progress=False, min_seconds=0.5)
    assert not rejected and [Path(record.path).name for record in remote] == [Path(r.path).name for r in records]
    assert [dataclasses.replace(record, path="") for record in remote] == [
        dataclasses.replace(record, path="") for record in records]  # location does not change the data

    def config(manifest, *more):
        return load_config("demo", overrides=[
            "data.source=loader", f"data.path={manifest}", "data.image_size=32", "data.batch_size=2",
            "data.backend=torch", "data.decode_workers=1", "model.pool_hidden=16", "model.proj_hidden=32",
            "model.proj_dim=16", "model.pred_hidden=32", "optim.warmup_steps=2", "train.log_every=1",
            "train.image_every=0", "train.progress=false", "train.device=cpu", "train.steps=4",
            "train.checkpoint_every=2", *more])

    local = train(config(write_manifest(tmp_path / "local.jsonl", records)), tmp_path / "local").losses
    in_bucket = write_manifest(tmp_path / "bucket.jsonl", remote)
    first = train(config(in_bucket, "train.stop_after=2"), tmp_path / "bucket")
    second = train(config(in_bucket), tmp_path / "bucket", resume=True)
    assert first.step == 2 and second.step == 4
    torch.testing.assert_close(first.losses + second.losses, local, rtol=0, atol=1e-5)


def test_a_full_spool_is_said_once_and_leaves_no_partial_file(corpus, tmp_path, monkeypatch):
    """Shared memory full (Docker's 64 MB /dev/shm): the spool writes what fits, removes the partial file,
    and says once how to give it room; the samples then read their own bytes."""
    import errno

    folder, _ = corpus
    spool = tmp_path / "root" / "0-1"
    spool.mkdir(parents=True)
    writes = []

    def replace(source, target):  # the second file finds no room
        if writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        writes.append(target)
        os.rename(source, target)

    monkeypatch.setattr(read_ahead, "_warned_full", False)
    monkeypatch.setattr(read_ahead.os, "replace", replace)
    with RangeServer(folder) as server:
        url = f"{server.url}/videos/clip1.webm"
        with pytest.warns(RuntimeWarning, match=re.escape(f"no room left in {tmp_path};") + ".*--shm-size"):
            assert read_ahead.spool(str(spool), [(url, 0, 1000), (url, 5000, 1000)]) == 1000
        assert sorted(os.listdir(spool)) == [os.path.basename(writes[0])]  # no partial file
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once per process
            read_ahead.spool(str(spool), [(url, 9000, 1000)])
