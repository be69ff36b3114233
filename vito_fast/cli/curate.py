"""`vito-fast curate`: select a VideoNet-style, class-balanced subset of a video corpus from its metadata.

    vito-fast curate METADATA -o curated.jsonl [--vocabulary imagenet1k|FILE] [--per-class N]
        [--min-seconds S] [--max-seconds S] [--target uniform|FILE] [--seed N] [--report DIR]

Exit status: 0 done (malformed rows are reported, not fatal), 1 no video kept, 2 bad arguments or
unreadable input files. The rules are in vito_fast/data/curate.py's docstring.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from vito_fast.cli._args import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, non_negative_float, non_negative_int

SHOWN_MALFORMED = 10


def build_parser() -> argparse.ArgumentParser:
    from vito_fast.curate.selection import TEXT_FIELDS

    parser = argparse.ArgumentParser(
        prog="vito-fast curate",
        description="Keep the videos whose title, tags or description name a class of the vocabulary "
                    "(ImageNet-1k by default), de-duplicated and capped per class towards a target distribution.")
    parser.add_argument("metadata", metavar="METADATA",
                        help="JSON lines or CSV (.jsonl/.csv, optionally .gz): id, path or url, and any of "
                             "title, description, tags, duration, language")
    parser.add_argument("-o", "--output", required=True, help="curated list to write (JSON lines)")
    parser.add_argument("--vocabulary", default="imagenet1k", metavar="imagenet1k|FILE",
                        help="imagenet1k (shipped) or a file: one class per line, synonyms comma-separated")
    parser.add_argument("--per-class", type=non_negative_int, default=1300, metavar="N",
                        help="videos kept per class at the largest target weight (default 1300)")
    parser.add_argument("--min-seconds", type=non_negative_float, default=None, metavar="S",
                        help="drop shorter videos (rows without a duration pass)")
    parser.add_argument("--max-seconds", type=non_negative_float, default=None, metavar="S", help="drop longer videos")
    parser.add_argument("--target", default="uniform", metavar="uniform|FILE",
                        help="uniform (default) or a file of class weights: one per line in class order, "
                             "or CLASS WEIGHT lines")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="which videos a capped class keeps (default 0)")
    parser.add_argument("--languages", default=None, metavar="CODES",
                        help="comma-separated language codes to keep, e.g. en (rows without a language pass)")
    parser.add_argument("--fields", default=",".join(TEXT_FIELDS), metavar="NAMES",
                        help=f"text fields searched for synonyms (default {','.join(TEXT_FIELDS)})")
    parser.add_argument("--format", choices=("auto", "jsonl", "csv", "tsv"), default="auto",
                        help="metadata format (default: from the suffix)")
    parser.add_argument("--no-plurals", action="store_true", help="match synonyms only as written")
    parser.add_argument("--title-duplicates", choices=("exact", "loose", "off"), default="exact",
                        help="drop rows of a class whose title repeats an earlier one: 'exact' (default; case, "
                             "punctuation and upload noise ignored, numbers kept: 'part 2' is another video), "
                             "'loose' (numbers ignored too), 'off'")
    parser.add_argument("--report", metavar="DIR", default=None,
                        help="write summary.json, classes.tsv, histogram.png and malformed.jsonl here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def format_summary(summary) -> str:
    """The table printed at the end: rows read, each reason for dropping, kept, classes."""
    from vito_fast.curate.summary import DROP_REASONS

    rows = [("rows read", summary.rows)]
    rows += [(f"  {reason.replace('_', ' ')}", summary.counts[reason]) for reason in DROP_REASONS]
    rows += [("kept", summary.counts["kept"]), ("classes with videos", sum(1 for kept in summary.kept if kept)),
             ("classes below quota", len(summary.too_few))]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value:>12,}" for name, value in rows]
    rule = "-" * len(lines[0])
    return "\n".join([rule, *lines, rule])


def main(argv: Sequence[str]) -> int:
    """Run a curation; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_request:  # argparse exits on --help (0) and on errors (2)
        return int(exit_request.code or 0)
    from vito_fast.curate.selection import CurateConfig, curate, load_target
    from vito_fast.curate.vocabulary import load_vocabulary

    if args.min_seconds is not None and args.max_seconds is not None and args.min_seconds > args.max_seconds:
        print(f"vito-fast curate: --min-seconds {args.min_seconds:g} is above --max-seconds {args.max_seconds:g}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        vocabulary = load_vocabulary(args.vocabulary)
        weights = load_target(args.target, vocabulary)
        config = CurateConfig(
            vocabulary=vocabulary, per_class=args.per_class, min_seconds=args.min_seconds,
            max_seconds=args.max_seconds, weights=weights, seed=args.seed,
            languages=[code.strip() for code in args.languages.split(",") if code.strip()] if args.languages else None,
            fields=[name.strip() for name in args.fields.split(",") if name.strip()], plurals=not args.no_plurals,
            format=args.format, progress=not args.no_progress, title_duplicates=args.title_duplicates)
        summary = curate(args.metadata, args.output, config, report_dir=args.report)
    except (FileNotFoundError, ValueError, UnicodeDecodeError) as error:
        print(f"vito-fast curate: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"vito-fast curate: {error}", file=sys.stderr)
        return EXIT_FAILURE
    for row in summary.malformed_examples[:SHOWN_MALFORMED]:
        print(f"{args.metadata}:{row.line}: skipped: {row.reason}", file=sys.stderr)
    hidden = summary.counts["malformed"] - min(SHOWN_MALFORMED, len(summary.malformed_examples))
    if hidden > 0:
        where = f"see {args.report}/malformed.jsonl" if args.report else "pass --report DIR to list them all"
        print(f"vito-fast curate: {hidden:,} more malformed rows skipped; {where}", file=sys.stderr)
    print(format_summary(summary))
    print(f"curated list: {args.output} ({summary.counts['kept']:,} videos)"
          + (f"; report: {args.report} (examples of every drop reason: {args.report}/dropped.md)"
             if args.report else ""))
    if not summary.counts["kept"]:
        print("vito-fast curate: no video kept (no row names a class of the vocabulary?)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
