"""The benchmark harness (``python -m tests.perf``) still runs: every figure at toy size on the
backend the tests use. Timings are not asserted here; the benchmark's own report does that."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.perf.__main__ import BENCHMARKS
from tests.perf.children import child_env
from tests.perf.databases import ROOT

BACKEND = (
    "postgresql"
    if os.environ.get("REMINDERS_TEST_DATABASE_URL", "").startswith("postgresql")
    else "sqlite"
)
LINE = re.compile(r"^(\d) .+ \[(\w+)\] \| .+ \| .+ \| (PASS|FAIL|INFO)$", re.MULTILINE)


@pytest.mark.timeout(180)
def test_the_benchmarks_print_a_verdict_for_every_figure_at_toy_size() -> None:
    command = [sys.executable, "-m", "tests.perf", "--toy", "--everywhere", "--backends", BACKEND]
    done = subprocess.run(
        command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout.split("== summary", 1)[-1]
    figures = {int(n) for n, backend, _ in LINE.findall(summary) if backend == BACKEND}
    assert figures == set(BENCHMARKS), summary
    machine = r"machine: a fixed Python loop [\d.]+ ms \(best of 5\)"
    if BACKEND == "postgresql":
        machine += r", a PostgreSQL commit [\d.]+ ms"
    assert re.search(machine, done.stdout), done.stdout[:500]
    # At toy size the planner may prefer any index (or none); full size checks which one.
    assert re.search(r"claim_due plan \(\w+\)", done.stdout), "the claim's plan is printed"
