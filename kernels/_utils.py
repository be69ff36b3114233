"""Small helpers shared by the Triton launchers."""
from __future__ import annotations

import os

import triton


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_power_of_2(value: int) -> int:
    return triton.next_power_of_2(max(int(value), 1))
