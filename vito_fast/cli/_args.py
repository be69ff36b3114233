"""What every subcommand shares: exit codes and argparse value checks."""
from __future__ import annotations

import argparse

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2  # done; ran but failed or found nothing; bad arguments


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a non-negative number, not {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value
