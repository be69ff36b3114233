"""PairLoader on data read over the network (HTTP and S3 on loopback, 0/20/50 ms per request) against disk.

    python -m pytest benches/bench_remote.py --benchmark-only --benchmark-columns=min,median,rounds -s

Corpus: the loader bench's (VIDEOS VP9 files, 320x256, GOP 16, each listed REPEAT times; a frame
store of them at 8 fps, here in shards of SHARD_BYTES). The servers run in a process of their own
(``remote_servers.py``: the tests' HTTP server with Range support, moto's S3 server holding a copy),
each behind a FaultProxy that waits LATENCY ms before every request and counts the requests and
bytes it answers.

* ``test_remote_store``: PairLoader on the frame store. Providers: local (on disk), http-<ms> and
  s3-<ms> for 0, 20 and 50 ms.
* ``test_remote_videos``: PairLoader on a manifest of the videos by URL (scanned: keyframe index
  included), PyAV in the decode workers, ``max_open_videos=1`` so that each sample opens its file
  as in a corpus far bigger than the workers' open files. Providers: local, http-0, http-50, s3-0,
  s3-50, and the same videos packed into SHARDS WebDataset tar shards (members read by range):
  shards-local, shards-http-50, shards-s3-50.
  extra_info adds gop_bytes_per_pair: the bytes of the GOPs each pair decodes (from the keyframe
  packet before its frame to the next keyframe packet, PyAV's packet positions; a GOP both frames
  share counts once), and bytes_over_gop, what the server sent over that.

Every provider: batch BATCH pairs at 224 px, every augmentation, bf16, the default device stage;
one round = ROUND_EPOCHS epochs after a warm-up epoch. extra_info: pairs_per_s (the steady state: batches
after the first HEAD_START of a round, which were read ahead, over their time; median of 3 rounds), cpu_ms_per_pair
(this process and the decode workers, not the servers; server_cpu_ms_per_pair: the servers' process),
requests_per_pair and bytes_per_pair (what
the proxy answered, per pair served; counted once the loader's read-ahead has filled its queues,
before and after the timed epochs). Goal (issue 27): at 50 ms at least 90 % of the local pairs/s;
a pair reads under 2x the bytes of the GOPs it decodes.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from bench_loader import BATCH, VIDEOS, _cpu_seconds, corpus  # noqa: F401  (corpus: the loader bench's fixture)

LATENCIES = (0, 20, 50)
SHARDS = 2  # tar shards the videos are packed into (video i in shard i mod SHARDS)
SHARD_BYTES = 2 << 20
SETTLE_SECONDS = 2.0  # before counting requests and bytes: the read-ahead has filled the loader's queues
ROUND_EPOCHS = 6  # epochs per timed round (an epoch of the corpus is 2 batches of 32)
HEAD_START = 4  # batches the loader may hold ready when a round starts (host 2 ahead, the stage's prefetch)


@pytest.fixture(scope="session")
def folder(corpus, tmp_path_factory):
    """What the servers serve: the loader bench's videos and manifest, and ``store/``, a frame store of
    its clips in shards of SHARD_BYTES (moto answers a ranged GET by copying the whole object: a
    shard of the default size would measure that)."""
    from vito_fast.prepare.frame_store_write import extract_frames

    source = Path(corpus["store"]).parent
    folder = tmp_path_factory.mktemp("remote_corpus")
    for path in source.glob("video*.webm"):
        (folder / path.name).symlink_to(path)
    (folder / "shards").mkdir()
    for shard in range(SHARDS):  # WebDataset shards of the same videos, members named as the files
        with tarfile.open(folder / "shards" / f"shard-{shard:05d}.tar", "w") as tar:
            for index in range(shard, VIDEOS, SHARDS):
                tar.add(source / f"video{index}.webm", arcname=f"video{index}.webm")
    extract_frames(source / "manifest.jsonl", folder / "store", fps=8, short_side=256, quality=90, progress=False,
                   shard_bytes=SHARD_BYTES)
    return folder


@pytest.fixture(scope="session")
def scanned_shards(folder, scanned):
    """The members of the shards scanned, listed in the order (and with the labels) of ``scanned``."""
    from vito_fast.prepare.scan import scan_videos
    from vito_fast.storage.shards import parse_member

    records, _ = scan_videos([str(path) for path in sorted((folder / "shards").glob("*.tar"))], workers=0,
                             progress=False, min_seconds=0.5)
    by_name = {parse_member(record.path).name: record for record in records}
    return [dataclasses.replace(by_name[Path(record.path).name], label=record.label) for record in scanned]


@pytest.fixture(scope="session")
def servers(folder):
    """{"http": {ms: url}, "s3": {ms: url}} of the servers' process (``remote_servers.py``)."""
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("remote_servers.py")), str(folder),
                                *map(str, LATENCIES)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        process.kill()
        pytest.fail("benches/remote_servers.py did not start")
    urls = {kind: {int(ms): url for ms, url in by_latency.items()} for kind, by_latency in json.loads(line).items()}
    urls["pid"] = process.pid
    yield urls
    process.stdin.close()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def scanned(corpus):
    """The corpus videos scanned (keyframe index included), each listed as often as in the loader bench."""
    from vito_fast.data.manifest import read_manifest
    from vito_fast.prepare.scan import scan_videos

    source = Path(corpus["video"]).parent
    records, _ = scan_videos([str(source / f"video{index}.webm") for index in range(VIDEOS)], workers=0,
                             progress=False, min_seconds=0.5)
    listed = read_manifest(corpus["video"])  # the loader bench's order and labels
    by_path = {record.path: record for record in records}
    return [dataclasses.replace(by_path[record.path], label=record.label) for record in listed]


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid``, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proxy_counts(url: str):
    """(requests, bytes) the proxy at ``url`` answered so far."""
    with urllib.request.urlopen(f"{url}/__fault_proxy__/stats") as answer:
        counts = json.loads(answer.read())
    return counts["requests"], counts["bytes_sent"]


def source_url(servers, provider: str, monkeypatch):
    """(the server URL of ``provider``, or None for local); an s3 provider's endpoint goes in the environment."""
    if provider == "local":
        return None
    kind, ms = provider.rsplit("-", 1)
    if kind not in servers:
        pytest.skip(f"{provider}: moto or s3fs is not installed")
    url = servers[kind][int(ms)]
    if kind == "s3":
        import s3fs

        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, "bench")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3fs.S3FileSystem.clear_instance_cache()
    return url


def timed_epochs(benchmark, loader, url, served_pairs, server_pid):
    """Pairs/s in the steady state (the median of 3 rounds of ROUND_EPOCHS epochs after a warm-up one;
    a round's first HEAD_START batches, which the loader had read ahead, not counted); CPU ms,
    requests and bytes per pair."""
    arrivals, served = [], []

    def round_of_epochs():
        arrivals.append([])
        for _ in range(ROUND_EPOCHS):
            for batch in loader:
                arrivals[-1].append(time.perf_counter())
                served.append(len(batch["sample_ids"]))
                served_pairs(batch)

    def settled_counts():  # the loader reads ahead into the next epoch until its queues are full: let them fill
        time.sleep(SETTLE_SECONDS)
        return (_cpu_seconds(workers()), process_cpu_seconds(server_pid), *(proxy_counts(url) if url else (0, 0)))

    workers = lambda: list(loader.host.decode_worker_pids)  # noqa: E731  (their CPU is the loader's too)
    for batch in loader:  # warm-up: builds the pipeline, starts the workers, opens the store
        pass
    before = settled_counts()
    benchmark.pedantic(round_of_epochs, rounds=3, iterations=1)
    cpu_ms, server_ms, requests, sent = ((after - first) / sum(served) for after, first in zip(settled_counts(), before))
    cpu_ms, server_ms = cpu_ms * 1e3, server_ms * 1e3
    rates = [(len(times) - HEAD_START) * loader.batch_size / (times[-1] - times[HEAD_START - 1]) for times in arrivals]
    rate = float(np.median(rates))
    print(f"\n(the servers' process: {server_ms:.1f} CPU ms per pair)", end="")
    benchmark.extra_info.update(pairs_per_s=round(rate, 1), cpu_ms_per_pair=round(cpu_ms, 2),
                                server_cpu_ms_per_pair=round(server_ms, 2),
                                requests_per_pair=round(requests, 2), bytes_per_pair=round(sent),
                                backend=loader.backend.name, replaced=loader.stats.replaced)
    return rate, cpu_ms, requests, sent


@pytest.mark.parametrize("provider", ["local"] + [f"{kind}-{ms}" for kind in ("http", "s3") for ms in LATENCIES])
def test_remote_store(benchmark, folder, servers, provider, monkeypatch):
    from vito_fast.data import LoaderConfig, PairLoader

    url = source_url(servers, provider, monkeypatch)
    source = str(folder / "store") if url is None else f"{url}/store" if provider.startswith("http") else "s3://corpus/store"
    with PairLoader(source, BATCH, device="cpu", seed=0, config=LoaderConfig(image_size=224, dtype="bfloat16")) as loader:
        rate, cpu_ms, requests, sent = timed_epochs(benchmark, loader, url, lambda batch: None, servers["pid"])
    print(f"\nstore {provider}: {rate:.1f} pairs/s, {cpu_ms:.1f} CPU ms per pair, {requests:.2f} requests and "
          f"{sent / 1e3:.1f} kB per pair")


def gop_spans(path: str):
    """(keyframe pts, sorted; the byte position of each keyframe packet; the file's size) of a local video."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        keyframes = sorted((packet.pts, packet.pos) for packet in container.demux(stream)
                           if packet.is_keyframe and packet.size)
    return [pts for pts, _ in keyframes], [pos for _, pos in keyframes], Path(path).stat().st_size


def located(records, provider: str, url: Optional[str], folder: Path):
    """``records`` where ``provider`` serves them: files by name at the server's root (http: ``url``; s3: the
    bucket), members of the shards under shards/ there."""
    if url is None:
        return records
    base = url if provider.split("-")[-2] == "http" else "s3://corpus"
    if provider.startswith("shards"):
        return [dataclasses.replace(record, path=record.path.replace(str(folder), base, 1)) for record in records]
    return [dataclasses.replace(record, path=f"{base}/{Path(record.path).name}") for record in records]


@pytest.mark.parametrize("provider", ["local", "http-0", "http-50", "s3-0", "s3-50", "shards-local", "shards-http-50",
                                      "shards-s3-50"])
def test_remote_videos(benchmark, folder, servers, scanned, scanned_shards, provider, monkeypatch, tmp_path):
    from vito_fast.data import LoaderConfig, PairLoader
    from vito_fast.data.manifest import write_manifest

    url = source_url(servers, provider.replace("shards-", "", 1), monkeypatch)
    records = located(scanned_shards if provider.startswith("shards") else scanned, provider, url, folder)
    manifest = write_manifest(tmp_path / "manifest.jsonl", records)
    spans = {record.path: gop_spans(record.path) for record in scanned}
    gop_bytes = []

    def count_gops(batch):  # the bytes of the GOPs each pair of the batch decodes
        for clip, frames in zip(batch["sample_ids"].tolist(), batch["frame_indices"].tolist()):
            record = scanned[clip]
            pts, positions, size = spans[record.path]
            gops = {bisect.bisect_right(record.keyframes, frame) - 1 for frame in frames}
            ends = positions[1:] + [size]
            gop_bytes.append(sum(ends[pts.index(record.keyframe_pts[gop])] - positions[pts.index(record.keyframe_pts[gop])]
                                 for gop in gops))

    config = LoaderConfig(image_size=224, dtype="bfloat16", max_open_videos=1)
    with PairLoader(str(manifest), BATCH, device="cpu", seed=0, config=config) as loader:
        rate, cpu_ms, requests, sent = timed_epochs(benchmark, loader, url, count_gops, servers["pid"])
    per_pair = float(np.mean(gop_bytes[-3 * ROUND_EPOCHS * len(loader) * BATCH:]))
    benchmark.extra_info.update(gop_bytes_per_pair=round(per_pair), bytes_over_gop=round(sent / per_pair, 2))
    print(f"\nvideos {provider}: {rate:.1f} pairs/s, {cpu_ms:.1f} CPU ms per pair, {requests:.2f} requests and "
          f"{sent / 1e3:.1f} kB per pair; the GOPs decoded: {per_pair / 1e3:.1f} kB per pair ({sent / per_pair:.2f}x)")
