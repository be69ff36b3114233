"""Reading video metadata for `vito-fast curate`: JSON lines or CSV/TSV, optionally gzipped, streamed.

One video per row: ``id`` (or ``video_id``), ``path`` or ``url``, and any of ``title``,
``description``, ``tags`` (a list, or text), ``duration`` (seconds, or ``[HH:]MM:SS``),
``language``. Every row comes out as a ``MetadataRow`` or, with its line number and the reason, a
``MalformedRow``; reading never stops at a bad row.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
from pathlib import Path
from typing import IO, Iterator, NamedTuple, Optional, Union

PathLike = Union[str, os.PathLike]

ID_FIELDS = ("id", "video_id")
LOCATOR_FIELDS = ("path", "url")
CSV_FIELD_LIMIT = 16 << 20  # characters; the csv module's default (128 KiB) is short for descriptions


class MetadataRow(NamedTuple):
    """One well-formed row: ``locator_field`` is "path" or "url" (path preferred when both exist)."""

    line: int
    id: str
    locator_field: str
    locator: str
    title: str
    description: str
    tags: str
    duration: Optional[float]
    language: Optional[str]


class MalformedRow(NamedTuple):
    line: int
    reason: str


def parse_duration(value) -> Optional[float]:
    """Seconds from a number, a numeric string or ``[HH:]MM:SS[.f]``; None for empty; ValueError else."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"duration {value!r} is not a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        parts = value.strip().split(":")
        try:
            if len(parts) > 3:
                raise ValueError
            seconds = 0.0
            for part in parts:
                seconds = seconds * 60 + float(part)
        except ValueError:
            raise ValueError(f"duration {value!r} is not seconds or [HH:]MM:SS") from None
    else:
        raise ValueError(f"duration {value!r} is not a number of seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration {value!r} is not a non-negative number of seconds")
    return seconds


def _text(fields: dict, name: str) -> str:
    value = fields.get(name)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if name == "tags" and isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return " , ".join(value)  # the comma keeps phrases from running across two tags
    raise ValueError(f"{name} is not text{' or a list of text' if name == 'tags' else ''} "
                     f"(got {type(value).__name__})")


def row_from_fields(fields: dict, line: int) -> Union[MetadataRow, MalformedRow]:
    """Validate one row's fields (a dict from JSON or CSV)."""
    try:
        identifier = next((fields[name] for name in ID_FIELDS if fields.get(name) not in (None, "")), None)
        if identifier is None:
            return MalformedRow(line, "no id (a non-empty 'id' or 'video_id')")
        if isinstance(identifier, bool) or not isinstance(identifier, (str, int)):
            return MalformedRow(line, f"id {identifier!r} is not text or an integer")
        locator_field = next((name for name in LOCATOR_FIELDS if fields.get(name) not in (None, "")), None)
        if locator_field is None:
            return MalformedRow(line, "no 'path' or 'url'")
        locator = fields[locator_field]
        if not isinstance(locator, str):
            return MalformedRow(line, f"{locator_field} {locator!r} is not text")
        language = fields.get("language")
        if language is not None and not isinstance(language, str):
            return MalformedRow(line, f"language {language!r} is not text")
        return MetadataRow(line, str(identifier).strip(), locator_field, locator, _text(fields, "title"),
                           _text(fields, "description"), _text(fields, "tags"), parse_duration(fields.get("duration")),
                           language or None)
    except ValueError as error:
        return MalformedRow(line, str(error))


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def detect_format(path: PathLike) -> str:
    """"jsonl" or "csv" from the suffix (before a ``.gz``); ValueError for anything else."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    kind = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}.get(
        suffixes[-1] if suffixes else "")
    if kind is None:
        raise ValueError(f"{path}: cannot tell the metadata format from the suffix; "
                         "name it .jsonl or .csv (or pass format='jsonl'/'csv')")
    return kind


def read_metadata(path: PathLike, format: str = "auto", progress=None) -> Iterator[Union[MetadataRow, MalformedRow]]:
    """Stream rows of a JSONL or CSV/TSV file (optionally gzipped); ``progress(bytes)`` is called now and then."""
    path = Path(path)
    kind = detect_format(path) if format == "auto" else format
    if kind not in ("jsonl", "csv", "tsv"):
        raise ValueError(f"metadata format must be 'jsonl', 'csv' or 'tsv', not {format!r}")
    with _open_binary(path) as handle:
        rows = _read_jsonl(handle) if kind == "jsonl" else _read_csv(handle, path, "\t" if kind == "tsv" else ",")
        position = 0
        for count, row in enumerate(rows):
            if progress is not None and count % 8192 == 0:
                offset = handle.tell() if not isinstance(handle, gzip.GzipFile) else handle.fileobj.tell()
                progress(offset - position)
                position = offset
            yield row
        if progress is not None:
            progress(max(0, path.stat().st_size - position))


def _read_jsonl(handle: IO[bytes]) -> Iterator[Union[MetadataRow, MalformedRow]]:
    for line, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError as error:  # its own line/column would count within this line
            yield MalformedRow(line, f"not JSON: {error.msg} at column {error.colno}")
            continue
        except ValueError as error:  # UnicodeDecodeError
            yield MalformedRow(line, f"not UTF-8 JSON: {error}")
            continue
        if not isinstance(fields, dict):
            yield MalformedRow(line, f"a JSON {type(fields).__name__}, not an object")
            continue
        yield row_from_fields(fields, line)


def _read_csv(handle: IO[bytes], path: Path, delimiter: str) -> Iterator[Union[MetadataRow, MalformedRow]]:
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="replace", newline="")
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))  # long descriptions are not errors
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as error:
        raise ValueError(f"{path}:1: unreadable CSV header ({error})") from None
    if not any(name in header for name in ID_FIELDS) or not any(name in header for name in LOCATOR_FIELDS):
        raise ValueError(f"{path}:1: the CSV header needs an 'id' column and a 'path' or 'url' column, got {header}")
    previous_end = reader.line_num
    while True:
        start = previous_end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            previous_end = reader.line_num
            yield MalformedRow(start, f"not CSV: {error}")
            continue
        previous_end = reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) != len(header):
            yield MalformedRow(start, f"{len(cells)} fields where the header has {len(header)}")
            continue
        yield row_from_fields({name: (cell if cell != "" else None) for name, cell in zip(header, cells)}, start)
