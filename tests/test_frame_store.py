"""Frame store v2: the binary index, pread reads, truncated/missing shards, version-1 stores and upgrade-store.

The store is extracted from synthetic videos (tests/videos.py) whose frames show their frame
number; ``tarfile`` reading the shards is the independent check of which bytes each frame has.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videos import decode_frame_number, write_video
from vito_fast.cli.main import main as cli_main
from vito_fast.data import FrameStore
from vito_fast.prepare import extract_frames, scan_videos
from vito_fast.data.frame_store_index import (ARRAY_DTYPES, INDEX_NAME, read_index, synthetic_index, write_index,
                                              write_version_1_index)
from vito_fast.data.pair_sources import FrameStoreSource
from vito_fast.errors import StoreError

LABELS = ["cat", "dog", None]


@pytest.fixture(scope="module")
def built_store(tmp_path_factory) -> Path:
    """Three videos cut into 1 s clips (labels cat/dog/none), at 6 fps in several small shards."""
    folder = tmp_path_factory.mktemp("videos")
    for number, (width, height, frames) in enumerate([(64, 48, 50), (48, 64, 40), (80, 48, 30)]):
        write_video(folder / f"video{number}.webm", width=width, height=height, fps=20, num_frames=frames)
    records, rejected = scan_videos([folder], clip_seconds=1.0, min_seconds=0.5, workers=0, progress=False)
    assert not rejected and len(records) >= 6
    for record in records:
        record.label = LABELS[int(Path(record.path).stem[-1])]
    extract_frames(records, folder / "store", fps=6, short_side=32, shard_bytes=10_000, workers=1, progress=False)
    return folder / "store"


@pytest.fixture
def store_dir(built_store, tmp_path) -> Path:
    """A private copy of the store, free to damage."""
    return Path(shutil.copytree(built_store, tmp_path / "store"))


def tar_members(folder: Path) -> dict:
    members = {}
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members.update({member.name: tar.extractfile(member).read() for member in tar.getmembers()})
    return members


def all_pairs(store: FrameStore) -> list:
    return [(clip, k) for clip in range(len(store)) for k in range(store.num_frames(clip))]


def test_version_2_index_round_trip_gives_the_tar_members(store_dir):
    header = json.loads((store_dir / INDEX_NAME).read_text())
    assert header["version"] == 2 and "clips" not in header and len(header["shards"]) > 2
    array_files = store_dir.glob(header["array_prefix"] + ".*.npy")
    assert sorted(path.name.split(".")[1] for path in array_files) == sorted(ARRAY_DTYPES)
    members = tar_members(store_dir)
    with FrameStore(store_dir) as store:
        assert store.version == 2 and len(members) == sum(store.num_frames(c) for c in range(len(store)))
        assert isinstance(store.arrays["frame_offsets"].base, np.memmap)  # a view of the mapped file
        for clip in range(len(store)):
            meta = store.clip(clip)
            manifest_index = int(store.arrays["manifest_index"][clip])
            for k in range(meta.num_frames):
                data = store.frame_bytes(clip, k)
                assert isinstance(data, bytes) and data == members[f"{manifest_index:08d}/{k:06d}.jpg"]
            image = Image.open(io.BytesIO(store.frame_bytes(clip, meta.num_frames - 1))).convert("RGB")
            assert image.size == (meta.width, meta.height)
            assert decode_frame_number(np.asarray(image)) == meta.source_frames[-1]
            assert meta.label == LABELS[int(Path(meta.source).stem[-1])]
        store.validate()


def test_read_frames_in_parallel_equals_one_at_a_time(store_dir):
    rng = np.random.default_rng(np.random.randint(2**31))
    with FrameStore(store_dir, threads=3) as store:
        pairs = all_pairs(store)
        order = rng.permutation(len(pairs))
        chosen = [pairs[i] for i in np.concatenate([order, order[: rng.integers(1, len(order))]])]
        assert store.read_frames(chosen) == [store.frame_bytes(clip, k) for clip, k in chosen]
        assert store.read_frames(np.zeros((0, 2), dtype=np.int64)) == []
        with pytest.raises(IndexError, match=f"clip 0 frame {store.num_frames(0)} is not in the store"):
            store.read_frames([(1, 0), (0, store.num_frames(0))])
        with pytest.raises(IndexError, match=f"clip {len(store)} frame 0"):
            store.frame_bytes(len(store), 0)


def test_few_open_descriptors_and_a_forked_child_read_the_same_bytes(store_dir):
    rng = np.random.default_rng(np.random.randint(2**31))
    with FrameStore(store_dir) as store:
        pairs = all_pairs(store)
        expected = store.read_frames(pairs)
    with FrameStore(store_dir, threads=3, max_open_shards=1) as store:  # descriptors closed and reopened
        order = rng.permutation(len(pairs))
        assert store.read_frames([pairs[i] for i in order]) == [expected[i] for i in order]
        assert store.open_shards <= 1 + store.threads
        child = os.fork()  # the read threads of the parent do not exist in the child
        if child == 0:
            os._exit(0 if store.read_frames(pairs) == expected else 1)
        assert os.waitpid(child, 0)[1] == 0


def test_frame_store_source_arrays_and_loads(store_dir):
    source = FrameStoreSource(store_dir, threads=2)
    store = source.store
    clips = [store.clip(clip) for clip in range(len(store))]  # the per-clip loop the arrays replace
    np.testing.assert_array_equal(source.num_frames, [clip.num_frames for clip in clips])
    np.testing.assert_array_equal(source.frame_hw, [(clip.height, clip.width) for clip in clips])
    assert source.frame_hw.dtype == source.num_frames.dtype == source.labels.dtype == np.int64
    assert source.classes == ["cat", "dog"] and source.fps.tolist() == [6.0] * len(clips)
    assert [None if i < 0 else source.classes[i] for i in source.labels] == [clip.label for clip in clips]
    assert source.input_kind == "jpeg"

    rng = np.random.default_rng(np.random.randint(2**31))
    batch = rng.integers(0, len(source), size=13)
    frames = np.stack([rng.integers(0, source.num_frames[batch]) for _ in range(2)], axis=1)
    many = source.load_many(batch, frames)
    for clip, pair, loaded in zip(batch, frames, many):
        single = source.load(int(clip), pair)
        assert sorted(loaded) == ["image0", "image1"] and loaded["image0"].dtype == np.uint8
        for view in (0, 1):
            assert loaded[f"image{view}"].tobytes() == single[f"image{view}"].tobytes() == \
                store.frame_bytes(int(clip), int(pair[view]))
        source.verify(int(clip), pair)
    assert f"clip 3 from {store.clip(3).source}" in source.name(3) and store.shards[store.clip(3).shard]["name"] in \
        source.name(3)


def test_incomplete_jpeg_is_a_store_error(store_dir):
    store = FrameStore(store_dir)
    clip = len(store) - 1
    offset, size = int(store.frame_offsets(clip)[1]), int(store.frame_sizes(clip)[1])
    shard = store.shard_path(clip)
    with open(shard, "r+b") as handle:  # the bytes stay, the JPEG end marker goes
        handle.seek(offset + size - 2)
        handle.write(b"\0\0")
    source = FrameStoreSource(store_dir)
    with pytest.raises(StoreError, match=rf"{shard.name} \(clip {clip} from .*\): frame 1 is not a complete JPEG"):
        source.load(clip, [0, 1])
    good, bad = source.load_many([0, clip], [[0, 0], [0, 1]])
    assert set(good) == {"image0", "image1"} and isinstance(bad, StoreError) and "frame 1" in str(bad)


def test_truncated_shard_is_a_store_error_not_sigbus(store_dir):
    """The shard shrinks while its descriptor is open (mapped, this was SIGBUS): the child exits cleanly."""
    store = FrameStore(store_dir)
    clip = len(store) - 1
    shard = store.shard_path(clip)
    cut = int(store.frame_offsets(clip)[-1]) + 10
    child = textwrap.dedent(f"""
        import os, sys
        from vito_fast.data import FrameStore
        from vito_fast.errors import StoreError
        store = FrameStore({str(store_dir)!r})
        store.frame_bytes({clip}, 0)  # the shard's descriptor is open now
        os.truncate({str(shard)!r}, {cut})
        try:
            store.frame_bytes({clip}, {store.num_frames(clip) - 1})
        except StoreError as error:
            print(error)
            sys.exit(0)
        sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(shard) in result.stdout and f"clip {clip} frame {store.num_frames(clip) - 1}" in result.stdout
    assert "truncated" in result.stdout
    assert os.path.getsize(shard) == cut
    source = FrameStoreSource(store_dir)
    rows = source.load_many([0, clip, clip], [[0, 1], [0, 0], [0, source.num_frames[clip] - 1]])
    assert isinstance(rows[0], dict) and isinstance(rows[1], dict) and isinstance(rows[2], StoreError)
    with pytest.raises(StoreError, match=shard.name):
        store.validate()


def test_missing_shard_is_a_store_error(store_dir):
    store = FrameStore(store_dir)
    clip = len(store) // 2
    shard = store.shard_path(clip)
    shard.unlink()
    with pytest.raises(StoreError, match=rf"{shard}: shard missing \(needed for clip {clip} frame 2\)"):
        store.frame_bytes(clip, 2)
    with pytest.raises(StoreError, match=shard.name):
        store.validate()
    rows = FrameStoreSource(store_dir).load_many([clip, 0], [[0, 1], [1, 0]])
    assert isinstance(rows[0], StoreError) and isinstance(rows[1], dict)


def version_1_document(folder: Path) -> dict:
    """The version-1 index, built by hand from the shard sidecars as the old extractor did."""
    sidecars = [json.loads(path.read_text()) for path in sorted(folder.glob("shard-*.json"))]
    header = json.loads((folder / INDEX_NAME).read_text())
    settings = {key: header[key] for key in ("fps", "short_side", "quality", "device", "settings_digest")}
    return {"format": "vito_fast.frame_store", "version": 1, **settings,
            "shards": [{"name": s["name"], "bytes": s["bytes"]} for s in sidecars],
            "clips": [clip for s in sidecars for clip in s["clips"]],
            "skipped": [entry for s in sidecars for entry in s["skipped"]]}


def test_version_1_store_opens_and_upgrade_store_converts_it(store_dir, capsys):
    with FrameStore(store_dir) as store:
        expected = store.read_frames(all_pairs(store))
    version_2 = json.loads((store_dir / INDEX_NAME).read_text())
    document = version_1_document(store_dir)
    for path in store_dir.glob("index*"):
        path.unlink()
    (store_dir / INDEX_NAME).write_text(json.dumps(document))

    with pytest.warns(UserWarning, match=f"upgrade-store {store_dir}"):
        old = FrameStore(store_dir)
    assert old.version == 1 and old.read_frames(all_pairs(old)) == expected
    assert old.index["clips"] == document["clips"]
    with pytest.warns(UserWarning):
        source = FrameStoreSource(store_dir)
    assert source.classes == ["cat", "dog"]

    assert cli_main(["prepare", "upgrade-store", str(store_dir)]) == 0
    assert "upgraded from version 1 to 2" in capsys.readouterr().out
    assert json.loads((store_dir / INDEX_NAME).read_text()) == version_2  # as extraction wrote it
    with FrameStore(store_dir) as upgraded:
        assert upgraded.version == 2 and upgraded.read_frames(all_pairs(upgraded)) == expected
        assert upgraded.index == document  # nothing of version 1 was lost
    assert cli_main(["prepare", "upgrade-store", str(store_dir / INDEX_NAME)]) == 0
    assert "already version 2" in capsys.readouterr().out
    assert cli_main(["prepare", "upgrade-store", str(store_dir / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_index_files_are_checked_and_replaced_atomically(tmp_path):
    header, arrays, labels = synthetic_index(30, 7, clips_per_shard=4, seed=int(np.random.randint(2**31)))
    first = write_index(tmp_path, header, arrays, labels)
    prefix = json.loads(first.read_text())["array_prefix"]
    arrays["frame_sizes"] = arrays["frame_sizes"] + 1
    write_index(tmp_path, header, arrays, labels)  # another index: the old arrays go after the header
    new_prefix = json.loads(first.read_text())["array_prefix"]
    assert new_prefix != prefix and not list(tmp_path.glob(prefix + "*"))
    store = FrameStore(tmp_path)
    np.testing.assert_array_equal(store.frame_sizes(5), arrays["frame_sizes"][35:42])
    assert store.clip(12).source == "/data/videos/0000001.mp4" and store.clip(12).num_frames == 7
    (tmp_path / f"{new_prefix}.source_times.npy").unlink()
    with pytest.raises(StoreError, match="source_times.npy: cannot open"):
        FrameStore(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"format": "vito_fast.frame_store", "version": 9}))
    with pytest.raises(StoreError, match="index.json: not a vito_fast.frame_store index of version 1 or 2"):
        read_index(tmp_path)


OPEN_COST = """
import json, sys, time
from vito_fast.data.pair_sources import FrameStoreSource

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

before = status("VmRSS:")
started = time.perf_counter()
source = FrameStoreSource(sys.argv[1])
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_mb": status("VmRSS:") - before, "clips": len(source),
                  "frames": int(source.num_frames.sum())}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_million_frame_index_opens_fast_and_small(tmp_path):
    header, arrays, labels = synthetic_index(10_000, 100, seed=int(np.random.randint(2**31)))
    write_index(tmp_path, header, arrays, labels)
    result = subprocess.run([sys.executable, "-c", OPEN_COST, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, check=True)
    cost = json.loads(result.stdout)
    assert (cost["clips"], cost["frames"]) == (10_000, 1_000_000)
    assert cost["seconds"] < 1.0 and cost["rss_mb"] < 60, cost  # v1 JSON: ~0.5 s and ~200 MB here


def test_version_1_writer_matches_version_2(tmp_path):
    header, arrays, labels = synthetic_index(12, 5, clips_per_shard=5, seed=int(np.random.randint(2**31)))
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    write_version_1_index(tmp_path / "v1", header, arrays, labels)
    write_index(tmp_path / "v2", header, arrays, labels)
    with pytest.warns(UserWarning):
        old = read_index(tmp_path / "v1")
    new = read_index(tmp_path / "v2")
    used = sorted(set(labels[i] for i in arrays["label"]))  # version 1 only knows the labels in use
    assert old.header["labels"] == used
    for name in ARRAY_DTYPES:
        if name != "label":
            np.testing.assert_array_equal(old.arrays[name], new.arrays[name], err_msg=name)
    np.testing.assert_array_equal([old.header["labels"][i] for i in old.arrays["label"]],
                                  [labels[i] for i in new.arrays["label"]])


def test_parallel_extraction_writes_the_same_store(built_store, tmp_path):
    records, _ = scan_videos([built_store.parent], clip_seconds=1.0, min_seconds=0.5, workers=0, progress=False)
    for record in records:
        record.label = LABELS[int(Path(record.path).stem[-1])]
    extract_frames(records, tmp_path, fps=6, short_side=32, shard_bytes=10_000, workers=2, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == \
        {p.name: p.read_bytes() for p in built_store.iterdir()}
