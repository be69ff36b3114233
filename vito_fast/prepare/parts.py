"""Preparation across machines: ``prepare scan|frames --part I/N`` on each, then ``prepare merge``.

A part takes the I-th of N contiguous blocks of the files a whole scan would probe, in the same
(sorted) order, so its manifest is a contiguous piece of the whole one, and the merge, which joins
the parts in part order, writes exactly what one run writes. Beside its manifest each part writes
``<manifest>.part.json``: its number, the count, the settings that change what a scan writes and a
digest of the whole file list; the merge refuses parts made with other settings, over other files,
a part missing or given twice. Any scheduler runs the parts: a Slurm array
(``--part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``), a Kubernetes indexed job
(``$JOB_COMPLETION_INDEX``), a loop over hosts. ``prepare frames --part I/N`` extracts the I-th block
of a manifest's clips into a store of its own; ``merge_stores`` joins those stores.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

__all__ = ["Part", "parse_part", "part_files", "part_record_path", "write_part_record", "merge_parts", "merge_stores"]

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_part(text: str) -> Part:
    """"I/N" -> Part(I, N); ValueError naming the text otherwise."""
    try:
        index, count = (int(value) for value in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--part {text!r}: expected I/N, e.g. 0/4 (part 0 of 4)") from None
    if not 0 <= index < count:
        raise ValueError(f"--part {text!r}: need 0 <= I < N")
    return Part(index, count)


def part_bounds(count: int, part: Part) -> Tuple[int, int]:
    """[start, stop) of the ``part``'s contiguous block of ``count`` items (sizes differ by at most one)."""
    return count * part.index // part.count, count * (part.index + 1) // part.count


def part_files(files: Sequence[str], part: Part) -> List[str]:
    """The ``part``'s contiguous block of ``files``."""
    start, stop = part_bounds(len(files), part)
    return list(files[start:stop])


def _in_part_order(parts: Sequence[Tuple[Path, int, int]]) -> List[Path]:
    """(where, part index, part count) of each part given -> where, in part order; ValueError for a part
    given twice or missing. Whether the parts belong together is the caller's to check first."""
    by_index: Dict[int, Path] = {}
    for where, index, count in parts:
        if index in by_index:
            raise ValueError(f"part {index}/{count} given twice: {by_index[index]} and {where}")
        by_index[index] = where
    count = parts[0][2]
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise ValueError(f"parts {', '.join(f'{index}/{count}' for index in missing)} are missing")
    return [by_index[index] for index in range(count)]


def files_digest(files: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]


def part_record_path(manifest: PathLike) -> Path:
    """``manifest.jsonl`` -> ``manifest.jsonl.part.json``."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name + ".part.json")


def write_part_record(manifest: PathLike, part: Part, settings: Dict[str, object], files: Sequence[str]) -> Path:
    """Write the part's record beside its manifest (what ``merge_parts`` checks)."""
    record = {"part": part.index, "parts": part.count, "settings": settings, "files": len(files),
              "files_digest": files_digest(files)}
    path = part_record_path(manifest)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(temporary, path)
    return path


def merge_parts(manifests: Sequence[PathLike], output: PathLike) -> Tuple[Path, Path, int, int]:
    """Join the parts' manifests and rejected lists in part order into ``output`` and its rejected list.

    Returns (manifest, rejected list, clips, rejected files). ValueError naming what does not fit:
    a manifest without its part record, parts of different scans (count, settings or file list), a
    part missing or given twice.
    """
    from vito_fast.data.manifest import iter_manifest, rejected_manifest_path, write_manifest
    from vito_fast.prepare.probe import RejectedVideo

    records = []  # (manifest, its part record), as given: the same part twice is an error, not one part
    for manifest in map(Path, manifests):
        try:
            records.append((manifest, json.loads(part_record_path(manifest).read_text())))
        except FileNotFoundError:
            raise ValueError(f"{manifest}: no {part_record_path(manifest).name} beside it: "
                             f"not written by `prepare scan --part I/N`") from None
    first_manifest, first = records[0]
    for manifest, record in records:
        for key, name in (("parts", "the part count"), ("settings", "the scan settings"),
                          ("files_digest", "the list of files")):
            if record[key] != first[key]:
                raise ValueError(f"{manifest} and {first_manifest} differ in {name} "
                                 f"({record[key]!r} vs {first[key]!r}): parts of different scans")
    ordered = _in_part_order([(manifest, record["part"], record["parts"]) for manifest, record in records])
    clips = [record for manifest in ordered for record in iter_manifest(manifest)]
    rejected = []
    for manifest in ordered:
        rejected_path = rejected_manifest_path(manifest)
        if rejected_path.is_file():
            rejected += [RejectedVideo.from_json(line) for line in rejected_path.read_text().splitlines() if line]
    merged = write_manifest(output, clips)
    return merged, write_manifest(rejected_manifest_path(output), rejected), len(clips), len(rejected)


def merge_stores(stores: Sequence[PathLike], output: PathLike) -> Tuple[Path, int, int]:
    """Join frame stores written by ``prepare frames --part I/N`` into one store in ``output``.

    The shards are hard-linked (copied across file systems) under the names one extraction gives
    them, in part order, and one index lists every clip: the same clips, frames (the very JPEG
    bytes) and labels as one extraction, its shards split at the parts' boundaries. Returns (index,
    clips, frames). ValueError naming what does not fit: a store that is not a part, parts of another
    manifest or settings, a part missing or given twice.
    """
    import shutil

    from vito_fast.data.frame_store_index import arrays_from_clips, clip_documents, read_index, write_index

    parts = []
    for store in map(Path, stores):
        index = read_index(store)
        part = index.header.get("part")
        if part is None:
            raise ValueError(f"{store}: not written by `prepare frames --part I/N`")
        parts.append((store, index, part))
    first_store, first, first_part = parts[0]
    for store, index, part in parts:
        if index.header["settings_digest"] != first.header["settings_digest"] or part["count"] != first_part["count"]:
            raise ValueError(f"{store} and {first_store} are parts of different extractions (another manifest, "
                             f"other settings or another part count)")
    ordered = _in_part_order([(store, part["index"], part["count"]) for store, _, part in parts])
    index_of = {store: index for store, index, _ in parts}
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    clips, shards, skipped = [], [], []
    for store in ordered:
        index = index_of[store]
        folder = index.path.parent
        for clip in clip_documents(index.arrays, index.header["labels"]):
            clips.append({**clip, "shard": clip["shard"] + len(shards)})
        for shard in index.header["shards"]:
            name = f"shard-{len(shards):05d}.tar"
            target = output / name
            if target.exists():
                target.unlink()
            try:
                os.link(folder / shard["name"], target)
            except OSError:
                shutil.copyfile(folder / shard["name"], target)
            shards.append({"name": name, "bytes": shard["bytes"]})
        skipped += index.header.get("skipped", [])
    arrays, labels = arrays_from_clips(clips)
    settings = {key: first.header[key] for key in ("fps", "short_side", "quality", "device", "settings_digest")}
    path = write_index(output, {**settings, "shards": shards, "skipped": skipped}, arrays, labels)
    return path, len(clips), int(len(arrays["frame_offsets"]))
