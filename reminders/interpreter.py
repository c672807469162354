"""Interpreter settings of a ``reminders`` process, in a module of its own: the benchmarks'
workers take them without importing the command line (and the web stack behind it)."""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL = 0.0005  # seconds
GC_THRESHOLD = 100_000  # allocations between young-generation collections
SERVICE_GC_THRESHOLD = 10_000  # the same, in a long-running service
SERVICE_SWITCH_INTERVAL = 0.005  # seconds: the interpreter's own default


def tune_interpreter() -> None:
    """The interpreter settings of a ``reminders`` process (the benchmarks' workers too)."""
    # Imports, planning and dispatch allocate many short-lived objects and few cycles: the
    # default (collect after every 700 allocations) cost 12% of an import's time.
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    # A thread back from the database or the network waits for the one running Python to
    # give up the GIL: 5 ms by default, a convoy once an import writes on one thread while it
    # parses on another (1M rows: 59 s against 50 s with 0.5 ms).
    sys.setswitchinterval(SWITCH_INTERVAL)


def tune_for_service() -> None:
    """A long-running service (``reminders run``, ``demo``) collects sooner. The cycle
    collector counts allocations net of frees, so in a steady state only what lives on, such
    as the reference cycles every SQLAlchemy statement built leaves behind, moves it: with
    100,000 a dispatcher's heap grew by about 40,000 objects of such garbage before the first
    collection. Draining a backlog of 100,000 for 60 s (benchmark figure 5): peak RSS 108 MB
    against 119-122 MB, as much as draining 10,000 (107 MB).

    It also goes back to the interpreter's switch interval. The import's short one forces the
    running thread to hand over the GIL every 0.5 ms; a dispatcher's threads (workers back from
    the provider, the one preparing the next batch, the step) then pay for the switches: one
    dispatcher draining 4,000 through the Twilio SDK spent 1.41 ms of CPU a message against
    1.61 and sent 523/s against 475/s (means of 8 alternating runs; 20 ms did no better)."""
    gc.set_threshold(SERVICE_GC_THRESHOLD, 50, 100)
    sys.setswitchinterval(SERVICE_SWITCH_INTERVAL)
