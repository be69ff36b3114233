"""Data on the network when the network misbehaves: faults injected between the loader and a real
server (tests/fault_proxy.py in front of the loopback HTTP server, or of moto's S3 server).

For a frame store by URL and for a manifest naming videos by URL (PyAV in this process's threads
and in a decode worker process): connection resets (before and inside an answer), 5xx answers,
stalls longer than the timeout, truncated bodies, an object deleted mid-epoch, a truncated tar.
Each: the epoch ends with every batch; a fault that passes is retried and changes nothing; one that
stays replaces the object's samples, names it (once per clip) and counts it in ``stats``. Timeouts
are 0.5 s with one retry (none where a fault stays, to keep the tests short), so a stall costs
about 1.2 s (0.5 s) per read it hits.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fsspec", reason="fsspec is not installed: pip install 'vito_fast[remote]'")
pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
from fault_proxy import FaultProxy  # noqa: E402
from range_server import RangeServer  # noqa: E402
from videos import write_small_clips  # noqa: E402

from vito_fast.data import LoaderConfig, PairLoader  # noqa: E402
from vito_fast.data.manifest import read_manifest, write_manifest  # noqa: E402
from vito_fast.prepare import extract_frames, scan_videos  # noqa: E402

BATCH, SEED = 2, 5
TIMEOUT, RETRIES = 0.5, 1
CONFIG = LoaderConfig(image_size=32, dtype="float32", num_threads=2, backend="torch", decode_workers=0,
                      remote_timeout=TIMEOUT, remote_retries=RETRIES)
STALL = 3.0  # seconds a stalled answer waits: longer than the timeout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """6 clips (64x48 VP9, 2 s, GOP 5), one per shard of a frame store; and the local batches of both."""
    folder = tmp_path_factory.mktemp("faults")
    write_small_clips(folder / "videos")
    records, _ = scan_videos([str(folder / "videos")], workers=0, progress=False, min_seconds=0.5)
    manifest = write_manifest(folder / "manifest.jsonl", records)
    extract_frames(manifest, folder / "store", fps=10, short_side=48, quality=90, workers=1, progress=False,
                   shard_bytes=20_000)
    assert len(list((folder / "store").glob("shard-*.tar"))) == 6
    two = {"store": run(str(folder / "store"), epochs=2)[0], "videos": run(str(manifest), epochs=2)[0]}
    return {"folder": folder, **{kind: batches[: len(batches) // 2] for kind, batches in two.items()},
            **{f"{kind}2": batches for kind, batches in two.items()}}


def run(source, config=CONFIG, epochs=1):
    """(batches, stats, the loader's RuntimeWarnings) of ``epochs`` epochs; fails past 60 s (a hang)."""
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with PairLoader(source, BATCH, device="cpu", seed=SEED, config=config) as loader:
            batches = [batch for _ in range(epochs) for batch in loader]
            stats = loader.stats
    assert time.monotonic() - started < 60
    named = [str(warning.message) for warning in caught
             if issubclass(warning.category, RuntimeWarning) and "PairLoader" in str(warning.message)]
    return batches, stats, named


def assert_same(batches, expected):
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected):
        np.testing.assert_array_equal(got["sample_ids"], want["sample_ids"])
        assert torch.equal(got["view1"], want["view1"]) and torch.equal(got["view2"], want["view2"])


def assert_replaced_and_named(batches, stats, named, expected, names):
    """Every batch came; samples were replaced; each of ``names`` and nothing else was named, each clip once."""
    assert len(batches) == len(expected) and stats.replaced > 0
    named_objects = {name for name in names for failed in stats.failed_files if name in failed}
    assert named_objects == set(names), stats.failed_files
    assert all(any(name in failed for name in names) for failed in stats.failed_files), stats.failed_files
    assert all(any(name in message for name in names) for message in named), named
    assert len(named) == len(stats.failed_files)  # one warning per failed clip, none twice


def served_copy(corpus, tmp_path) -> Path:
    """A copy of the corpus to serve (a test may delete or cut its files)."""
    folder = tmp_path / "served"
    shutil.copytree(corpus["folder"] / "store", folder / "store")
    shutil.copytree(corpus["folder"] / "videos", folder / "videos")
    return folder


def url_manifest(corpus, tmp_path, base: str) -> str:
    records = [dataclasses.replace(record, path=f"{base}/videos/{Path(record.path).name}")
               for record in read_manifest(corpus["folder"] / "manifest.jsonl")]
    return str(write_manifest(tmp_path / "urls.jsonl", records))


# (fault, options), each on a shard of its own
FAULTS = [("reset", {}), ("reset_mid", {}), ("status", {"status": 503}), ("stall", {"seconds": STALL}),
          ("stall_mid", {"seconds": STALL}), ("truncate", {})]


def test_a_store_over_http_rides_out_each_fault(corpus):
    """Every kind of fault once, on a shard each: retried, the same batches. Faults that stay (a stall,
    a reset inside the answer, a 500): those shards' clips replaced and named, the epoch whole."""
    with RangeServer(corpus["folder"]) as server, FaultProxy(server.url) as proxy:
        for shard, (kind, options) in enumerate(FAULTS):
            proxy.inject(f"shard-{shard:05d}.tar", kind, 1, **options)
        batches, stats, named = run(proxy.url + "/store")
        assert stats.replaced == 0 and not named, named
        assert_same(batches, corpus["store"])
        hit = {path for _, path, _ in proxy.requests}
        assert all(f"/store/shard-{shard:05d}.tar" in hit for shard in range(len(FAULTS)))
        proxy.inject("shard-00002.tar", "stall", 10_000, seconds=STALL)
        proxy.inject("shard-00003.tar", "reset_mid", 10_000)
        proxy.inject("shard-00005.tar", "status", 10_000, status=500)
        batches, stats, named = run(proxy.url + "/store", dataclasses.replace(CONFIG, remote_retries=0))  # quicker
        assert_replaced_and_named(batches, stats, named, corpus["store"],
                                  ["shard-00002.tar", "shard-00003.tar", "shard-00005.tar"])


def test_a_store_over_http_survives_a_shard_deleted_mid_epoch_and_a_truncated_one(corpus, tmp_path):
    folder = served_copy(corpus, tmp_path)
    with RangeServer(folder) as server, FaultProxy(server.url) as proxy:
        shard, cut = folder / "store" / "shard-00001.tar", folder / "store" / "shard-00004.tar"
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a tar cut short: its later frames are gone
        proxy.delete_after("shard-00001.tar", 1, shard.unlink)  # read once, then gone
        batches, stats, named = run(proxy.url + "/store", epochs=2)
        assert not shard.exists()
        assert_replaced_and_named(batches, stats, named, corpus["store2"], ["shard-00001.tar", "shard-00004.tar"])
        assert all("not found" in error for name, error in stats.failed_files.items() if "shard-00001" in name)


@pytest.mark.parametrize("workers", [0, 1])
def test_videos_over_http_ride_out_faults_in_threads_and_worker_processes(corpus, tmp_path, monkeypatch, workers):
    """PyAV reads a video by URL through a file object of ranged reads: opening it and every block read
    have the config's timeout and retries (LoaderConfig.remote_timeout/remote_retries, which travel with
    each decode job into the worker)."""
    config = dataclasses.replace(CONFIG, decode_workers=workers, max_open_videos=1)  # reopened: more requests
    with RangeServer(corpus["folder"]) as server, FaultProxy(server.url) as proxy:
        manifest = url_manifest(corpus, tmp_path, proxy.url)
        for video, kind in ((1, "reset_mid"), (3, "stall"), (5, "truncate")):
            proxy.inject(f"clip{video}.webm", kind, 1, seconds=STALL)
        batches, stats, named = run(manifest, config)
        assert stats.replaced == 0 and not named, named
        assert_same(batches, corpus["videos"])
        proxy.inject("clip3.webm", "stall_mid", 10_000, seconds=STALL)
        config = dataclasses.replace(config, remote_retries=0)  # given up after one timeout: quicker
        batches, stats, named = run(manifest, config)
        assert_replaced_and_named(batches, stats, named, corpus["videos"], ["clip3.webm"])
        assert len(named) == 1 and stats.timeouts == 0  # the read timed out, not the worker


def test_a_video_deleted_mid_epoch_is_replaced_in_the_worker(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("VITO_FAST_REMOTE_TIMEOUT", str(TIMEOUT))
    monkeypatch.setenv("VITO_FAST_REMOTE_RETRIES", str(RETRIES))
    folder = served_copy(corpus, tmp_path)
    config = dataclasses.replace(CONFIG, decode_workers=1, max_open_videos=1)  # one file open: the next use reopens
    first = f"clip{int(corpus['videos'][0]['sample_ids'][0])}.webm"  # the epoch's first sample
    video = folder / "videos" / first
    with RangeServer(folder) as server, FaultProxy(server.url) as proxy:
        manifest = url_manifest(corpus, tmp_path, proxy.url)
        proxy.delete_after(first, 1, video.unlink)  # its first sample read (one request: the whole small file), then gone
        batches, stats, named = run(manifest, config, epochs=2)
        assert not video.exists()
        assert_replaced_and_named(batches, stats, named, corpus["videos2"], [first])
        assert len(named) == 1 and "not found" in next(iter(stats.failed_files.values()))


@pytest.fixture
def s3_behind_proxy(monkeypatch):
    """moto's S3 server on loopback with a FaultProxy in front: (filesystem straight to moto, the proxy).
    The loader reaches S3 through the proxy (``AWS_ENDPOINT_URL``)."""
    s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed: pip install 'vito_fast[s3]'")
    server_module = pytest.importorskip("moto.server", reason="moto is not installed: pip install 'moto[server]'")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    s3fs.S3FileSystem.clear_instance_cache()
    direct = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}", skip_instance_cache=True)
    direct.mkdir("corpus")
    with FaultProxy(f"http://{host}:{port}") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield direct, proxy
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_a_store_in_s3_rides_out_faults_a_deleted_and_a_truncated_shard(corpus, s3_behind_proxy):
    direct, proxy = s3_behind_proxy
    direct.put(str(corpus["folder"] / "store"), "corpus/store", recursive=True)
    proxy.inject("shard-00002.tar", "reset_mid", 2)
    proxy.inject("shard-00003.tar", "stall", 1, seconds=STALL)  # botocore's own 60 s and retries are off
    started = time.monotonic()
    batches, stats, named = run("s3://corpus/store")
    assert stats.replaced == 0 and not named, named
    assert_same(batches, corpus["store"])
    assert time.monotonic() - started < 15
    proxy.delete_after("shard-00001.tar", 1, lambda: direct.rm("corpus/store/shard-00001.tar"))
    whole = (corpus["folder"] / "store" / "shard-00004.tar").read_bytes()
    direct.pipe("corpus/store/shard-00004.tar", whole[: len(whole) // 2])
    batches, stats, named = run("s3://corpus/store", epochs=2)
    assert not direct.exists("corpus/store/shard-00001.tar")
    assert_replaced_and_named(batches, stats, named, corpus["store2"], ["shard-00001.tar", "shard-00004.tar"])
