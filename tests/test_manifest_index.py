"""A manifest's arrays built once and kept (vito_fast.data.manifest_index): the kept index gives the
arrays the JSON gives, is mapped read-only, is rebuilt when the manifest is written again or the index
is damaged, is built by one process while the others wait, and a cache that cannot be written keeps
nothing and loses nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vito_fast.data.manifest import ClipRecord, write_manifest
from vito_fast.data.manifest_index import build_manifest_arrays, manifest_arrays


def records(count: int, files: int = 7, label_every: int = 3):
    rng = np.random.default_rng(count)
    made = []
    for index in range(count):
        keyframes = sorted({0, *rng.integers(1, 90, size=int(rng.integers(0, 5))).tolist()})
        made.append(ClipRecord(
            f"videos/file{index % files}.mp4", int(rng.integers(20, 100)), float(rng.choice([24.0, 25.0, 29.97])),
            int(rng.choice([176, 312])), int(rng.choice([144, 240])), ["h264", "vp9"][index % 2], 3.0,
            clip_start=float(index % 3), clip_end=float(index % 3) + 2.0,
            label=None if index % label_every == 0 else f"class{index % 4}",
            keyframes=keyframes if index % 5 else None, keyframe_pts=[k * 512 for k in keyframes] if index % 5 else None,
            keyframe_bytes=[k * 1000 for k in keyframes] + [99_000] if index % 2 else None,
            orientation=[True, False, index % 2 == 0] if index % 4 == 0 else None, file_bytes=100_000 + index))
    return made


def same(kept, built) -> None:
    assert kept.paths == built.paths and kept.codecs == built.codecs and kept.classes == built.classes
    assert set(kept.arrays) == set(built.arrays)
    for name, values in built.arrays.items():
        np.testing.assert_array_equal(kept.arrays[name], values, err_msg=name)
        assert kept.arrays[name].dtype == values.dtype, name


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITO_FAST_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "manifests"


def test_the_kept_index_gives_the_arrays_the_json_gives_and_is_mapped(tmp_path, cache):
    manifest = write_manifest(tmp_path / "manifest.jsonl", records(61))
    first = manifest_arrays(manifest)
    assert first.kept is not None and first.kept.parent == cache
    again = manifest_arrays(manifest)
    assert again.kept == first.kept and isinstance(again.arrays["num_frames"], np.memmap)
    assert not again.arrays["num_frames"].flags.writeable  # shared, never written through
    same(again, build_manifest_arrays(manifest))
    assert len(again) == 61 and again.paths[0] == str(tmp_path / "videos" / "file0.mp4")


def test_a_manifest_written_again_is_read_again(tmp_path, cache):
    manifest = write_manifest(tmp_path / "manifest.jsonl", records(30))
    before = manifest_arrays(manifest)
    write_manifest(manifest, records(45))
    after = manifest_arrays(manifest)
    assert len(after) == 45 and after.kept != before.kept
    same(after, build_manifest_arrays(manifest))


def test_a_relative_manifest_keeps_its_paths_relative_to_where_it_was_opened(tmp_path, cache, monkeypatch):
    (tmp_path / "a" / "data").mkdir(parents=True)
    write_manifest(tmp_path / "a" / "data" / "manifest.jsonl", records(5))
    monkeypatch.chdir(tmp_path / "a")
    from_a = manifest_arrays("data/manifest.jsonl")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    from_b = manifest_arrays("../a/data/manifest.jsonl")
    assert from_a.paths[0] == "data/videos/file0.mp4" and from_b.paths[0] == "../a/data/videos/file0.mp4"


def test_a_damaged_index_is_built_again(tmp_path, cache):
    manifest = write_manifest(tmp_path / "manifest.jsonl", records(20))
    kept = manifest_arrays(manifest).kept
    with open(kept / "arrays.bin", "r+b") as torn:  # a torn write, a disk error
        torn.truncate(100)
    repaired = manifest_arrays(manifest)
    same(repaired, build_manifest_arrays(manifest))
    meta = json.loads((kept / "index.json").read_text())
    meta["version"] = -1
    (kept / "index.json").write_text(json.dumps(meta))
    same(manifest_arrays(manifest), build_manifest_arrays(manifest))


def test_a_cache_that_cannot_be_written_keeps_nothing_and_loses_nothing(tmp_path, monkeypatch):
    (tmp_path / "blocked").write_text("a file where the cache folder would be")
    monkeypatch.setenv("VITO_FAST_CACHE_DIR", str(tmp_path / "blocked" / "vito_fast"))
    manifest = write_manifest(tmp_path / "manifest.jsonl", records(12))
    index = manifest_arrays(manifest)
    assert index.kept is None
    same(index, build_manifest_arrays(manifest))


def test_the_cache_drops_the_least_recently_used_indexes_beyond_its_size(tmp_path, cache, monkeypatch):
    import time

    manifests = [write_manifest(tmp_path / f"m{index}.jsonl", records(10 + index)) for index in range(3)]
    first = manifest_arrays(manifests[0]).kept
    size = sum(path.stat().st_size for path in first.iterdir())
    monkeypatch.setenv("VITO_FAST_MANIFEST_CACHE_GB", str(2.5 * size / 1e9))  # room for two such indexes
    second = manifest_arrays(manifests[1]).kept
    time.sleep(0.05)
    manifest_arrays(manifests[0])  # used again: now the most recent but for the next one
    (cache / ".m9-interrupted").mkdir()
    os.utime(cache / ".m9-interrupted", (time.time() - 7200, time.time() - 7200))  # a build killed 2 h ago
    third = manifest_arrays(manifests[2]).kept
    assert sorted(path.name for path in cache.iterdir() if not path.name.startswith(".")) == \
        sorted([first.name, third.name])  # the second, least recently used, went
    assert not second.exists() and not (cache / ".m9-interrupted").exists()
    same(manifest_arrays(manifests[1]), build_manifest_arrays(manifests[1]))  # built again when asked


BUILD_ONCE = """
import sys, time
from vito_fast.data import manifest_index
built = []
original = manifest_index.build_manifest_arrays
def counted(manifest):
    built.append(1)
    time.sleep(1.0)  # long enough for the other processes to arrive while it builds
    return original(manifest)
manifest_index.build_manifest_arrays = counted
index = manifest_index.manifest_arrays(sys.argv[1])
print(len(built), len(index), index.kept is not None)
"""


def test_ranks_starting_together_build_the_index_once(tmp_path, cache):
    manifest = write_manifest(tmp_path / "manifest.jsonl", records(40))
    environment = dict(os.environ, VITO_FAST_CACHE_DIR=str(cache.parent))
    ranks = [subprocess.Popen([sys.executable, "-c", BUILD_ONCE, str(manifest)], env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    answers = [rank.communicate(timeout=120) for rank in ranks]
    said = sorted(out.split()[0] for out, _ in answers)
    assert said == ["0", "0", "1"], answers  # one built it, two waited and mapped it
    assert all(out.split()[1:] == ["40", "True"] for out, _ in answers), answers


def test_the_loaders_source_reads_the_kept_index(tmp_path, cache, monkeypatch):
    from vito_fast.data.pair_sources import VideoFileSource

    manifest = write_manifest(tmp_path / "manifest.jsonl", records(25))
    VideoFileSource(str(manifest))  # builds and keeps it
    kept = VideoFileSource(str(manifest))
    assert isinstance(kept.num_frames, np.memmap) and list(cache.iterdir())
    (tmp_path / "blocked").write_text("")
    monkeypatch.setenv("VITO_FAST_CACHE_DIR", str(tmp_path / "blocked" / "x"))  # read from the JSON, kept nowhere
    fresh = VideoFileSource(str(manifest))
    assert not isinstance(fresh.num_frames, np.memmap)
    assert kept.classes == fresh.classes == ["class0", "class1", "class2", "class3"]
    np.testing.assert_array_equal(kept.labels, fresh.labels)
    for clip in (0, 3, 24):
        assert kept.name(clip) == fresh.name(clip) and kept.orientation(clip) == fresh.orientation(clip)
        assert kept.job(clip, [1, 4]) == fresh.job(clip, [1, 4])
    assert Path(kept.name(0)).name == "file0.mp4"
