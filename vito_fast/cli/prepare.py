"""`vito-fast prepare`: from a folder of videos to a manifest, a JPEG frame store, or transcoded clips.

    vito-fast prepare scan PATH... -o manifest.jsonl [--min-seconds S] [--clip-seconds S] [--workers N] [--part I/N]
    vito-fast prepare merge part0.jsonl part1.jsonl ... -o manifest.jsonl   # the parts of `scan --part I/N`
    vito-fast prepare frames manifest.jsonl -o STORE/ [--fps 8] [--short-side 256] [--quality 90] [--device cpu|gpu]
    vito-fast prepare transcode manifest.jsonl -o DIR/ [--preset nvdec|cpu] [--codec vp9|h264] [--short-side 256] [--gop N]
    vito-fast prepare upgrade-store STORE/      # rewrite a version-1 frame store index as version 2
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from vito_fast.cli._args import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, non_negative_float, positive_float, positive_int
from vito_fast.errors import VitoError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vito-fast prepare",
                                     description="Turn a folder of videos into training data for the DALI loader.")
    commands = parser.add_subparsers(dest="step", metavar="STEP", title="steps", required=True)

    scan = commands.add_parser("scan", help="probe videos and write a manifest of usable clips")
    scan.add_argument("paths", nargs="+", metavar="PATH",
                      help="video files or folders (searched recursively), URLs or prefixes (s3://, gs://, https://), "
                           "WebDataset tar shards (shards/{00000..00099}.tar: their video members, read in place), or "
                           "curated lists from `vito-fast curate` (*.jsonl): their videos, each clip labelled with its class")
    scan.add_argument("-o", "--output", required=True, help="manifest to write (JSON lines); "
                      "rejected files go to <name>.rejected.jsonl next to it")
    scan.add_argument("--min-seconds", type=non_negative_float, default=1.0,
                      help="reject videos shorter than this (default 1.0)")
    scan.add_argument("--clip-seconds", type=non_negative_float, default=10.0,
                      help="split videos into clips of this length (default 10; 0: one record per video)")
    scan.add_argument("--workers", type=int, default=None,
                      help="probe processes (default: CPU count; 0: in this process, without timeout)")
    scan.add_argument("--timeout", type=positive_float, default=60.0,
                      help="seconds allowed per file before it counts as unreadable (default 60; "
                           "raise it for --decode-check full on long videos)")
    scan.add_argument("--decode-check", choices=("tail", "full", "none"), default="tail",
                      help="decode the first frame and the last GOP (tail), every frame (full) or nothing")
    scan.add_argument("--decoder", choices=("pyav", "dali-cpu", "dali-gpu"), default="pyav",
                      help="reject codecs this decoder cannot read (dali-cpu: VP8/VP9/MJPEG only)")
    scan.add_argument("--allow-vfr", action="store_true", help="keep variable-frame-rate videos")
    scan.add_argument("--label", default=None, help="label stored in every record")
    scan.add_argument("--label-field", default=None, metavar="FIELD",
                      help="videos in tar shards: the label is this field of the sample's JSON (e.g. a class column "
                           "video2dataset kept with --save_additional_columns)")
    scan.add_argument("--part", default=None, metavar="I/N",
                      help="probe only part I of N (0-based) of the files, for `prepare merge` (Slurm: "
                           "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    scan.add_argument("--no-progress", action="store_true")

    merge = commands.add_parser("merge", help="join the manifests of `prepare scan --part I/N` (or the stores of "
                                "`prepare frames --part I/N`) into what one run writes")
    merge.add_argument("parts", nargs="+", metavar="PART", help="the parts' manifests, or store folders, in any order")
    merge.add_argument("-o", "--output", required=True,
                       help="manifest to write (and <name>.rejected.jsonl), or store folder")

    frames = commands.add_parser("frames", help="extract JPEG frames into tar shards plus an index")
    frames.add_argument("manifest")
    frames.add_argument("-o", "--output", required=True, help="store folder")
    frames.add_argument("--fps", type=positive_float, default=8.0, help="frames per second stored (default 8)")
    frames.add_argument("--short-side", type=positive_int, default=256, help="short side in pixels (default 256)")
    frames.add_argument("--quality", type=int, choices=range(1, 101), metavar="1..100", default=90,
                        help="JPEG quality (default 90)")
    frames.add_argument("--device", choices=("cpu", "gpu", "dali-cpu"), default="cpu",
                        help="cpu: PyAV; gpu: DALI + NVDEC; dali-cpu: DALI's CPU decoder (VP8/VP9/MJPEG)")
    frames.add_argument("--shard-mb", type=positive_int, default=512, help="close a shard past this size (MiB)")
    frames.add_argument("--part", default=None, metavar="I/N",
                        help="extract only part I of N (0-based) of the manifest's clips into this store, "
                             "for `prepare merge`")
    frames.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    frames.add_argument("--no-progress", action="store_true")

    transcode = commands.add_parser("transcode", help="re-encode clips for fast random access")
    transcode.add_argument("manifest")
    transcode.add_argument("-o", "--output", required=True, help="output folder (gets its own manifest.jsonl)")
    transcode.add_argument("--preset", choices=("nvdec", "cpu"), default=None,
                           help="clips made for random access: nvdec = H.264, GOP 16, no B-frames (GPU decoding); "
                                "cpu = VP9, GOP 16 (DALI's CPU decoder); --codec and --gop override it")
    transcode.add_argument("--codec", choices=("vp9", "h264"), default=None, help="default vp9 (or the preset's)")
    transcode.add_argument("--short-side", type=positive_int, default=256)
    transcode.add_argument("--gop", type=positive_int, default=None,
                           help="frames between keyframes (default 16, or the preset's)")
    transcode.add_argument("--crf", type=int, default=None, help="quality (lower is better; default per codec)")
    transcode.add_argument("--workers", type=int, default=None, help="encoding processes (default: CPU count)")
    transcode.add_argument("--no-progress", action="store_true")

    upgrade = commands.add_parser("upgrade-store", help="rewrite a frame store's version-1 JSON index as the "
                                  "version-2 binary index (fast to open), beside its shards")
    upgrade.add_argument("store", metavar="STORE", help="store folder (or its index.json)")
    return parser


def format_summary(records, rejected) -> str:
    """The table printed at the end of a scan: usable clips, rejected files by reason, hours."""
    import numpy as np

    from vito_fast.prepare.probe import REJECTION_REASONS
    from vito_fast.prepare.scan import frames_per_random_frame
    from vito_fast.prepare.transcode import SLOW_RANDOM_ACCESS

    videos = len({record.path for record in records})
    hours = sum(record.duration for record in records) / 3600
    rows = [("usable videos", str(videos)), ("usable clips", str(len(records))),
            ("total hours", f"{hours:.3f}"), ("rejected files", str(len(rejected)))]
    counts = Counter(entry.reason for entry in rejected)
    for reason in REJECTION_REASONS:
        if counts[reason]:
            rows.append((f"  {reason}", str(counts[reason])))
    costs = [cost for cost in map(frames_per_random_frame, records) if cost is not None]
    slow = [cost for cost in costs if cost > SLOW_RANDOM_ACCESS]
    if costs:
        rows.append(("frames decoded per random frame", f"{np.mean(costs):.1f}"))
        rows.append((f"  clips above {SLOW_RANDOM_ACCESS:g}", str(len(slow))))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value:>10}" for name, value in rows]
    rule = "-" * len(lines[0])
    summary = [rule, *lines, rule]
    if slow:
        summary.append(f"{len(slow)} of {len(costs)} clips have keyframes far apart: showing one random frame decodes "
                       f"{np.mean(slow):.0f} frames on average, on any decoder. `vito-fast prepare transcode MANIFEST "
                       f"-o DIR --preset nvdec` (GPU decoding) or `--preset cpu` rewrites them with a keyframe every "
                       f"16 frames.")
    return "\n".join(summary)


def run_scan(args) -> int:
    from vito_fast.curate.selection import expand_curated_lists
    from vito_fast.data.manifest import rejected_manifest_path, write_manifest
    from vito_fast.prepare.parts import parse_part, write_part_record
    from vito_fast.prepare.scan import find_videos, scan_videos
    from vito_fast.prepare.probe import RejectedVideo

    from vito_fast.storage.remote import is_url
    from vito_fast.storage.shards import expand_shards

    missing = [path for pattern in args.paths for path in expand_shards(pattern)
               if not is_url(path) and not Path(path).exists()]
    if missing:
        print(f"vito-fast prepare scan: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    paths, curated_labels, listed_missing = expand_curated_lists(args.paths)
    part = None if args.part is None else parse_part(args.part)
    files = find_videos(paths, members=False)  # listed once: the part record digests the whole list
    records, rejected = scan_videos(paths, min_seconds=args.min_seconds, clip_seconds=args.clip_seconds or None,
                                    workers=args.workers, progress=not args.no_progress, timeout=args.timeout,
                                    decode_check=args.decode_check, decoder=args.decoder,
                                    reject_variable_frame_rate=not args.allow_vfr, label=args.label, part=part,
                                    files=files, label_field=args.label_field)
    if part is None or part.index == part.count - 1:  # the whole scan reports them after every file
        rejected += [RejectedVideo(path, "unreadable", "listed in a curated list but not found")
                     for path in listed_missing]
    if args.label is None:
        for record in records:
            record.label = curated_labels.get(record.path, record.label)
    manifest = write_manifest(args.output, records)
    rejected_path = write_manifest(rejected_manifest_path(args.output), rejected)
    if part is not None:
        settings = {name: getattr(args, name) for name in ("min_seconds", "clip_seconds", "decode_check", "decoder",
                                                           "allow_vfr", "label", "label_field")}
        write_part_record(manifest, part, settings, files + sorted(listed_missing))
        print(f"part {part} of the files")
    print(format_summary(records, rejected))
    print(f"manifest: {manifest} ({len(records)} clips); rejected: {rejected_path} ({len(rejected)} files)")
    if not records and part is None:  # a part may hold only bad files: the merge decides
        print("vito-fast prepare scan: no usable video found", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def run_frames(args) -> int:
    from vito_fast.data.frame_store import FrameStore
    from vito_fast.prepare.frame_store_write import extract_frames

    from vito_fast.prepare.parts import parse_part

    part = None if args.part is None else parse_part(args.part)
    index = extract_frames(args.manifest, args.output, fps=args.fps, short_side=args.short_side,
                           quality=args.quality, device=args.device, shard_bytes=args.shard_mb << 20,
                           workers=args.workers, progress=not args.no_progress, part=part)
    with FrameStore(index) as store:
        frames, skipped = int(store.header["num_frames"]), store.skipped
        print(f"frame store: {index} ({len(store)} clips, {frames} frames, {len(store.shards)} shards)")
    for entry in skipped:
        print(f"skipped: {entry['error']}", file=sys.stderr)
    return EXIT_FAILURE if skipped else EXIT_OK


def run_transcode(args) -> int:
    from vito_fast.data.manifest import read_manifest
    from vito_fast.prepare.transcode import PRESETS, transcode_clips

    preset = PRESETS.get(args.preset, {"codec": "vp9", "gop": 16})
    codec, gop = args.codec or preset["codec"], args.gop or preset["gop"]
    records = read_manifest(args.manifest)
    outputs = transcode_clips(records, args.output, codec=codec, short_side=args.short_side, gop=gop,
                              crf=args.crf, workers=args.workers, progress=not args.no_progress)
    print(f"transcoded {len(outputs)} of {len(records)} clips to {codec}, a keyframe every {gop} frames: "
          f"{Path(args.output) / 'manifest.jsonl'}")
    return EXIT_OK if len(outputs) == len(records) else EXIT_FAILURE


def run_merge(args) -> int:
    from vito_fast.prepare.parts import merge_parts, merge_stores

    stores = [Path(part).is_dir() or Path(part).name == "index.json" for part in args.parts]
    if all(stores):
        index, clips, frames = merge_stores(args.parts, args.output)
        print(f"merged {len(args.parts)} store parts: {index} ({clips} clips, {frames} frames)")
        return EXIT_OK
    if any(stores):
        raise ValueError("merge: give either manifests (from `prepare scan --part`) or store folders "
                         "(from `prepare frames --part`), not both")
    manifest, rejected, clips, rejected_count = merge_parts(args.parts, args.output)
    print(f"merged {len(args.parts)} parts: {manifest} ({clips} clips); rejected: {rejected} ({rejected_count} files)")
    return EXIT_OK


def run_upgrade_store(args) -> int:
    from vito_fast.data.frame_store import FrameStore, upgrade_store

    index, old_version = upgrade_store(args.store)
    with FrameStore(index) as store:
        frames = int(store.header["num_frames"])
        summary = f"{len(store)} clips, {frames} frames, {len(store.shards)} shards"
    if old_version == store.version:
        print(f"frame store: {index} is already version {old_version} ({summary})")
    else:
        print(f"frame store: {index} upgraded from version {old_version} to {store.version} ({summary})")
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    """Run one `prepare` step; returns the exit status (2: bad arguments or missing files)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_request:  # argparse exits on --help (0) and on errors (2)
        return int(exit_request.code or 0)
    step = {"scan": run_scan, "frames": run_frames, "transcode": run_transcode, "merge": run_merge,
            "upgrade-store": run_upgrade_store}[args.step]
    try:
        return step(args)
    except FileNotFoundError as error:
        print(f"vito-fast prepare {args.step}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (VitoError, ValueError) as error:
        print(f"vito-fast prepare {args.step}: {error}", file=sys.stderr)
        return EXIT_FAILURE
