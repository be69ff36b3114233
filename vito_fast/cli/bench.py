"""``vito-fast bench``: run the benchmark suites in benches/ with pytest-benchmark.

The suites live in the source tree, not in the installed package: this command finds them next to
the package (an editable install or a checkout) or in ``--benches DIR``. ``vito-fast bench gpu
ARGS`` runs the prepared GPU pass instead, ``benches/gpu_pass.py ARGS`` (``--dry-run`` on a CPU);
``vito-fast bench verify`` checks every kind of Triton call against the reference on this machine;
``vito-fast bench decoders MANIFEST`` runs the video decoders' trial and prints the table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple


def default_benches_dir() -> Optional[Path]:
    candidate = Path(__file__).resolve().parents[2] / "benches"
    return candidate if candidate.is_dir() else None


def available_benches(benches_dir: Path) -> List[str]:
    return sorted(path.stem[len("bench_"):] for path in benches_dir.glob("bench_*.py"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vito-fast bench",
        description="Run benchmark suites (pytest-benchmark). Extra pytest options go after `--`.",
        epilog="vito-fast bench gpu [--dry-run] --out DIR: the prepared GPU pass (benches/gpu_pass.py; "
               "`vito-fast bench gpu --help`). vito-fast bench verify: check the Triton kernels against the "
               "reference on this machine (`vito-fast bench verify --help`). vito-fast bench decoders MANIFEST: "
               "which video decoder is correct and fastest here (`vito-fast bench decoders --help`).",
    )
    parser.add_argument("names", nargs="*", help="suites to run, e.g. sampler info_nce (default: all)")
    parser.add_argument("--benches", type=Path, default=None, help="folder holding bench_*.py")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    return parser


def main(argv: List[str]) -> int:
    if argv[:1] == ["verify"]:
        return run_verify(argv[1:])
    if argv[:1] == ["decoders"]:
        return run_decoders(argv[1:])
    gpu = _gpu_pass_arguments(argv)
    if gpu is not None:
        return run_gpu_pass(*gpu)
    own, _, pytest_args = _split_at_double_dash(argv)
    args = build_parser().parse_args(own)
    benches_dir = args.benches or default_benches_dir()
    if benches_dir is None or not benches_dir.is_dir():
        print(
            "vito-fast bench: no benches/ folder found next to the package; "
            "run from a checkout or pass --benches DIR",
            file=sys.stderr,
        )
        return 2
    names = available_benches(benches_dir)
    if args.list:
        print("\n".join(names))
        return 0
    unknown = [name for name in args.names if name not in names]
    if unknown:
        print(
            f"vito-fast bench: no suite named {', '.join(unknown)} in {benches_dir}; "
            f"available: {', '.join(names) or 'none'}",
            file=sys.stderr,
        )
        return 2
    files = [str(benches_dir / f"bench_{name}.py") for name in (args.names or names)]
    command = [sys.executable, "-m", "pytest", *files, "--benchmark-only", "-q", *pytest_args]
    print("vito-fast bench:", " ".join(command), flush=True)
    return subprocess.call(command)


def _gpu_pass_arguments(argv: List[str]) -> Optional[Tuple[Optional[Path], List[str]]]:
    """(--benches folder or None, the arguments after it) when the first name is ``gpu``, else None."""
    benches, index = None, 0
    while index < len(argv):
        token = argv[index]
        if token == "--benches" and index + 1 < len(argv):
            benches, index = Path(argv[index + 1]), index + 2
        elif token.startswith("--benches="):
            benches, index = Path(token.split("=", 1)[1]), index + 1
        else:
            return (benches, argv[index + 1:]) if token == "gpu" else None
    return None


def run_gpu_pass(benches_dir: Optional[Path], args: List[str]) -> int:
    """``python benches/gpu_pass.py ARGS``: the GPU pass in its own process."""
    script = (benches_dir or default_benches_dir() or Path("benches")) / "gpu_pass.py"
    if not script.is_file():
        print(f"vito-fast bench gpu: {script} not found; run from a checkout or pass --benches DIR",
              file=sys.stderr)
        return 2
    command = [sys.executable, str(script), *args]
    print("vito-fast bench:", " ".join(command), flush=True)
    return subprocess.call(command)


def build_verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vito-fast bench verify",
        description="Run the first-use self-check of every kind of Triton call (op, dtype, the inputs "
                    "that need gradients, variant) on this machine and print a Markdown table; exit 1 "
                    "when any kind fails. Without a GPU it reruns itself with TRITON_INTERPRET=1 (Triton's "
                    "interpreter, small shapes).",
    )
    parser.add_argument("--op", action="append", choices=["info_nce", "attention_pool"],
                        help="check only this op (repeatable; default: both)")
    parser.add_argument("--dtype", action="append", choices=["float32", "float16", "bfloat16"],
                        help="check only this dtype (repeatable; default: all three)")
    return parser


def run_verify(argv: List[str]) -> int:
    """``vito-fast bench verify``: vito_fast.ops.verify's table, in the interpreter on a CPU."""
    args = build_verify_parser().parse_args(argv)
    import torch

    from vito_fast.ops import verify

    if not torch.cuda.is_available() and not verify.interpreting():
        # TRITON_INTERPRET is read when triton is imported: only a new process can switch it on.
        print("vito-fast bench verify: no CUDA device; running the kernels in Triton's interpreter "
              "(TRITON_INTERPRET=1, in a new process)", flush=True)
        env = dict(os.environ, TRITON_INTERPRET="1", VITO_FAST_INTERPRET_CPU_TENSORS="1")
        return subprocess.call([sys.executable, "-m", "vito_fast", "bench", "verify", *argv], env=env)
    ops = tuple(args.op or verify.OPS)
    dtypes = tuple(getattr(torch, name) for name in args.dtype or ("float32", "float16", "bfloat16"))
    device = verify.default_device()
    print(f"vito-fast bench verify: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'interpreter'}), "
          f"torch {torch.__version__}, triton {verify.triton_version()}", flush=True)
    results = verify.verify_every_kind(device, ops, dtypes)
    print(verify.markdown_table(results))
    failures = verify.failed(results)
    print(f"\n{len(results) - len(failures)} of {len(results)} kinds passed or were skipped; "
          f"{len(failures)} failed" + ("" if not failures else ": auto runs the reference for them"))
    return 1 if failures else 0


def build_decoders_parser() -> argparse.ArgumentParser:
    from vito_fast.decoders.choice import DEFAULT_CANDIDATES, MIN_PSNR_DB

    parser = argparse.ArgumentParser(
        prog="vito-fast bench decoders",
        description=f"For each codec and size class of the manifest (those with at least 5 % of its clips, the 4 "
                    f"largest), each video decoder decodes the same frame pairs in a process of its own; it counts "
                    f"if its frames are PyAV's (luma PSNR >= {MIN_PSNR_DB:g} dB) and it answers in time. Prints a "
                    f"table per group and the decoder for the whole manifest (verified in every group, the least "
                    f"time per pair), and keeps the measurements in the cache that "
                    f"PairLoader(video_decoder='auto') reads.",
    )
    parser.add_argument("manifest", help="a manifest (.jsonl) written by `vito-fast prepare scan`")
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None,
                        help="where the decoders may run (default: gpu when CUDA is available)")
    parser.add_argument("--decoders", nargs="+", default=None,
                        help=f"candidates (default cpu: {' '.join(DEFAULT_CANDIDATES['cpu'])}; "
                             f"gpu: {' '.join(DEFAULT_CANDIDATES['gpu'])}); 'package.module:Class' names others")
    parser.add_argument("--samples", type=int, default=12, help="frame pairs per decoder and group (default 12)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a decoder may take (default 30)")
    parser.add_argument("--refresh", action="store_true", help="measure again even when the cache has an answer")
    return parser


def run_decoders(argv: List[str]) -> int:
    """``vito-fast bench decoders``: decoders.choice's table for a manifest."""
    args = build_decoders_parser().parse_args(argv)
    from itertools import islice

    from vito_fast.decoders.choice import choose_decoders
    from vito_fast.data.manifest import iter_manifest

    device = args.device
    if device is None:
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
    try:
        records = list(islice(iter_manifest(args.manifest), 10_000))
        choice = choose_decoders(records, device=device, candidates=args.decoders, samples=args.samples,
                                timeout=args.timeout, refresh=args.refresh)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"vito-fast bench decoders: {error}", file=sys.stderr)
        return 1
    print(choice.table())
    print(f"\n{choice.describe()}")
    return 0


def _split_at_double_dash(argv: List[str]):
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], "--", argv[index + 1 :]
    return argv, "", []
