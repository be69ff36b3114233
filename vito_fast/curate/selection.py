"""VideoNet-style curation: pick videos whose metadata names an ImageNet class, balanced per class.

    summary = curate("metadata.jsonl", "curated.jsonl", CurateConfig(per_class=500), report_dir="report/")

Input: JSON lines or CSV with at least an id and a path or URL per video (``curate_metadata``
says which fields are read); a malformed row is reported with its line number and skipped.

Three streaming passes, memory O(rows × a few bytes) plus the per-class tables:
1. read, parse and filter every row, in file order: malformed -> duplicate id -> duplicate path ->
   language -> duration bounds (a row without a duration passes) -> no synonym in the text fields;
   the survivors' candidate classes go to a temporary file, and each class's corpus frequency
   (rows that mention it) is counted;
2. each survivor gets one class: the longest matched phrase (in words) wins, then the class that is
   rarest in the corpus (fewest rows mention it: specific beats generic, "tabby" beats "cat"), then
   the lowest class index. Duplicate titles are dropped: same class and same normalised title (the
   words without case, punctuation and upload noise such as "hd", "official", "video"; numbers are
   kept, since "... part 2" and "... day 7" are other videos; ``title_duplicates="loose"`` drops
   numbers too, ``"off"`` keeps every title), first row kept;
3. per-class caps: class c keeps at most ``quota[c] = round(per_class × weight[c] / max weight)``
   videos (uniform weights: ``per_class`` each), chosen by the smallest hash of (seed, id), so the
   choice depends on the seed and the ids only, not on the row order. The output keeps file order.

Duplicate ids, paths and titles are found through 64-bit BLAKE2b digests (a false duplicate among
10⁷ rows has probability ~3·10⁻⁶).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from array import array
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vito_fast.curate.metadata import MalformedRow, read_metadata
from vito_fast.curate.summary import DROP_REASONS, CurationSummary
from vito_fast.curate.vocabulary import BOUNDARY_TOKENS, PhraseMatcher, Vocabulary, load_vocabulary, tokenize

PathLike = Union[str, os.PathLike]

TEXT_FIELDS = ("title", "tags", "description")
TITLE_NOISE = frozenset("hd uhd fhd 4k 8k hq 1080p 720p 480p 360p 60fps official video clip full new".split())
_BATCH = 4096  # rows per pickled batch in the temporary file
EXAMPLES = 5  # example rows kept per drop reason, for the report
TITLE_DUPLICATES = ("exact", "loose", "off")


@dataclass
class CurateConfig:
    """What to keep. ``weights`` (one per class) are the target distribution; None means uniform."""

    vocabulary: Union[str, Vocabulary] = "imagenet1k"
    per_class: int = 1300  # ImageNet-1k's own training images per class
    min_seconds: Optional[float] = None
    max_seconds: Optional[float] = None
    weights: Optional[Sequence[float]] = None
    seed: int = 0
    languages: Optional[Sequence[str]] = None  # primary subtags ("en"); rows without a language pass
    fields: Sequence[str] = TEXT_FIELDS
    plurals: bool = True
    format: str = "auto"  # "jsonl", "csv" or "auto" (from the suffix)
    progress: bool = True
    title_duplicates: str = "exact"  # "exact" (numbers kept), "loose" (numbers dropped) or "off"


# ----------------------------------------------------------------------------- helpers


def digest(text: str) -> int:
    """64-bit BLAKE2b of ``text``: stable across runs and machines, unlike hash()."""
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def normalized_title(title: str, keep_numbers: bool = True) -> str:
    """The words of a title without case, punctuation and upload noise (and without numbers unless
    ``keep_numbers``): the duplicate-title key (with the class)."""
    return " ".join(word for word in tokenize(title)
                    if word not in TITLE_NOISE and word not in BOUNDARY_TOKENS
                    and (keep_numbers or not word.isdigit()))


class _Examples(dict):
    """reason -> the first EXAMPLES rows dropped for it, as small dicts a reader can check."""

    def add(self, reason: str, row, detail: str) -> None:
        rows = self.setdefault(reason, [])
        if len(rows) < EXAMPLES:
            rows.append({"line": row.line, "id": row.id, "title": row.title, "locator": row.locator,
                         "detail": detail})


def class_quotas(per_class: int, weights: Optional[Sequence[float]], num_classes: int) -> List[int]:
    """``round(per_class × w / max w)`` per class (halves up); uniform when ``weights`` is None."""
    if per_class < 0:
        raise ValueError(f"per_class must not be negative, not {per_class}")
    if weights is None:
        return [per_class] * num_classes
    if len(weights) != num_classes:
        raise ValueError(f"target: {len(weights)} weights for {num_classes} classes")
    if any(not math.isfinite(w) or w < 0 for w in weights) or max(weights) <= 0:
        raise ValueError("target: weights must be finite, non-negative and not all zero")
    largest = max(weights)
    return [int(math.floor(per_class * weight / largest + 0.5)) for weight in weights]


def load_target(spec: Union[str, PathLike], vocabulary: Vocabulary) -> Optional[List[float]]:
    """None for "uniform"; else a file of weights: one number per line in class order, or lines
    ``CLASS WEIGHT`` / ``CLASS,WEIGHT`` (CLASS: an index or a unique class name; unnamed classes get 0).
    Empty lines and ``#`` comments are skipped."""
    if str(spec) == "uniform":
        return None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such target file (or use 'uniform')")
    names: Dict[str, List[int]] = {}
    for index, name in enumerate(vocabulary.names):
        names.setdefault(name.lower(), []).append(index)
    positional, keyed = [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, separator, value = line.rpartition("," if "," in line else " ")
        try:
            weight = float(value if separator else line)
        except ValueError:
            raise ValueError(f"{path}:{number}: {value!r} is not a weight") from None
        if not separator:
            positional.append(weight)
            continue
        key = key.strip()
        if key.isdigit() and int(key) < len(vocabulary):
            keyed[int(key)] = weight
        elif len(names.get(key.lower(), ())) == 1:
            keyed[names[key.lower()][0]] = weight
        else:
            problem = "names several classes; use its index" if key.lower() in names else "is not a class"
            raise ValueError(f"{path}:{number}: {key!r} {problem}")
    if positional and keyed:
        raise ValueError(f"{path}: mixes bare weights and CLASS WEIGHT lines")
    if positional:
        if len(positional) != len(vocabulary):
            raise ValueError(f"{path}: {len(positional)} weights for {len(vocabulary)} classes")
        return positional
    return [keyed.get(index, 0.0) for index in range(len(vocabulary))]


# ----------------------------------------------------------------------------- curation


def curate(metadata: PathLike, output: PathLike, config: Optional[CurateConfig] = None,
           report_dir: Optional[PathLike] = None) -> CurationSummary:
    """Write the curated list to ``output`` (JSON lines) and, with ``report_dir``, the report."""
    from tqdm import tqdm

    config = CurateConfig() if config is None else config
    vocabulary = config.vocabulary if isinstance(config.vocabulary, Vocabulary) else load_vocabulary(config.vocabulary)
    unknown = [name for name in config.fields if name not in TEXT_FIELDS]
    if unknown or not config.fields:
        raise ValueError(f"fields must be some of {TEXT_FIELDS}, not {list(config.fields)}")
    if config.title_duplicates not in TITLE_DUPLICATES:
        raise ValueError(f"title_duplicates must be one of {TITLE_DUPLICATES}, not {config.title_duplicates!r}")
    examples = _Examples()
    metadata, output = Path(metadata), Path(output)
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata}: no such metadata file")
    quota = class_quotas(config.per_class, config.weights, len(vocabulary))
    matcher = PhraseMatcher(vocabulary, plurals=config.plurals)
    output.parent.mkdir(parents=True, exist_ok=True)
    malformed_log = None
    if report_dir is not None:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        malformed_log = open(Path(report_dir) / "malformed.jsonl", "w", encoding="utf-8")
    with tempfile.TemporaryFile(dir=output.parent, prefix=f".{output.name}.") as spool:
        try:
            with tqdm(total=metadata.stat().st_size, desc="curate: read", unit="B", unit_scale=True,
                      disable=not config.progress) as bar:
                counts, mentioned, malformed_examples, survivors = _filter_and_match(
                    read_metadata(metadata, config.format, bar.update), config, matcher, vocabulary, spool,
                    malformed_log, examples)
        finally:
            if malformed_log is not None:
                malformed_log.close()
        spool.seek(0)
        classes, positions = _assign_classes(_spooled(spool, survivors, config.progress, "curate: assign"),
                                             mentioned, config.seed, counts, examples, vocabulary.names)
        selected = _select(classes, positions, quota)
        matched = np.bincount(classes[classes >= 0], minlength=len(vocabulary)).tolist()
        kept = np.bincount(classes[selected], minlength=len(vocabulary)).tolist()
        counts["over_quota"] = int((classes >= 0).sum() - selected.sum())
        counts["kept"] = int(selected.sum())
        spool.seek(0)
        _write_curated(output, _spooled(spool, survivors, config.progress, "curate: write"), classes, selected,
                       mentioned, vocabulary, examples, quota)
    rows = sum(counts[reason] for reason in (*DROP_REASONS, "kept"))
    settings = {"metadata": str(metadata), "output": str(output), "vocabulary": vocabulary.source,
                "classes": len(vocabulary), "per_class": config.per_class,
                "target": "uniform" if config.weights is None else "weights", "seed": config.seed,
                "min_seconds": config.min_seconds, "max_seconds": config.max_seconds,
                "languages": list(config.languages) if config.languages else None, "fields": list(config.fields),
                "plurals": config.plurals, "title_duplicates": config.title_duplicates}
    for row in malformed_examples[:EXAMPLES]:
        examples.setdefault("malformed", []).append({"line": row.line, "detail": row.reason})
    summary = CurationSummary(rows, counts, vocabulary.names, mentioned, matched, quota, kept, malformed_examples,
                              settings, {reason: examples[reason] for reason in DROP_REASONS if reason in examples})
    if report_dir is not None:
        from vito_fast.curate.report import write_report

        write_report(report_dir, summary)
    return summary


def _filter_and_match(rows, config: CurateConfig, matcher: PhraseMatcher, vocabulary: Vocabulary, spool,
                      malformed_log, dropped: _Examples) -> Tuple[Dict[str, int], List[int], List[MalformedRow], int]:
    """Pass 1: filters, matching, corpus frequencies; survivors are pickled to ``spool`` in batches."""
    counts = dict.fromkeys((*DROP_REASONS, "kept"), 0)
    mentioned = [0] * len(vocabulary)
    examples: List[MalformedRow] = []
    seen_ids, seen_locators = set(), set()
    languages = {language.lower().split("-")[0] for language in config.languages} if config.languages else None
    low, high = config.min_seconds, config.max_seconds
    phrases, find = matcher.phrases, matcher.find
    field_index = {"title": 4, "description": 5, "tags": 6}
    fields = [(name, field_index[name]) for name in TEXT_FIELDS if name in config.fields]
    batch, survivors = [], 0
    for row in rows:
        if type(row) is MalformedRow:
            counts["malformed"] += 1
            if len(examples) < 100:
                examples.append(row)
            if malformed_log is not None:
                malformed_log.write(json.dumps(row._asdict()) + "\n")
            continue
        id_key, locator_key = digest(row.id), digest(row.locator)
        if id_key in seen_ids:
            counts["duplicate_id"] += 1
            dropped.add("duplicate_id", row, f"id {row.id!r} appeared on an earlier line")
            continue
        seen_ids.add(id_key)
        if locator_key in seen_locators:
            counts["duplicate_path"] += 1
            dropped.add("duplicate_path", row, f"{row.locator_field} appeared on an earlier line")
            continue
        seen_locators.add(locator_key)
        if languages is not None and row.language and row.language.lower().split("-")[0] not in languages:
            counts["language"] += 1
            dropped.add("language", row, f"language {row.language!r}")
            continue
        if row.duration is not None:
            if low is not None and row.duration < low:
                counts["too_short"] += 1
                dropped.add("too_short", row, f"{row.duration:g} s < {low:g} s")
                continue
            if high is not None and row.duration > high:
                counts["too_long"] += 1
                dropped.add("too_long", row, f"{row.duration:g} s > {high:g} s")
                continue
        # Leftmost-longest matches per field (never across two fields); candidates are the classes
        # of the longest phrases, in field order, each with the first phrase and field that named it.
        longest, candidates, classes = 0, {}, set()
        for name, index in fields:
            text = row[index]
            if not text:
                continue
            for size, key in find(tokenize(text)):
                entries = phrases[key]
                classes.update(entry[0] for entry in entries)
                if size > longest:
                    longest, candidates = size, {}
                if size == longest:
                    for class_index, synonym in entries:
                        candidates.setdefault(class_index, (synonym, key, name))
        if not candidates:
            counts["no_match"] += 1
            dropped.add("no_match", row, f"no synonym of a class in {', '.join(config.fields)}")
            continue
        for class_index in classes:
            mentioned[class_index] += 1
        # the spool keeps what passes 2 and 3 need: not the description and tags (most of the bytes)
        title_key = ("" if config.title_duplicates == "off"
                     else normalized_title(row.title, keep_numbers=config.title_duplicates == "exact"))
        batch.append((row._replace(description="", tags=""), title_key,
                      tuple((c, *found) for c, found in candidates.items())))
        if len(batch) == _BATCH:
            pickle.dump(batch, spool, protocol=pickle.HIGHEST_PROTOCOL)
            survivors += len(batch)
            batch = []
    if batch:
        pickle.dump(batch, spool, protocol=pickle.HIGHEST_PROTOCOL)
        survivors += len(batch)
    return counts, mentioned, examples, survivors


def _spooled(spool, total: int, progress: bool, description: str):
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="row", unit_scale=True, disable=not progress) as bar:
        done = 0
        while done < total:
            batch = pickle.load(spool)
            yield from batch
            done += len(batch)
            bar.update(len(batch))


def _winner(candidates, mentioned: List[int]):
    """Among equally long phrases: the class fewest rows mention, then the lowest index."""
    return min(candidates, key=lambda candidate: (mentioned[candidate[0]], candidate[0]))


def _assign_classes(survivors, mentioned: List[int], seed: int, counts: Dict[str, int], dropped: _Examples,
                    class_names: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Pass 2: (class per survivor, -1 for a near-duplicate title; selection key per survivor)."""
    classes, keys = array("i"), array("Q")
    seen_titles = set()
    prefix = f"{seed}\x1f"
    for row, title_key, candidates in survivors:
        class_index = _winner(candidates, mentioned)[0]
        if title_key:
            title_digest = digest(f"{class_index}\x1f{title_key}")
            if title_digest in seen_titles:
                counts["duplicate_title"] += 1
                dropped.add("duplicate_title", row, f"an earlier row of class {class_names[class_index]!r} has "
                                                    f"the same title key {title_key!r}")
                classes.append(-1)
                keys.append(0)
                continue
            seen_titles.add(title_digest)
        classes.append(class_index)
        keys.append(digest(prefix + row.id))
    return np.frombuffer(classes, dtype=np.int32).copy(), np.frombuffer(keys, dtype=np.uint64).copy()


def _select(classes: np.ndarray, keys: np.ndarray, quota: Sequence[int]) -> np.ndarray:
    """Pass 3's choice: per class, the ``quota[c]`` survivors with the smallest keys (boolean mask)."""
    selected = np.zeros(len(classes), dtype=bool)
    valid = np.flatnonzero(classes >= 0)
    if not len(valid):
        return selected
    order = valid[np.lexsort((keys[valid], classes[valid]))]
    ordered_classes = classes[order]
    starts = np.flatnonzero(np.r_[True, ordered_classes[1:] != ordered_classes[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.arange(len(order)) - group_start
    selected[order] = rank < np.asarray(quota, dtype=np.int64)[ordered_classes]
    return selected


def _write_curated(output: Path, survivors, classes: np.ndarray, selected: np.ndarray, mentioned: List[int],
                   vocabulary: Vocabulary, dropped: _Examples, quota: Sequence[int]) -> None:
    """Write the selected rows in file order, atomically (temporary file, then rename)."""
    handle = tempfile.NamedTemporaryFile("w", dir=output.parent, prefix=f".{output.name}.", suffix=".tmp",
                                         delete=False, encoding="utf-8")
    try:
        with handle:
            for position, (row, _, candidates) in enumerate(survivors):
                if not selected[position]:
                    if classes[position] >= 0:
                        name = vocabulary.names[int(classes[position])]
                        dropped.add("over_quota", row, f"class {name!r} kept its quota of {quota[int(classes[position])]} "
                                                       "(chosen by the hash of seed and id)")
                    continue
                class_index = int(classes[position])
                synonym, matched_text, field_name = next(c[1:] for c in candidates if c[0] == class_index)
                record = {"id": row.id, row.locator_field: row.locator, "label": vocabulary.label(class_index),
                          "class_index": class_index, "class_name": vocabulary.names[class_index],
                          "matched_phrase": synonym, "matched_text": matched_text, "matched_field": field_name}
                if row.title:
                    record["title"] = row.title
                if row.duration is not None:
                    record["duration"] = row.duration
                if row.language:
                    record["language"] = row.language
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, output)
    except BaseException:
        os.unlink(handle.name)
        raise


# ----------------------------------------------------------------------------- using the result


def read_curated(path: PathLike) -> List[dict]:
    """The records of a curated list; ValueError names the line of one that is not a JSON object."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError as error:
                    raise ValueError(f"{path}:{number}: not a curated record ({error})") from None
                if not isinstance(record, dict) or not ("path" in record or "url" in record):
                    raise ValueError(f"{path}:{number}: not a curated record (needs 'path' or 'url')")
                records.append(record)
    return records


def curated_scan_inputs(path: PathLike) -> Tuple[List[str], Dict[str, str]]:
    """(video paths for ``scan_videos``, label by resolved path) from a curated list.

    Relative paths are taken relative to the list's folder (as ``read_manifest`` does); records that
    only have a URL are skipped (download them first). Label the scanned clips with
    ``record.label = labels[record.path]``: ``scan_videos`` stores resolved paths.
    """
    base = Path(path).resolve().parent
    paths, labels = [], {}
    for record in read_curated(path):
        if "path" not in record:
            continue
        video = Path(record["path"])
        video = video if video.is_absolute() else base / video
        paths.append(str(video))
        labels[str(video.resolve())] = record.get("label")
    return paths, labels


def expand_curated_lists(paths: Sequence[str]) -> Tuple[List[str], Dict[str, str], List[str]]:
    """What ``prepare scan`` does with its PATHs: each ``*.jsonl`` file is a curated list, replaced by
    its videos; returns (paths to scan, label by resolved video path, listed videos that do not exist)."""
    expanded, labels, missing = [], {}, []
    for path in paths:
        if str(path).endswith(".jsonl") and Path(path).is_file():
            listed, listed_labels = curated_scan_inputs(path)
            for video in listed:
                (expanded if os.path.exists(video) else missing).append(video)
            labels.update(listed_labels)
        else:
            expanded.append(str(path))
    return expanded, labels, missing
