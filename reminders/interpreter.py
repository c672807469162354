"""Interpreter settings of a ``reminders`` process, in a module of its own: the benchmarks'
workers take them without importing the command line (and the web stack behind it)."""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL = 0.0005  # seconds
GC_THRESHOLD = 100_000  # allocations between young-generation collections


def tune_interpreter() -> None:
    """The interpreter settings of a ``reminders`` process (the benchmarks' workers too)."""
    # Imports, planning and dispatch allocate many short-lived objects and few cycles: the
    # default (collect after every 700 allocations) cost 12% of an import's time.
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    # A thread back from the database or the network waits for the one running Python to
    # give up the GIL: 5 ms by default, a convoy once an import writes on one thread while it
    # parses on another (1M rows: 59 s against 50 s with 0.5 ms).
    sys.setswitchinterval(SWITCH_INTERVAL)
