"""Entry point of the ``vito-fast`` console command."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from vito_fast.cli._args import EXIT_USAGE
from vito_fast.version import __version__

# name -> one-line help. The module vito_fast.cli.<name> implements it with main(argv) -> int.
SUBCOMMANDS = {
    "prepare": "scan videos into a manifest, extract a JPEG frame store, transcode clips",
    "curate": "select a VideoNet-style subset of a video corpus aligned with ImageNet classes",
    "pretrain": "pretrain an image encoder on frame pairs (one GPU or many with torchrun)",
    "export": "export the trained trunk as torchvision-loadable weights",
    "eval": "evaluate frozen features: knn, linear, propagate, robustness",
    "viz": "render attention maps over video frames",
    "bench": "run the benchmark suite (benches/) and print the figures",
    "demo": "generate built-in data, pretrain, evaluate and write a report in minutes",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vito-fast",
        description="vito_fast: fast VITO-style self-supervised pretraining of image encoders on video.",
        epilog="Run `vito-fast COMMAND --help` for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vito-fast {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help_text in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def load_subcommand(name: str):
    """Import vito_fast.cli.<name>; None when this version does not have it yet."""
    try:
        return importlib.import_module(f"vito_fast.cli.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"vito_fast.cli.{name}":
            return None
        raise


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # handles --help / --version and rejects unknown options
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(
            f"vito-fast: unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    module = load_subcommand(name)
    if module is None:
        print(
            f"vito-fast: the {name!r} command is not built yet in vito_fast {__version__}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
