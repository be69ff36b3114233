"""Shared benchmark plumbing: a `speedups` fixture and a ratio table at the end of the run.

A benchmark that calls ``speedups.record(group, provider, benchmark, baseline=...)`` after its
``benchmark(...)`` call gets one row in a table printed after pytest-benchmark's own: min and
median ms, and the ratio of each provider's min/median to the group's baseline provider.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Dict, List

import pytest


@dataclass
class _Row:
    provider: str
    min_ms: float
    median_ms: float


@dataclass
class SpeedupTable:
    groups: Dict[str, List[_Row]] = field(default_factory=dict)
    baselines: Dict[str, str] = field(default_factory=dict)

    def record(self, group: str, provider: str, benchmark, baseline: bool = False) -> None:
        stats = benchmark.stats.stats
        self.groups.setdefault(group, []).append(_Row(provider, stats.min * 1e3, stats.median * 1e3))
        if baseline:
            self.baselines[group] = provider

    def markdown(self) -> str:
        lines = []
        for group, rows in self.groups.items():
            base = next((row for row in rows if row.provider == self.baselines.get(group)), None)
            lines += [f"\n{group} ({platform.machine()}, {platform.python_version()})", "",
                      "| provider | min ms | median ms | speed-up vs " + (base.provider if base else "-") + " (min / median) |",
                      "|---|---:|---:|---:|"]
            for row in rows:
                ratio = (f"{base.min_ms / row.min_ms:.1f}x / {base.median_ms / row.median_ms:.1f}x" if base else "-")
                lines.append(f"| {row.provider} | {row.min_ms:.3f} | {row.median_ms:.3f} | {ratio} |")
        return "\n".join(lines)


_TABLE = SpeedupTable()


@pytest.fixture(scope="session")
def speedups() -> SpeedupTable:
    return _TABLE


def pytest_terminal_summary(terminalreporter) -> None:
    if _TABLE.groups:
        terminalreporter.write_sep("-", "speed-ups")
        terminalreporter.write_line(_TABLE.markdown())
