"""`vito-fast curate`: vocabulary, matching rules, metadata reading, filters, balancing, determinism, report, CLI."""
from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vito_fast.cli.curate import main as curate_main
from vito_fast.curate.selection import (CurateConfig, _select, class_quotas, curate, curated_scan_inputs,
                                   expand_curated_lists, load_target, normalized_title)
from vito_fast.curate.metadata import parse_duration, read_metadata
from vito_fast.curate.vocabulary import PhraseMatcher, load_vocabulary, parse_vocabulary, plural_forms, tokenize

ANIMALS = """# a small vocabulary: index 0 is cat
cat, kitty
tiger cat
dog, hound
sea lion
mouse
glass
glasses, spectacles
crane
crane, tower crane
"""


@pytest.fixture(scope="module")
def imagenet():
    return load_vocabulary("imagenet1k")


@pytest.fixture
def animals(tmp_path):
    path = tmp_path / "animals.txt"
    path.write_text(ANIMALS)
    return path


def matched_classes(matcher: PhraseMatcher, text: str):
    return [sorted(entry[0] for entry in matcher.phrases[key]) for _, key in matcher.find(tokenize(text))]


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_jsonl(path: Path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def config(vocabulary, **overrides) -> CurateConfig:
    return CurateConfig(vocabulary=str(vocabulary), progress=False, **overrides)


# ----------------------------------------------------------------------------- vocabulary


def test_shipped_imagenet_vocabulary_is_in_class_index_order(imagenet):
    assert len(imagenet) == 1000
    assert list(imagenet.wnids) == sorted(imagenet.wnids) and len(set(imagenet.wnids)) == 1000
    assert (imagenet.wnids[0], imagenet.names[0]) == ("n01440764", "tench")
    assert (imagenet.wnids[281], imagenet.synonyms[281]) == ("n02123045", ("tabby", "tabby cat"))
    assert imagenet.names[207] == "golden retriever" and imagenet.names[999] == "toilet tissue"
    assert imagenet.label(281) == "n02123045"


def test_custom_vocabulary_skips_comments_and_names_bad_lines(tmp_path, animals):
    vocabulary = load_vocabulary(animals)
    assert len(vocabulary) == 9 and vocabulary.names[:3] == ["cat", "tiger cat", "dog"]
    assert vocabulary.synonyms[0] == ("cat", "kitty") and vocabulary.label(3) == "sea lion"
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\n\n , ,\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: a class needs synonyms"):
        load_vocabulary(bad)
    with pytest.raises(FileNotFoundError, match="no such vocabulary file"):
        load_vocabulary(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="no classes"):
        parse_vocabulary(["# only a comment"], "empty")


# ----------------------------------------------------------------------------- matching


def test_whole_words_only(animals):
    matcher = PhraseMatcher(load_vocabulary(animals))
    for text in ("a category of concatenated catalogues", "dogma", "hotdogs", "Glassware"):
        assert matcher.find(tokenize(text)) == [], text
    assert matched_classes(matcher, "my cat") == [[0]]
    assert matched_classes(matcher, "CAT!") == [[0]]


def test_punctuation_case_and_accents(animals):
    matcher = PhraseMatcher(load_vocabulary(animals))
    assert matched_classes(matcher, "Sea-Lion at the zoo") == [[3]]
    assert matched_classes(matcher, "SEA\tLION") == []  # a tab ends a phrase
    assert matched_classes(matcher, "the sea, lion") == []  # so does a comma
    assert matched_classes(matcher, "Kïtty's toy") == [[0]]  # accents folded, possessive 's dropped
    assert tokenize("the cats' bowl") == ["the", "cats", "bowl"]
    assert tokenize("R.V. in St. Bernard") == ["rv", "in", "st", "bernard"]
    assert tokenize("a crane. Next") == ["a", "crane", ".", "next"]


def test_plurals_and_exact_synonyms_win(animals):
    matcher = PhraseMatcher(load_vocabulary(animals))
    assert matched_classes(matcher, "three kitties and two dogs") == [[0], [2]]
    assert matched_classes(matcher, "sea lions") == [[3]]
    assert matched_classes(matcher, "mice") == [[4]]  # irregular
    # "glasses" is the plural of class 5's "glass" but class 6's own synonym: class 6 only
    assert matched_classes(matcher, "new glasses") == [[6]]
    assert matched_classes(matcher, "one glass") == [[5]]
    assert PhraseMatcher(load_vocabulary(animals), plurals=False).find(tokenize("kitties")) == []
    assert plural_forms("box") == ("boxes",) and plural_forms("puppy") == ("puppies",)
    assert plural_forms("day") == ("days",) and plural_forms("knife") == ("knifes", "knives")
    assert plural_forms("42") == ()


def test_multi_word_and_overlapping_synonyms(animals, imagenet):
    matcher = PhraseMatcher(load_vocabulary(animals))
    # leftmost-longest: "tiger cat" is one mention of class 1, not also of "cat"
    assert matched_classes(matcher, "a tiger cat asleep") == [[1]]
    assert matched_classes(matcher, "tiger cats and a cat") == [[1], [0]]
    assert matched_classes(matcher, "tower crane") == [[8]]
    assert matched_classes(matcher, "crane") == [[7, 8]]  # shared synonym: both classes are candidates
    shipped = PhraseMatcher(imagenet)
    assert matched_classes(shipped, "Jack-O'-Lantern carving") == [[607]]
    assert matched_classes(shipped, "two golden retrievers") == [[207]]
    assert matched_classes(shipped, "man eater") == matched_classes(shipped, "maneater") == [[2]]
    assert matched_classes(shipped, "sunglasses") == [[837]] and matched_classes(shipped, "sunglass") == [[836]]


def test_priority_longest_phrase_then_rarest_class(tmp_path, animals):
    rows = [
        {"id": "1", "path": "1.mp4", "title": "tiger cat", "description": "a cat and a dog"},  # longest: tiger cat
        {"id": "2", "path": "2.mp4", "title": "cat with dog"},  # cat: 3 rows mention it, dog: 2 -> dog
        {"id": "3", "path": "3.mp4", "title": "cat"},
        {"id": "4", "path": "4.mp4", "title": "crane over a crane"},  # shared by 7 and 8, tie -> 7
        {"id": "5", "path": "5.mp4", "tags": ["kitten", "sea lions"]},
    ]
    metadata = write_jsonl(tmp_path / "m.jsonl", rows)
    curate(metadata, tmp_path / "out.jsonl", config(animals))
    chosen = {record["id"]: (record["class_index"], record["matched_phrase"], record["matched_field"])
              for record in read_jsonl(tmp_path / "out.jsonl")}
    assert chosen == {"1": (1, "tiger cat", "title"), "2": (2, "dog", "title"), "3": (0, "cat", "title"),
                      "4": (7, "crane", "title"), "5": (3, "sea lion", "tags")}


# ----------------------------------------------------------------------------- reading metadata


def test_malformed_jsonl_rows_are_reported_by_line_and_skipped(tmp_path, animals):
    metadata = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "path": "a.mp4", "title": "a cat"},
        "{not json",
        "",
        "[1, 2]",
        {"path": "b.mp4", "title": "no id"},
        {"id": "c", "title": "no path"},
        {"id": "d", "path": "d.mp4", "title": "dog", "duration": "soon"},
        {"id": "e", "path": "e.mp4", "title": ["a", "list"]},
        {"id": "f", "url": "https://example.org/f", "title": "a dog", "duration": "1:02:03"},
    ])
    rows = list(read_metadata(metadata))
    malformed = [(row.line, row.reason.split(":")[0]) for row in rows if type(row).__name__ == "MalformedRow"]
    assert [line for line, _ in malformed] == [2, 4, 5, 6, 7, 8]
    assert malformed[0][1] == "not JSON" and "no id" in malformed[2][1] and "no 'path' or 'url'" in malformed[3][1]
    good = [row for row in rows if type(row).__name__ == "MetadataRow"]
    assert [(row.line, row.id, row.locator_field, row.duration) for row in good] == [
        (1, "a", "path", None), (9, "f", "url", 3723.0)]
    summary = curate(metadata, tmp_path / "out.jsonl", config(animals), report_dir=tmp_path / "report")
    assert summary.counts["malformed"] == 6 and summary.counts["kept"] == 2
    logged = read_jsonl(tmp_path / "report" / "malformed.jsonl")
    assert [entry["line"] for entry in logged] == [2, 4, 5, 6, 7, 8]


def test_malformed_csv_rows_are_reported_by_line_and_skipped(tmp_path, animals):
    metadata = tmp_path / "m.csv"
    metadata.write_text('id,path,title,tags,duration\n'
                        '1,1.mp4,"a cat, on\ntwo lines",pets,12\n'  # lines 2-3: one record
                        '2,2.mp4,dog\n'  # line 4: too few fields
                        '3,3.mp4,a dog,,abc\n'  # line 5: bad duration
                        '4,,a dog,,\n'  # line 6: empty path
                        '5,5.mp4,sea lion,zoo|sea,00:30\n')  # line 7
    rows = list(read_metadata(metadata))
    lines = {row.line: row for row in rows}
    assert sorted(lines) == [2, 4, 5, 6, 7]
    assert "3 fields where the header has 5" in lines[4].reason and "duration 'abc'" in lines[5].reason
    assert "no 'path' or 'url'" in lines[6].reason
    assert lines[2].title == "a cat, on\ntwo lines" and lines[2].duration == 12.0 and lines[7].duration == 30.0
    summary = curate(metadata, tmp_path / "out.jsonl", config(animals))
    assert (summary.counts["malformed"], summary.counts["kept"]) == (3, 2)
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("name,title\nx,a cat\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: the CSV header needs an 'id' column"):
        list(read_metadata(bad_header))


def test_gzipped_tsv_with_byte_order_mark(tmp_path, animals):
    import gzip

    metadata = tmp_path / "m.tsv.gz"
    with gzip.open(metadata, "wt", encoding="utf-8") as handle:
        handle.write("\ufeffvideo_id\turl\ttags\n7\thttps://example.org/7\tzoo|sea lion\n8\thttps://example.org/8\n")
    rows = list(read_metadata(metadata))
    assert [(row.line, row.id, row.locator) for row in rows[:1]] == [(2, "7", "https://example.org/7")]
    assert rows[1].line == 3 and "2 fields where the header has 3" in rows[1].reason
    curate(metadata, tmp_path / "out.jsonl", config(animals))
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {"id": "7", "url": "https://example.org/7", "label": "sea lion", "class_index": 3, "class_name": "sea lion",
         "matched_phrase": "sea lion", "matched_text": "sea lion", "matched_field": "tags"}]


def test_parse_duration():
    assert parse_duration(12) == 12.0 and parse_duration("7.5") == 7.5 and parse_duration("01:30") == 90.0
    assert parse_duration(None) is None and parse_duration("") is None
    for bad in ("-3", "nan", "1:2:3:4", True, [1]):
        with pytest.raises(ValueError):
            parse_duration(bad)


# ----------------------------------------------------------------------------- filters and balancing


def test_filters_in_order_and_counts_add_up(tmp_path, animals):
    rows = [
        {"id": "1", "path": "1.mp4", "title": "cat video", "duration": 30, "language": "en"},
        {"id": "1", "path": "other.mp4", "title": "dog"},  # duplicate id
        {"id": "2", "path": "1.mp4", "title": "dog"},  # duplicate path
        {"id": "3", "path": "3.mp4", "title": "dog", "language": "de-DE"},  # language
        {"id": "4", "path": "4.mp4", "title": "dog", "duration": 2},  # too short
        {"id": "5", "path": "5.mp4", "title": "dog", "duration": "10:00"},  # too long
        {"id": "6", "path": "6.mp4", "title": "a category"},  # no match
        {"id": "7", "path": "7.mp4", "title": "Cat Video (HD)!"},  # duplicate title of 1, same class
        {"id": "8", "path": "8.mp4", "title": "cat video", "tags": ["tiger cat"]},  # same title, other class
        {"id": "9", "path": "9.mp4", "title": "a dog", "language": "en-GB"},  # no duration: passes
    ]
    metadata = write_jsonl(tmp_path / "m.jsonl", rows)
    summary = curate(metadata, tmp_path / "out.jsonl",
                     config(animals, min_seconds=5, max_seconds=60, languages=["en"]))
    expected = {"malformed": 0, "duplicate_id": 1, "duplicate_path": 1, "language": 1, "too_short": 1, "too_long": 1,
                "no_match": 1, "duplicate_title": 1, "over_quota": 0, "kept": 3}
    assert summary.counts == expected and summary.rows == len(rows)
    assert [record["id"] for record in read_jsonl(tmp_path / "out.jsonl")] == ["1", "8", "9"]
    assert normalized_title("Cat Video (HD)!") == normalized_title("cat VIDEO!") == "cat"
    assert normalized_title("Cat video (HD) 2") == "cat 2"  # numbers kept: a part 2 is another video
    assert normalized_title("Cat video (HD) 2", keep_numbers=False) == "cat"


def test_numbered_titles_are_other_videos_and_the_report_shows_examples(tmp_path, animals):
    rng = random.Random()
    series = [f"my dog playing fetch {part}" for part in rng.sample(range(1, 500), 40)]
    rows = [{"id": f"s{index}", "path": f"s{index}.mp4", "title": title} for index, title in enumerate(series)]
    rows += [{"id": "again", "path": "again.mp4", "title": f"My Dog playing FETCH {series[0].split()[-1]} (HD)"},
             {"id": "none", "path": "none.mp4", "title": "a sunset"}]
    metadata = write_jsonl(tmp_path / "m.jsonl", rows)
    summary = curate(metadata, tmp_path / "out.jsonl", config(animals), report_dir=tmp_path / "report")
    assert summary.counts["duplicate_title"] == 1 and summary.counts["kept"] == 40  # only the re-upload
    (example,) = summary.examples["duplicate_title"]
    assert example["id"] == "again" and example["line"] == 41 and "my dog playing fetch" in example["detail"]
    assert summary.examples["no_match"][0]["id"] == "none"
    page = (tmp_path / "report" / "dropped.md").read_text()
    assert "## duplicate title: 1 rows" in page and "| 41 | again |" in page and "## no match: 1 rows" in page
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["dropped_examples"]["no_match"]

    loose = curate(metadata, tmp_path / "loose.jsonl", config(animals, title_duplicates="loose", per_class=5))
    assert loose.counts["duplicate_title"] == 40 and loose.counts["kept"] == 1
    assert len(loose.examples["duplicate_title"]) == 5  # at most five examples per reason
    off = curate(metadata, tmp_path / "off.jsonl", config(animals, title_duplicates="off", per_class=5))
    assert off.counts["duplicate_title"] == 0 and off.counts["over_quota"] == 36
    assert len(off.examples["over_quota"]) == 5 and "quota of 5" in off.examples["over_quota"][0]["detail"]
    assert curate_main([str(metadata), "-o", str(tmp_path / "cli.jsonl"), "--vocabulary", str(animals),
                        "--title-duplicates", "loose", "--no-progress"]) == 0
    assert len(read_jsonl(tmp_path / "cli.jsonl")) == 1
    with pytest.raises(ValueError, match="title_duplicates"):
        curate(metadata, tmp_path / "x.jsonl", config(animals, title_duplicates="fuzzy"))


def test_class_quotas_arithmetic():
    assert class_quotas(4, None, 3) == [4, 4, 4]
    assert class_quotas(10, [1, 2, 0.5, 0], 4) == [5, 10, 3, 0]  # 10 × w / max w, halves round up
    assert class_quotas(3, [1, 1, 1], 3) == [3, 3, 3]
    assert class_quotas(1300, [1300, 732], 2) == [1300, 732]
    with pytest.raises(ValueError, match="2 weights for 3 classes"):
        class_quotas(5, [1, 1], 3)
    with pytest.raises(ValueError, match="not all zero"):
        class_quotas(5, [0, 0], 2)


def test_select_keeps_the_smallest_keys_per_class():
    classes = np.array([0, 1, 0, -1, 0, 1, 2], dtype=np.int32)
    keys = np.array([30, 5, 10, 0, 20, 7, 1], dtype=np.uint64)
    assert _select(classes, keys, [2, 5, 0]).tolist() == [False, True, True, False, True, True, False]
    assert not _select(np.array([-1], dtype=np.int32), np.array([0], dtype=np.uint64), [1]).any()


def test_caps_follow_the_target_and_are_deterministic(tmp_path, animals):
    rng = random.Random(7)
    words = ["cat", "dog", "sea lion"]
    rows = [{"id": f"v{index}", "path": f"v{index}.mp4", "title": f"{rng.choice(words)} clip {index}",
             "description": f"filmed {index}"} for index in range(300)]
    rows = [dict(row, title=f"{row['title'].split(' clip')[0]} take{index}") for index, row in enumerate(rows)]
    metadata = write_jsonl(tmp_path / "m.jsonl", rows)
    target = tmp_path / "target.txt"
    target.write_text("# weights by name or index\ncat 2\n2, 1\nsea lion 0.5\n")
    weights = load_target(target, load_vocabulary(animals))
    assert weights == [2.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]

    def run(name, seed, rows_in=rows):
        write_jsonl(tmp_path / f"{name}.jsonl", rows_in)
        summary = curate(tmp_path / f"{name}.jsonl", tmp_path / f"{name}.out.jsonl",
                         config(animals, per_class=40, weights=weights, seed=seed))
        return summary, [record["id"] for record in read_jsonl(tmp_path / f"{name}.out.jsonl")]

    summary, first = run("a", seed=1)
    assert summary.quota[:4] == [40, 0, 20, 10]
    available = Counter(row["title"].rsplit(" ", 1)[0] for row in rows)
    assert summary.kept[:4] == [min(40, available["cat"]), 0, min(20, available["dog"]), min(10, available["sea lion"])]
    assert summary.counts["over_quota"] == len(rows) - sum(summary.kept)
    assert run("b", seed=1)[1] == first  # same seed, same list
    assert run("c", seed=2)[1] != first  # another seed, another choice
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert sorted(run("d", seed=1, rows_in=shuffled)[1]) == sorted(first)  # row order does not matter


# ----------------------------------------------------------------------------- output and report


def test_report_numbers_match_the_curated_list(tmp_path, imagenet):
    rng = random.Random(0)
    phrases = ["tabby cat", "golden retrievers", "a crane", "toilet paper", "goldfish", "nothing here"]
    rows = [{"id": index, "path": f"clips/{index}.mp4", "title": f"{rng.choice(phrases)} #{index}",
             "tags": rng.choice([[], ["hd"], ["tench"]]), "duration": rng.uniform(1, 100)} for index in range(400)]
    rows.insert(50, "oops")
    metadata = write_jsonl(tmp_path / "m.jsonl", rows)
    report = tmp_path / "report"
    summary = curate(metadata, tmp_path / "out.jsonl",
                     CurateConfig(per_class=25, min_seconds=3, progress=False, seed=5), report_dir=report)
    records = read_jsonl(tmp_path / "out.jsonl")
    document = json.loads((report / "summary.json").read_text())
    per_class = Counter(record["class_index"] for record in records)
    assert document["kept"] == len(records) == sum(per_class.values())
    assert document["rows"] == 401 == document["kept"] + sum(document["dropped"].values())
    assert document["dropped"]["malformed"] == 1
    assert {entry["index"]: entry["kept"] for entry in document["classes"] if entry["kept"]} == dict(per_class)
    assert all(entry["kept"] <= entry["quota"] == 25 for entry in document["classes"])
    too_few = {entry["index"] for entry in document["too_few"]}
    assert too_few == {index for index in range(1000) if per_class[index] < 25} and len(too_few) >= 995
    assert document["classes_with_videos"] == len(per_class)
    with open(report / "classes.tsv") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    assert len(table) == 1000 and int(table[281]["kept"]) == per_class[281]
    for record in records:
        assert record["label"] == imagenet.wnids[record["class_index"]]
        assert record["class_name"] == imagenet.names[record["class_index"]]
        assert record["matched_phrase"] in imagenet.synonyms[record["class_index"]] and record["duration"] >= 3
    from PIL import Image

    with Image.open(report / "histogram.png") as image:
        assert image.format == "PNG" and image.size == (1600, 640)
        colours = {colour for _, colour in image.getcolors(1 << 16)}
        assert (46, 110, 180) in colours and (200, 40, 40) in colours  # kept bars and quota marks were drawn
    assert summary.too_few == sorted(too_few)


def test_curated_list_feeds_prepare_scan(tmp_path, animals):
    (tmp_path / "clips").mkdir()
    metadata = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "1", "path": "clips/a.mp4", "title": "cat"},
        {"id": "2", "path": str(tmp_path / "b.mp4"), "title": "sea lion"},
        {"id": "3", "url": "https://example.org/c.mp4", "title": "dog"},
    ])
    output = tmp_path / "lists" / "curated.jsonl"
    curate(metadata, output, config(animals))
    (tmp_path / "lists" / "clips").mkdir()
    paths, labels = curated_scan_inputs(output)
    assert paths == [str(tmp_path / "lists" / "clips" / "a.mp4"), str(tmp_path / "b.mp4")]
    assert labels == {str(tmp_path / "lists" / "clips" / "a.mp4"): "cat", str(tmp_path / "b.mp4"): "sea lion"}
    (tmp_path / "lists" / "clips" / "a.mp4").write_bytes(b"")
    expanded, expanded_labels, missing = expand_curated_lists([str(output), str(tmp_path / "clips")])
    assert expanded == [str(tmp_path / "lists" / "clips" / "a.mp4"), str(tmp_path / "clips")]
    assert missing == [str(tmp_path / "b.mp4")] and expanded_labels == labels


# ----------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_messages(tmp_path, animals, capsys):
    metadata = write_jsonl(tmp_path / "m.jsonl", [{"id": "1", "path": "1.mp4", "title": "a dog"}, "broken"])
    output = tmp_path / "out.jsonl"
    assert curate_main([str(metadata), "-o", str(output), "--vocabulary", str(animals), "--no-progress",
                        "--report", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert f"{metadata}:2: skipped: not JSON" in captured.err
    assert "kept" in captured.out and "(1 videos)" in captured.out and output.exists()

    assert curate_main([str(tmp_path / "missing.jsonl"), "-o", str(output), "--vocabulary", str(animals)]) == 2
    assert "missing.jsonl: no such metadata file" in capsys.readouterr().err
    assert curate_main([str(metadata), "-o", str(output), "--vocabulary", str(tmp_path / "nope.txt")]) == 2
    assert "no such vocabulary file" in capsys.readouterr().err
    assert curate_main([str(metadata), "-o", str(output), "--min-seconds", "9", "--max-seconds", "3"]) == 2
    assert "--min-seconds 9 is above --max-seconds 3" in capsys.readouterr().err
    assert curate_main([str(metadata), "-o", str(output), "--per-class", "-1"]) == 2
    assert "must not be negative" in capsys.readouterr().err
    assert curate_main([str(metadata)]) == 2  # -o is required
    assert curate_main([str(metadata), "-o", str(output), "--target", str(tmp_path / "w.txt")]) == 2
    assert "no such target file" in capsys.readouterr().err
    unknown = tmp_path / "m.txt"
    unknown.write_text("{}\n")
    assert curate_main([str(unknown), "-o", str(output)]) == 2
    assert "cannot tell the metadata format" in capsys.readouterr().err

    nothing = write_jsonl(tmp_path / "none.jsonl", [{"id": "1", "path": "1.mp4", "title": "a category"}])
    assert curate_main([str(nothing), "-o", str(output), "--vocabulary", str(animals), "--no-progress"]) == 1
    assert "no video kept" in capsys.readouterr().err
    assert curate_main(["--help"]) == 0
    assert "vito-fast curate" in capsys.readouterr().out


def test_cli_dispatcher_routes_curate(tmp_path, animals, capsys):
    from vito_fast.cli.main import main as vito_fast_main

    metadata = write_jsonl(tmp_path / "m.jsonl", [{"id": "1", "path": "1.mp4", "title": "kitties"}])
    assert vito_fast_main(["curate", str(metadata), "-o", str(tmp_path / "o.jsonl"), "--vocabulary", str(animals),
                           "--no-progress"]) == 0
    assert read_jsonl(tmp_path / "o.jsonl")[0]["matched_text"] == "kitties"


def test_prepare_scan_reads_a_curated_list_and_labels_its_clips(tmp_path, animals, capsys):
    from videos import write_video

    from vito_fast.cli.main import main as cli_main
    from vito_fast.data.manifest import read_manifest

    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "a.webm", codec="vp9", num_frames=24, fps=12)
    metadata = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "1", "path": "clips/a.webm", "title": "my kitty"},
        {"id": "2", "path": "clips/gone.webm", "title": "a dog"},
    ])
    curated = tmp_path / "curated.jsonl"
    curate(metadata, curated, config(animals))
    manifest = tmp_path / "manifest.jsonl"
    assert cli_main(["prepare", "scan", str(curated), "-o", str(manifest), "--min-seconds", "0.5",
                     "--no-progress", "--workers", "0"]) == 0
    records = read_manifest(manifest)
    assert [(Path(r.path).name, r.label) for r in records] == [("a.webm", "cat")]
    rejected = read_jsonl(tmp_path / "manifest.rejected.jsonl")
    assert [Path(r["path"]).name for r in rejected] == ["gone.webm"]
    assert "curated list" in rejected[0]["detail"]
