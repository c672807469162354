"""Figure 5: the dispatch process's peak memory while it drains a backlog.

Two dispatchers, each in its own child process with its own database, drain at the same time:
one a backlog of ``sizes.backlog`` due reminders, the other one ten times smaller (console
channel writing to /dev/null, logs as ``reminders run`` writes them). Each reports its peak
resident set (``VmHWM``). Memory must not grow with the backlog, because dispatch works in
claimed batches. Each drain stops at ``sizes.drain_seconds`` so the run keeps to its time; the
notes say how much each sent (side by side, they share the CPUs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from tests.perf.backlog import load_backlog
from tests.perf.children import run_together
from tests.perf.context import Context

TARGET_MB = 200.0
TARGET_GROWTH = 1.10  # the big backlog may peak at most 10% above the small one


def run(ctx: Context, backend: str) -> None:
    sizes = (ctx.sizes.backlog_small, ctx.sizes.backlog)
    with contextlib.ExitStack() as stack:
        now = dt.datetime.now(dt.UTC)
        args: list[dict[str, Any]] = []
        for count in sizes:
            url = stack.enter_context(ctx.database(backend, "memory"))
            load_backlog(url, count, [now - dt.timedelta(minutes=5)], now)
            seconds = ctx.sizes.drain_seconds
            args.append({"mode": "drain", "sender": "console", "url": url, "seconds": seconds})
        results = run_together(args, ctx.scratch, "memory")
    read = [_read(ctx, backend, n, r) for n, r in zip(sizes, results, strict=True)]
    (small, _), (big, sent) = read
    growth = big / small
    done = "all sent" if sent == ctx.sizes.backlog else f"{sent:,} sent in the time limit"
    ctx.report.figure(
        5,
        f"peak RSS draining {ctx.sizes.backlog:,} due reminders",
        f"{big:.0f} MB ({done})",
        f"<= {TARGET_MB:.0f} MB",
        big <= TARGET_MB,
        backend,
    )
    ctx.report.figure(
        5,
        f"peak RSS, {ctx.sizes.backlog:,} against {ctx.sizes.backlog_small:,} due",
        f"{big:.0f} MB against {small:.0f} MB: x{growth:.2f}",
        f"<= x{TARGET_GROWTH:.2f} (no growth with the backlog)",
        growth <= TARGET_GROWTH,
        backend,
    )


def _read(ctx: Context, backend: str, count: int, result: dict[str, Any]) -> tuple[float, int]:
    """(peak RSS in MB, reminders sent) of the dispatcher that drained ``count``."""
    if set(result["outcomes"]) - {"sent", "released"}:
        raise RuntimeError(f"draining {count}: {result['outcomes']}")
    sent = int(result["outcomes"].get("sent", 0))
    seconds = result["finished"] - result["started"]
    megabytes = float(result["maxrss_kb"] / 1024)
    ctx.report.note(
        f"{backend}: backlog {count:,}, {sent:,} sent in {seconds:.1f} s "
        f"({sent / seconds:,.0f}/s), peak RSS {megabytes:.0f} MB"
    )
    return megabytes, sent
