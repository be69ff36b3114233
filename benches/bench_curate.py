"""`vito-fast curate`: rows/s, total seconds and peak memory on a generated metadata file.

    python benches/bench_curate.py                          # one timed run, printed as Markdown
    pytest benches/bench_curate.py --benchmark-only -q      # the same run under pytest-benchmark

Corpus (generated once into a temporary folder, not timed, never committed): ROWS JSON lines that
look like a video platform's metadata: a title of 4-12 words, a description of 20-60 words, 0-6
tags, a log-normal duration (median 60 s, at most 2 h) and a language (90% "en"). 80% of rows name an ImageNet-1k class,
drawn from a Zipf-like distribution over classes (a few classes are very common, most are rare),
through any of the class's synonyms, singular or plural, in the title, the tags or the description;
the other 20% name none. 1% of rows repeat an earlier id, 1% an earlier path, 2% an earlier title,
0.1% are malformed. The timed run is the CLI in a child process (`python -m vito_fast.cli.main
curate ... --per-class 500 --min-seconds 4 --max-seconds 600 --languages en --report DIR`), so the peak memory is
that process's maximum resident set size; its CPU time is reported beside the wall time (the
machine may be shared).
Env: VITO_BENCH_ROWS (default 1,000,000), VITO_BENCH_KEEP (a folder to keep the corpus in).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROWS = int(os.environ.get("VITO_BENCH_ROWS", "1000000"))
FILLER = ("my first time seeing this amazing little big old new video footage clip of the a in at on with and "
          "today funny cute wild best slow motion close up morning evening walk trip travel park garden home "
          "city street river lake forest beach mountain family friends vlog part episode review look watch").split()


def generate_metadata(path: Path, rows: int, seed: int = 0) -> None:
    """Write ``rows`` JSON lines as described in the module docstring."""
    from vito_fast.curate.vocabulary import load_vocabulary, plural_forms

    rng = np.random.default_rng(seed)
    synonyms = load_vocabulary("imagenet1k").synonyms
    popularity = 1.0 / np.arange(1, len(synonyms) + 1) ** 0.8
    class_of_row = rng.permutation(len(synonyms))[rng.choice(len(synonyms), size=rows, p=popularity / popularity.sum())]
    names_class = rng.random(rows) < 0.8
    where = rng.integers(0, 3, size=rows)  # 0 title, 1 tags, 2 description
    filler = np.array(FILLER)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(rows):
            words = list(filler[rng.integers(0, len(filler), size=rng.integers(4, 13))])
            description = list(filler[rng.integers(0, len(filler), size=rng.integers(20, 61))])
            tags = list(filler[rng.integers(0, len(filler), size=rng.integers(0, 7))])
            if names_class[index]:
                options = synonyms[class_of_row[index]]
                phrase = options[rng.integers(0, len(options))]
                if rng.random() < 0.3:
                    head, _, last = phrase.rpartition(" ")
                    plurals = plural_forms(last.lower())
                    phrase = f"{head} {plurals[0]}".strip() if plurals else phrase
                target = (words, tags, description)[where[index]]
                target.insert(int(rng.integers(0, len(target) + 1)), phrase)
            identifier, video = f"v{index:08d}", f"videos/{index % 997:03d}/v{index:08d}.mp4"
            roll = rng.random()
            if index > 100 and roll < 0.01:
                identifier = f"v{int(rng.integers(0, index)):08d}"
            elif index > 100 and roll < 0.02:
                video = f"videos/{0:03d}/v{int(rng.integers(0, 100)):08d}.mp4"
            elif index > 100 and roll < 0.04:
                words = ["my", "cute", "tabby", "cat"]
            if roll > 0.999:
                handle.write('{"id": "broken", "title": \n')
                continue
            record = {"id": identifier, "path": video, "title": " ".join(words).capitalize(),
                      "description": " ".join(description), "tags": tags,
                      "duration": round(float(min(7200.0, rng.lognormal(np.log(60), 1.2))), 1),
                      "language": "en" if rng.random() < 0.9 else "de"}
            handle.write(json.dumps(record) + "\n")


def run_cli(metadata: Path, folder: Path) -> dict:
    """Run the CLI once in a child process; wall seconds, peak RSS (MiB) and the summary."""
    command = [sys.executable, "-m", "vito_fast.cli.main", "curate", str(metadata), "-o", str(folder / "curated.jsonl"),
               "--per-class", "500", "--min-seconds", "4", "--max-seconds", "600", "--languages", "en",
               "--report", str(folder / "report"), "--no-progress"]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    summary = json.loads((folder / "report" / "summary.json").read_text())
    return {"seconds": seconds, "rows_per_s": summary["rows"] / seconds, "cpu_seconds": cpu_seconds, "load": load,
            "peak_mib": after.ru_maxrss / 1024 if after.ru_maxrss > before.ru_maxrss else float("nan"),
            "summary": summary,
            "command": " ".join(["vito-fast", *command[3:]])}


@pytest.fixture(scope="module")
def corpus():
    keep = os.environ.get("VITO_BENCH_KEEP")
    folder = Path(keep or tempfile.mkdtemp(prefix="bench_curate_"))
    folder.mkdir(parents=True, exist_ok=True)
    metadata = folder / f"metadata_{ROWS}.jsonl"
    if not metadata.exists():
        generate_metadata(metadata, ROWS)
    yield folder, metadata
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)


def test_curate_rows_per_second(benchmark, corpus):
    folder, metadata = corpus
    result = benchmark.pedantic(run_cli, args=(metadata, folder), rounds=1, iterations=1)
    benchmark.extra_info.update({key: value for key, value in result.items() if key != "summary"})
    assert result["summary"]["rows"] == ROWS


def markdown(result: dict, metadata: Path, generate_seconds: float) -> str:
    import numpy
    import PIL

    summary = result["summary"]
    dropped = ", ".join(f"{reason} {count:,}" for reason, count in summary["dropped"].items())
    return "\n".join([
        "## curate: VideoNet-style selection from metadata",
        "",
        f"2-core CPU, no GPU. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Python {platform.python_version()}, numpy {numpy.__version__}, Pillow {PIL.__version__}.",
        f"Command: `python benches/bench_curate.py` (VITO_BENCH_ROWS={ROWS}), which runs `{result['command']}` "
        f"on a generated file of {metadata.stat().st_size / 2**20:.0f} MiB (see the bench's docstring; "
        + (f"generating it took {generate_seconds:.0f} s, not timed)." if generate_seconds is not None
           else "generated by an earlier run, not timed)."),
        "",
        "| what | figure |",
        "|---|---|",
        f"| rows | {summary['rows']:,} |",
        f"| total time (CLI, read + match + de-duplicate + balance + write + report) | {result['seconds']:.1f} s |",
        f"| throughput | {result['rows_per_s']:,.0f} rows/s |",
        f"| CPU time of the process (user + system; it uses one core) | {result['cpu_seconds']:.1f} s = "
        f"{summary['rows'] / result['cpu_seconds']:,.0f} rows per CPU-second |",
        f"| 1-minute load average at the start (other jobs on the 2 cores) | {result['load']:.1f} |",
        f"| peak memory (max RSS of the process) | {result['peak_mib']:.0f} MiB |",
        f"| kept | {summary['kept']:,} videos in {summary['classes_with_videos']} classes "
        f"({len(summary['too_few'])} below the quota of 500) |",
        f"| dropped | {dropped} |",
    ])


if __name__ == "__main__":
    keep = os.environ.get("VITO_BENCH_KEEP")
    folder = Path(keep or tempfile.mkdtemp(prefix="bench_curate_"))
    folder.mkdir(parents=True, exist_ok=True)
    metadata = folder / f"metadata_{ROWS}.jsonl"
    generated = None
    if not metadata.exists():
        start = time.perf_counter()
        generate_metadata(metadata, ROWS)
        generated = time.perf_counter() - start
    try:
        print(markdown(run_cli(metadata, folder), metadata, generated))
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
