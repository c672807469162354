"""The benchmark report: one line per figure, ``figure | measured | target | PASS/FAIL``.

Lines are printed as soon as a figure is measured (a long run shows progress), and again, in
issue order, in the summary at the end. Notes (query plans, sizes, build times) go to the same
stream, indented, so the report can be pasted whole into the issue.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from reminders.db import make_engine

PASS, FAIL, INFO = "PASS", "FAIL", "INFO"


@dataclass(frozen=True)
class Figure:
    """One measured figure; ``passed`` None means it has no target (shown as INFO)."""

    number: int
    name: str
    measured: str
    target: str
    passed: bool | None
    backend: str

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return INFO
        return PASS if self.passed else FAIL

    def line(self) -> str:
        figure = f"{self.number} {self.name} [{self.backend}]"
        return f"{figure} | {self.measured} | {self.target} | {self.verdict}"


@dataclass
class Report:
    """Collects figures and notes; prints them as they come."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    figures: list[Figure] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def figure(
        self,
        number: int,
        name: str,
        measured: str,
        target: str,
        passed: bool | None,
        backend: str,
    ) -> Figure:
        fig = Figure(number, name, measured, target, passed, backend)
        self.figures.append(fig)
        self._print(fig.line())
        return fig

    def note(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            self._print(f"    {line}")

    def section(self, title: str) -> None:
        elapsed = time.monotonic() - self.started
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        self._print(f"\n== {title} (at {elapsed:.0f} s, load average {load})")

    def summary(self) -> int:
        """Print every figure in issue order; the number of failed figures."""
        elapsed = time.monotonic() - self.started
        self._print(f"\n== summary ({elapsed:.0f} s in all)")
        self._print("figure | measured | target | PASS/FAIL")
        for fig in sorted(self.figures, key=lambda f: (f.number, f.backend != "postgresql")):
            self._print(fig.line())
        failed = sum(1 for f in self.figures if f.passed is False)
        passed = sum(1 for f in self.figures if f.passed)
        self._print(f"{passed} passed, {failed} failed, {elapsed:.0f} s")
        return failed

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class CpuMeter:
    """How busy all CPUs were between ``start`` and ``busy`` (from /proc/stat), 0..1."""

    def __init__(self) -> None:
        self.start = _cpu_times()

    def busy(self) -> float:
        end = _cpu_times()
        idle, total = end[0] - self.start[0], end[1] - self.start[1]
        return 1.0 - idle / total if total else 0.0


def _cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs; zeros where /proc/stat is missing."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    return fields[3] + fields[4], sum(fields)


def machine_speed(postgres_url: str | None) -> str:
    """How fast this machine is now, for comparing runs (its speed has swung by x2.5 between
    sessions): a fixed pure-Python loop (best of 5) and, with PostgreSQL, a commit that waits
    for its WAL to reach the disk (median of 50)."""
    loops = []
    for _ in range(5):
        began = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        loops.append(time.perf_counter() - began)
    line = f"machine: a fixed Python loop {ms(min(loops))} (best of 5)"
    if postgres_url:
        commit = _commit_seconds(postgres_url) * 1000
        line += f", a PostgreSQL commit {commit:.2f} ms (median of 50)"
    return line


def _commit_seconds(url: str) -> float:
    engine, commits = make_engine(url), []
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET synchronous_commit = on")
            conn.commit()
            for _ in range(50):
                began = time.perf_counter()
                conn.exec_driver_sql("SELECT pg_current_xact_id()")  # an xid: a WAL flush
                conn.commit()
                commits.append(time.perf_counter() - began)
    finally:
        engine.dispose()
    return sorted(commits)[len(commits) // 2]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank: at least q% of values are <= it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats
    return ordered[int(rank) - 1]
