"""``vito-fast bench``: run the benchmark suites in benches/ with pytest-benchmark.

The suites live in the source tree, not in the installed package: this command finds them next to
the package (an editable install or a checkout) or in ``--benches DIR``. ``vito-fast bench gpu
ARGS`` runs the prepared GPU pass instead, ``benches/gpu_pass.py ARGS`` (``--dry-run`` on a CPU).
"""
from __future__ import annotations

import argparse
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
               "`vito-fast bench gpu --help`).",
    )
    parser.add_argument("names", nargs="*", help="suites to run, e.g. sampler info_nce (default: all)")
    parser.add_argument("--benches", type=Path, default=None, help="folder holding bench_*.py")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    return parser


def main(argv: List[str]) -> int:
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


def _split_at_double_dash(argv: List[str]):
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], "--", argv[index + 1 :]
    return argv, "", []
