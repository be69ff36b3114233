"""Videos inside WebDataset / video2dataset tar shards (vito_fast.storage.shards): scanned and read by range
without extracting, on disk and over HTTP, giving the same clips, samples and views as the same videos
as files; a truncated shard is reported, never fatal."""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_dali
from videos import write_small_clips

from vito_fast.data import LoaderConfig, PairLoader
from vito_fast.data.manifest import read_manifest, write_manifest
from vito_fast.storage.shards import (TarMember, expand_shards, index_tar, member_path, parse_member,
                                   read_video_bytes, sample_key)
from vito_fast.prepare import scan_videos


CLIPS = 6


def write_shard(path: Path, videos, captions=None) -> Path:
    """A video2dataset-style shard: per sample KEY.webm, KEY.json (caption, label, url), KEY.txt."""
    with tarfile.open(path, "w") as archive:
        for video in videos:
            key = video.stem
            fields = {"key": key, "url": f"https://example.org/{video.name}", "caption": f"json caption {key}",
                      "label": f"class{int(key[-1]) % 2}", "status": "success"}
            members = [(f"{key}.json", json.dumps(fields).encode()), (f"{key}.webm", video.read_bytes())]
            if captions:
                members.append((f"{key}.txt", f"a clip called {key}\n".encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    (folder / "shards").mkdir()
    videos = write_small_clips(folder / "videos", CLIPS)
    write_shard(folder / "shards" / "00000.tar", videos[:3], captions=True)
    write_shard(folder / "shards" / "00001.tar", videos[3:])
    return folder


def scan(paths, **options):
    return scan_videos([str(path) for path in paths], workers=0, progress=False, min_seconds=0.5, **options)


def batches_of(manifest, decode_workers=0, decoder="pyav"):
    config = LoaderConfig(image_size=32, dtype="float32", num_threads=2, decode_workers=decode_workers,
                          backend="dali" if decoder == "dali" else "torch", video_decoder=decoder)
    with PairLoader(str(manifest), 3, device="cpu", seed=5, config=config) as loader:
        batches = list(loader)
        return batches, loader.stats


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for one, other in zip(got, want):
        np.testing.assert_array_equal(one["sample_ids"], other["sample_ids"])
        np.testing.assert_array_equal(one["frame_indices"], other["frame_indices"])
        assert torch.equal(one["view1"], other["view1"]) and torch.equal(one["view2"], other["view2"])


def test_member_paths_braces_and_keys():
    path = member_path("s3://bucket/shards/00007.tar", "sub/000123.mp4", 1536, 2097152)
    assert path == "s3://bucket/shards/00007.tar#sub/000123.mp4@1536+2097152"
    assert parse_member(path) == TarMember("s3://bucket/shards/00007.tar", "sub/000123.mp4", 1536, 2097152)
    assert parse_member("/data/clip.mp4") is None and parse_member("https://host/a.mp4#t=3") is None
    assert expand_shards("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert expand_shards("s/{8..10}-{0..1}.tar") == ["s/8-0.tar", "s/8-1.tar", "s/9-0.tar", "s/9-1.tar",
                                                     "s/10-0.tar", "s/10-1.tar"]
    assert expand_shards("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="backwards"):
        expand_shards("s/{3..1}.tar")
    assert sample_key("a/b/000123.seg.mp4") == "a/b/000123" and sample_key("x.json") == "x"


def test_a_shard_is_indexed_from_its_headers_and_members_read_by_range(corpus):
    index = index_tar(str(corpus / "shards" / "00000.tar"))
    assert not index.truncated
    assert [member.name for member in index.members] == [f"clip{i}.{kind}" for i in range(3)
                                                         for kind in ("json", "webm", "txt")]
    for member in index.members:
        if member.name.endswith(".webm"):
            assert read_video_bytes(member.path) == (corpus / "videos" / member.name).read_bytes()
    assert set(index.samples["clip1"]) == {"json", "webm", "txt"}


def test_scanning_shards_gives_the_clips_of_the_files_with_their_captions_and_labels(corpus, tmp_path):
    files, rejected_files = scan([corpus / "videos"])
    members, rejected = scan([str(corpus / "shards" / "{00000..00001}.tar")], label_field="label")
    assert not rejected and not rejected_files and len(members) == len(files) == CLIPS
    for record, file in zip(members, files):
        member = parse_member(record.path)
        assert member is not None and Path(member.name).name == Path(file.path).name  # in name order
        assert dataclasses.replace(record, path=file.path, caption=None, label=None) == file
    assert [record.caption for record in members[:3]] == [f"a clip called clip{i}" for i in range(3)]  # the .txt
    assert [record.caption for record in members[3:]] == [f"json caption clip{i}" for i in range(3, 6)]
    assert [record.label for record in members] == [f"class{i % 2}" for i in range(CLIPS)]
    # a folder of shards is found like a folder of videos; the records survive the manifest round trip
    from_folder, _ = scan([corpus / "shards"])
    assert [record.path for record in from_folder] == [record.path for record in members]
    manifest = write_manifest(tmp_path / "m.jsonl", members)
    assert read_manifest(manifest) == members


@pytest.mark.parametrize("decoder,decode_workers", [("pyav", 0), ("pyav", 1),
                                                    pytest.param("dali", 0, marks=needs_dali)])
def test_the_loader_reads_shards_as_it_reads_the_files(corpus, tmp_path, decoder, decode_workers):
    """PyAV reads a member through a window of ranged reads; DALI gets its bytes by one ranged read."""
    files, _ = scan([corpus / "videos"])
    members, _ = scan([corpus / "shards"])
    want, _ = batches_of(write_manifest(tmp_path / "files.jsonl", files), decode_workers, decoder)
    got, stats = batches_of(write_manifest(tmp_path / "members.jsonl", members), decode_workers, decoder)
    assert not stats.failed_files and stats.replaced == 0
    assert_same_batches(got, want)


def test_shards_over_http_are_scanned_and_read_by_range(corpus, tmp_path):
    pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
    from range_server import RangeServer

    files, _ = scan([corpus / "videos"])
    want, _ = batches_of(write_manifest(tmp_path / "files.jsonl", files))
    with RangeServer(corpus) as server:
        members, rejected = scan([server.url + "/shards/{00000..00001}.tar"])
        assert not rejected and len(members) == CLIPS
        assert all(record.path.startswith(server.url + "/shards/0000") for record in members)
        shard_reads = [header for method, path, header in server.requests if method == "GET" and path.endswith(".tar")]
        assert shard_reads and all(header.startswith("bytes=") for header in shard_reads)  # never a whole shard
        server.requests.clear()
        got, stats = batches_of(write_manifest(tmp_path / "http.jsonl", members), decode_workers=1)
        assert not stats.failed_files
        assert all(header.startswith("bytes=") for method, path, header in server.requests if method == "GET")
    assert_same_batches(got, want)


@pytest.mark.parametrize("decode_workers", [0, 1])
def test_a_remote_shard_that_keeps_failing_is_named_once(corpus, tmp_path, monkeypatch, decode_workers):
    """Every read of one shard answers 500: the three clips it holds are replaced, and the shard (the
    object whose reads failed) is named once, in one warning and one ``stats.failed_files`` entry."""
    pytest.importorskip("aiohttp", reason="aiohttp is not installed: pip install 'vito_fast[remote]'")
    from range_server import RangeServer

    monkeypatch.setenv("VITO_FAST_REMOTE_RETRIES", "0")
    with RangeServer(corpus) as server:
        members, _ = scan([server.url + "/shards/{00000..00001}.tar"])
        manifest = write_manifest(tmp_path / "http.jsonl", members)
        server.fail_next("00000.tar", 10 ** 6, status=500)
        with pytest.warns(RuntimeWarning) as caught:
            batches, stats = batches_of(manifest, decode_workers=decode_workers)
    assert len(batches) == CLIPS // 3 and stats.replaced >= 3
    assert list(stats.failed_files) == [server.url + "/shards/00000.tar"], stats.failed_files
    named = [str(warning.message) for warning in caught if "PairLoader" in str(warning.message)]
    assert len(named) == 1 and named[0].startswith(f"PairLoader: {server.url}/shards/00000.tar: ")


def test_a_truncated_shard_is_reported_at_scan_and_replaced_while_training(corpus, tmp_path):
    shard = tmp_path / "00001.tar"
    shard.write_bytes((corpus / "shards" / "00001.tar").read_bytes())
    members, _ = scan([corpus / "shards" / "00000.tar", shard])
    last = parse_member(members[-1].path)
    # cut the shard inside its last video, as a failed upload leaves it
    with open(shard, "r+b") as handle:
        handle.truncate(last.offset + last.size // 2)
    index_tar.cache_clear()
    records, rejected = scan([corpus / "shards" / "00000.tar", shard])
    assert len(records) == CLIPS - 1
    assert [(entry.path, entry.reason) for entry in rejected] == [(last.path, "truncated")]
    assert "truncated shard" in rejected[0].detail
    # the manifest written before the cut: the epoch ends, the member is named and its samples replaced
    with pytest.warns(RuntimeWarning, match="00001.tar#clip5.webm"):
        batches, stats = batches_of(write_manifest(tmp_path / "before.jsonl", members))
    assert len(batches) == CLIPS // 3 and stats.replaced > 0
    assert any("clip5.webm" in name for name in stats.failed_files)
    # a file that is no tar at all is one rejected input, not a failed scan
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar" * 100)
    records, rejected = scan([corpus / "shards" / "00000.tar", junk])
    assert len(records) == 3 and [(entry.path, entry.reason) for entry in rejected] == [(str(junk), "unreadable")]


def test_a_manifest_and_shards_in_an_s3_bucket_give_the_local_batches(corpus, s3_bucket, tmp_path):
    """Everything in the bucket: shards scanned there, the manifest stored beside them with paths relative
    to it, and the loader given only the manifest's URL: the batches of the same videos as local files."""
    files, _ = scan([corpus / "videos"])
    want, _ = batches_of(write_manifest(tmp_path / "files.jsonl", files))
    s3_bucket.put(str(corpus / "shards"), "corpus/data/shards", recursive=True)
    members, rejected = scan(["s3://corpus/data/shards/{00000..00001}.tar"])
    assert not rejected and len(members) == CLIPS
    relative = [dataclasses.replace(record, path=record.path.removeprefix("s3://corpus/data/")) for record in members]
    s3_bucket.put(str(write_manifest(tmp_path / "manifest.jsonl", relative)), "corpus/data/manifest.jsonl")
    assert read_manifest("s3://corpus/data/manifest.jsonl") == members
    got, stats = batches_of("s3://corpus/data/manifest.jsonl", decode_workers=1)
    assert not stats.failed_files
    assert_same_batches(got, want)


def test_prepare_in_parts_and_frame_stores_from_shards(corpus, tmp_path):
    """`prepare scan SHARDS --part I/2` twice and `prepare merge` write what one scan writes; `prepare
    frames` on the members' manifest stores the frames the files give."""
    from vito_fast.cli.main import main as cli_main
    from vito_fast.data import FrameStore
    from vito_fast.prepare import extract_frames

    pattern = str(corpus / "shards" / "{00000..00001}.tar")
    common = ["--workers", "0", "--min-seconds", "0.5", "--no-progress", "--label-field", "label"]
    assert cli_main(["prepare", "scan", pattern, "-o", str(tmp_path / "whole.jsonl"), *common]) == 0
    for index in range(2):
        assert cli_main(["prepare", "scan", pattern, "-o", str(tmp_path / f"part{index}.jsonl"),
                         "--part", f"{index}/2", *common]) == 0
    assert cli_main(["prepare", "merge", str(tmp_path / "part1.jsonl"), str(tmp_path / "part0.jsonl"),
                     "-o", str(tmp_path / "merged.jsonl")]) == 0
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    # a part takes whole shards: it lists and probes only its own
    assert {parse_member(record.path).tar for record in read_manifest(tmp_path / "part0.jsonl")} == {
        str(corpus / "shards" / "00000.tar")}
    files, _ = scan([corpus / "videos"])
    stores = {}
    for name, manifest in (("files", write_manifest(tmp_path / "files.jsonl", files)),
                           ("members", tmp_path / "whole.jsonl")):
        extract_frames(manifest, tmp_path / name, fps=10, short_side=48, quality=90, workers=1, progress=False)
        stores[name] = FrameStore(tmp_path / name)
    pairs = [(clip, frame) for clip in range(CLIPS) for frame in (0, 7, stores["files"].num_frames(clip) - 1)]
    assert stores["members"].read_frames(pairs) == stores["files"].read_frames(pairs)
    # `prepare transcode` rewrites members into files named after the members
    from vito_fast.prepare.transcode import transcode_clips

    outputs = transcode_clips(read_manifest(tmp_path / "whole.jsonl")[:2], tmp_path / "vp9", codec="vp9", short_side=48,
                              gop=4, workers=0, progress=False)
    assert [Path(record.path).name for record in outputs] == ["000000-clip0.webm", "000001-clip1.webm"]
    assert [record.num_frames for record in outputs] == [record.num_frames for record in files[:2]]


def test_unequal_shards_give_ranks_equal_shares_and_a_mid_epoch_resume_resumes(corpus, tmp_path):
    """The complaints about shard loaders: ranks with unequal shards (DDP hangs) and resumes that restart
    the epoch. Shards of 1 and 5 videos over 2 ranks: each rank gets the same number of batches, the
    ranks' samples never overlap, and a loader restored from the state after its first batch gives the rest."""
    videos = sorted((corpus / "videos").glob("*.webm"))
    write_shard(tmp_path / "a.tar", videos[:1])
    write_shard(tmp_path / "b.tar", videos[1:])
    members, _ = scan([tmp_path / "a.tar", tmp_path / "b.tar"])
    manifest = write_manifest(tmp_path / "members.jsonl", members)
    config = LoaderConfig(image_size=32, dtype="float32", num_threads=2, backend="torch")
    ranks = []
    for rank in range(2):
        with PairLoader(str(manifest), 1, device="cpu", seed=3, rank=rank, world_size=2, config=config) as loader:
            ranks.append(list(loader))
    assert len(ranks[0]) == len(ranks[1]) == CLIPS // 2
    seen = [int(batch["sample_ids"][0]) for batches in ranks for batch in batches]
    assert len(set(seen)) == len(seen)
    with PairLoader(str(manifest), 1, device="cpu", seed=3, rank=1, world_size=2, config=config) as loader:
        iterator = iter(loader)
        next(iterator)
        state = loader.state_dict()
    with PairLoader(str(manifest), 1, device="cpu", seed=3, rank=1, world_size=2, config=config) as resumed:
        resumed.load_state_dict(state)
        assert_same_batches(list(resumed), ranks[1][1:])
