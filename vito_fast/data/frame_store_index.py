"""The frame store's index: version 2 (a small JSON header plus memory-mapped NumPy arrays).

Files of a version-2 index, next to the shards::

    index.json                    header: format, version 2, settings, shards, skipped clips, counts,
                                  label names (sorted) and ``array_prefix``
    index-<content id>.<name>.npy one array per name below, opened with ``np.load(mmap_mode="r")``

Per clip (N clips): ``manifest_index`` int64, ``shard`` int32, ``width``/``height`` int32,
``label`` int32 (index into the header's ``labels``, -1 for none), ``source`` int32 (index of the
source video), ``clip_start``/``clip_end``/``source_fps`` float64, and ``first_frame`` int64 (N + 1,
CSR style: clip c holds frames ``first_frame[c]:first_frame[c + 1]``). Per frame (F frames):
``frame_offsets`` int64 and ``frame_sizes`` int32 (the JPEG payload's byte range in its shard),
``source_times`` float64, ``source_frames`` int64. Source paths: ``source_bytes`` uint8 (their
UTF-8 text, one after the other) and ``source_offsets`` int64 (S + 1). Opening an index touches
none of the per-frame pages, so a 10M-frame store opens in milliseconds and a few MB.

The array files are named after a hash of their content and written before the header, each under
a temporary name and renamed, so ``index.json`` only ever names complete arrays. Version 1 (the
whole index as one JSON document, with per-clip lists) still opens: it is converted in memory, with
a warning that ``vito-fast prepare upgrade-store`` rewrites it as version 2 once and for all.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from vito_fast.errors import StoreError

FORMAT_NAME, FORMAT_VERSION = "vito_fast.frame_store", 2
INDEX_NAME = "index.json"
UPGRADE_HINT = "vito-fast prepare upgrade-store"

# name -> dtype; the per-clip arrays have N entries (first_frame N + 1), per-frame ones F
CLIP_ARRAYS = {"manifest_index": np.int64, "shard": np.int32, "width": np.int32, "height": np.int32,
               "label": np.int32, "source": np.int32, "clip_start": np.float64, "clip_end": np.float64,
               "source_fps": np.float64, "first_frame": np.int64}
FRAME_ARRAYS = {"frame_offsets": np.int64, "frame_sizes": np.int32, "source_times": np.float64,
                "source_frames": np.int64}
SOURCE_ARRAYS = {"source_bytes": np.uint8, "source_offsets": np.int64}
ARRAY_DTYPES = {**CLIP_ARRAYS, **FRAME_ARRAYS, **SOURCE_ARRAYS}


@dataclass
class StoreIndex:
    """A store's index in memory: the JSON header and the arrays (memory-mapped for version 2)."""

    path: Path
    version: int  # as found on disk (1: converted in memory)
    header: dict
    arrays: Dict[str, np.ndarray]


# ----------------------------------------------------------------------------- building and writing


def write_json_atomically(path: Path, document: dict) -> None:
    """Write ``document`` to ``path.tmp``, fsync it and rename it over ``path``."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(document, handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def arrays_from_clips(clips: Sequence[dict]) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Version-1 clip entries (dicts with per-frame lists) -> (the version-2 arrays, sorted label names)."""
    labels = sorted({str(clip["label"]) for clip in clips if clip["label"] is not None})
    label_ids = {name: number for number, name in enumerate(labels)}
    source_ids: Dict[str, int] = {}
    for clip in clips:
        source_ids.setdefault(clip["source"], len(source_ids))
    encoded = [source.encode("utf-8") for source in source_ids]
    counts = np.fromiter((len(clip["frame_sizes"]) for clip in clips), dtype=np.int64, count=len(clips))
    frames = int(counts.sum())

    def per_clip(key, dtype):
        return np.fromiter((clip[key] for clip in clips), dtype=dtype, count=len(clips))

    def per_frame(key, dtype):
        return np.fromiter(itertools.chain.from_iterable(clip[key] for clip in clips), dtype=dtype, count=frames)

    sizes = per_frame("frame_sizes", np.int64)
    if sizes.size and sizes.max() > np.iinfo(np.int32).max:
        raise StoreError(f"frame store index: a frame of {int(sizes.max())} bytes does not fit the index")
    arrays = {key: per_clip(key, dtype) for key, dtype in CLIP_ARRAYS.items()
              if key not in ("label", "source", "first_frame")}
    arrays["label"] = np.fromiter((-1 if clip["label"] is None else label_ids[str(clip["label"])] for clip in clips),
                                  dtype=np.int32, count=len(clips))
    arrays["source"] = np.fromiter((source_ids[clip["source"]] for clip in clips), dtype=np.int32, count=len(clips))
    arrays["first_frame"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arrays.update({key: per_frame(key, dtype) for key, dtype in FRAME_ARRAYS.items()})
    arrays["source_bytes"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    arrays["source_offsets"] = np.concatenate([[0], np.cumsum([len(text) for text in encoded])]).astype(np.int64)
    return arrays, labels


def _content_id(arrays: Dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def write_index(folder: Path, header: dict, arrays: Dict[str, np.ndarray], labels: Sequence[str]) -> Path:
    """Write a version-2 index into ``folder``: the arrays first, then ``index.json``; returns its path.

    ``header`` holds the settings, ``shards`` and ``skipped``; counts, labels and the array names
    are added here. Array files of an index this one replaces are removed afterwards.
    """
    folder = Path(folder)
    arrays = {name: np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in ARRAY_DTYPES.items()}
    prefix = f"index-{_content_id(arrays)}"
    for name, array in arrays.items():
        final = folder / f"{prefix}.{name}.npy"
        temporary = final.with_name(final.name + ".tmp")
        with open(temporary, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **header,
                "num_clips": len(arrays["manifest_index"]), "num_frames": len(arrays["frame_offsets"]),
                "num_sources": len(arrays["source_offsets"]) - 1, "labels": list(labels), "array_prefix": prefix}
    write_json_atomically(folder / INDEX_NAME, document)
    for stale in folder.glob("index-*.npy"):
        if not stale.name.startswith(prefix + "."):
            stale.unlink(missing_ok=True)
    return folder / INDEX_NAME


# ----------------------------------------------------------------------------- reading


def _expected_shapes(header: dict) -> Dict[str, Tuple[int, ...]]:
    clips, frames, sources = header["num_clips"], header["num_frames"], header["num_sources"]
    shapes = {name: (clips,) for name in CLIP_ARRAYS}
    shapes["first_frame"] = (clips + 1,)
    shapes.update({name: (frames,) for name in FRAME_ARRAYS})
    shapes["source_offsets"] = (sources + 1,)
    return shapes


def _load_arrays(index_path: Path, header: dict) -> Dict[str, np.ndarray]:
    arrays, expected = {}, _expected_shapes(header)
    for name, dtype in ARRAY_DTYPES.items():
        path = index_path.parent / f"{header['array_prefix']}.{name}.npy"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: cannot open this array of the index {index_path.name}: {error}") from None
        if array.dtype != dtype or (name in expected and array.shape != expected[name]) or array.ndim != 1:
            raise StoreError(f"{path}: {array.dtype} {array.shape}, the index expects {np.dtype(dtype)} "
                             f"{expected.get(name, '(1-d)')}")
        arrays[name] = np.asarray(array)  # a plain view of the mapping: np.memmap indexing is 3x slower
    first, offsets = arrays["first_frame"], arrays["source_offsets"]
    if first[0] != 0 or first[-1] != header["num_frames"] or offsets[-1] != len(arrays["source_bytes"]):
        raise StoreError(f"{index_path}: its arrays do not add up (frame or source counts differ)")
    return arrays


def _convert_version_1(index_path: Path, document: dict) -> StoreIndex:
    warnings.warn(f"{index_path}: version-1 frame store index (one JSON document): slow to open and held in "
                  f"memory by every process; convert it once with `{UPGRADE_HINT} {index_path.parent}`",
                  UserWarning, stacklevel=3)
    arrays, labels = arrays_from_clips(document["clips"])
    header = {key: value for key, value in document.items() if key not in ("clips", "version")}
    header.update(num_clips=len(document["clips"]), num_frames=len(arrays["frame_offsets"]),
                  num_sources=len(arrays["source_offsets"]) - 1, labels=labels)
    return StoreIndex(index_path, 1, header, arrays)


def read_index(path: os.PathLike) -> StoreIndex:
    """Open the index of a store folder (or its ``index.json``); StoreError names what is wrong.

    A URL (``storage.remote.is_url``) is read once, whole, into memory (``path`` then keeps the URL's text)."""
    from vito_fast.storage.remote import is_url

    if is_url(path):
        return _read_remote_index(str(path))
    path = Path(path)
    index_path = path / INDEX_NAME if path.is_dir() else path
    if not index_path.is_file():
        raise StoreError(f"{index_path}: no frame store index; the extraction has not finished "
                         "(run `vito-fast prepare frames` again to resume it)")
    try:
        header = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StoreError(f"{index_path}: unreadable frame store index: {error}") from None
    version = header.get("version") if isinstance(header, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME or version not in (1, FORMAT_VERSION):
        raise StoreError(f"{index_path}: not a {FORMAT_NAME} index of version 1 or {FORMAT_VERSION}")
    if version == 1:
        return _convert_version_1(index_path, header)
    return StoreIndex(index_path, version, header, _load_arrays(index_path, header))


def _read_remote_index(url: str) -> StoreIndex:
    import io

    from vito_fast.storage.remote import RemoteFiles, join_url

    base = url[: -len(INDEX_NAME)].rstrip("/") if url.endswith(INDEX_NAME) else url.rstrip("/")
    files = RemoteFiles(base)
    index_url = join_url(base, INDEX_NAME)
    try:
        header = json.loads(files.cat(index_url))
    except ValueError as error:
        raise StoreError(f"{index_url}: unreadable frame store index: {error}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise StoreError(f"{index_url}: not a {FORMAT_NAME} index of version {FORMAT_VERSION} "
                         f"(`vito-fast prepare upgrade-store` upgrades a version 1 store before it is uploaded)")
    arrays = {name: np.load(io.BytesIO(files.cat(join_url(base, f"{header['array_prefix']}.{name}.npy"))),
                            allow_pickle=False)
              for name in ARRAY_DTYPES}
    return StoreIndex(Path(INDEX_NAME), FORMAT_VERSION, {**header, "url": base}, arrays)


def source_path(arrays: Dict[str, np.ndarray], clip: int) -> str:
    """The source video of ``clip``, decoded from the packed UTF-8 paths."""
    source = int(arrays["source"][clip])
    start, end = int(arrays["source_offsets"][source]), int(arrays["source_offsets"][source + 1])
    return bytes(arrays["source_bytes"][start:end]).decode("utf-8")


def clip_documents(arrays: Dict[str, np.ndarray], labels: Sequence[str]) -> List[dict]:
    """Every clip as a version-1 entry (dict with per-frame lists): a Python loop, for tools and tests."""
    columns = {name: arrays[name].tolist() for name in (*CLIP_ARRAYS, *FRAME_ARRAYS)}
    first = columns["first_frame"]
    clips = []
    for clip in range(len(first) - 1):
        frames = slice(first[clip], first[clip + 1])
        label = columns["label"][clip]
        clips.append({"manifest_index": columns["manifest_index"][clip], "shard": columns["shard"][clip],
                      "source": source_path(arrays, clip), "label": None if label < 0 else labels[label],
                      **{name: columns[name][clip] for name in ("clip_start", "clip_end", "source_fps", "width",
                                                                  "height")},
                      **{name: columns[name][frames] for name in FRAME_ARRAYS}})
    return clips


def upgrade_store(path: os.PathLike) -> Tuple[Path, int]:
    """Rewrite a store's version-1 index as version 2 beside its shards; returns (index path, old version).

    A version-2 index is left as it is. The new arrays are complete before ``index.json`` is
    replaced (atomically), so readers see either the old index or the new one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = read_index(path)
    if index.version == FORMAT_VERSION:
        return index.path, index.version
    header = {key: value for key, value in index.header.items()
              if key not in ("format", "num_clips", "num_frames", "num_sources", "labels")}
    return write_index(index.path.parent, header, index.arrays, index.header["labels"]), index.version


def synthetic_index(num_clips: int, frames_per_clip: int, *, clips_per_shard: int = 100, num_labels: int = 400,
                    seed: int = 0) -> Tuple[dict, Dict[str, np.ndarray], List[str]]:
    """A made-up index (header, arrays, label names) of a store this size, without shards: for
    measuring how fast an index opens. Frames are 8-40 kB JPEGs at 8 fps, ten clips per video."""
    rng = np.random.default_rng(seed)
    frames = num_clips * frames_per_clip
    sizes = rng.integers(8_000, 40_000, size=frames, dtype=np.int64)
    shard = np.arange(num_clips, dtype=np.int64) // clips_per_shard
    frame_shard = np.repeat(shard, frames_per_clip)
    padded = 512 + (sizes + 511) // 512 * 512  # a tar header, then the payload rounded up to a block
    ends = np.cumsum(padded)
    shard_starts = np.concatenate([[0], ends[:-1]])[np.searchsorted(frame_shard, frame_shard, side="left")]
    offsets = ends - padded - shard_starts + 512
    shard_bytes = np.bincount(frame_shard, weights=padded).astype(np.int64) + 1024
    videos = np.arange(num_clips) // 10
    paths = [f"/data/videos/{video:07d}.mp4".encode() for video in range(int(videos[-1]) + 1 if num_clips else 0)]
    clip_start = (np.arange(num_clips) % 10) * frames_per_clip / 8.0
    times = np.repeat(clip_start, frames_per_clip) + np.tile(np.arange(frames_per_clip) / 8.0, num_clips)
    arrays = {"manifest_index": np.arange(num_clips), "shard": shard, "width": np.full(num_clips, 341),
              "height": np.full(num_clips, 256), "label": rng.integers(0, num_labels, size=num_clips),
              "source": videos, "clip_start": clip_start, "clip_end": clip_start + frames_per_clip / 8.0,
              "source_fps": np.full(num_clips, 30.0),
              "first_frame": np.arange(num_clips + 1, dtype=np.int64) * frames_per_clip,
              "frame_offsets": offsets, "frame_sizes": sizes, "source_times": times,
              "source_frames": np.floor(times * 30.0 + 1e-6).astype(np.int64),
              "source_bytes": np.frombuffer(b"".join(paths), dtype=np.uint8),
              "source_offsets": np.concatenate([[0], np.cumsum([len(path) for path in paths])]).astype(np.int64)}
    header = {"fps": 8, "short_side": 256, "quality": 90, "device": "cpu", "settings_digest": "synthetic",
              "shards": [{"name": f"shard-{number:05d}.tar", "bytes": int(size)} for number, size in
                         enumerate(shard_bytes)], "skipped": []}
    return header, arrays, [f"class{label:04d}" for label in range(num_labels)]


def write_version_1_index(folder: Path, header: dict, arrays: Dict[str, np.ndarray], labels: Sequence[str]) -> Path:
    """The same index as the version-1 JSON document (what stores made before version 2 hold)."""
    document = {"format": FORMAT_NAME, "version": 1, **header, "clips": clip_documents(arrays, labels)}
    write_json_atomically(Path(folder) / INDEX_NAME, document)
    return Path(folder) / INDEX_NAME
