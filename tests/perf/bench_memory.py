"""Figure 5: the dispatch process's peak memory while it drains a backlog.

A backlog of due reminders is drained by one dispatcher in a child process (console channel
writing to /dev/null, logs as ``reminders run`` writes them); the child reports its peak
resident set size (``ru_maxrss``). The same is done for a backlog ten times smaller: memory must
not grow with the backlog, because dispatch works in claimed batches. Each drain stops at
``sizes.drain_seconds`` (so the run stays within its time); the note says how much was sent.
"""

from __future__ import annotations

import datetime as dt

from tests.perf.backlog import load_backlog
from tests.perf.children import run_together
from tests.perf.context import Context
from tests.perf.databases import backend_of

TARGET_MB = 200.0
TARGET_GROWTH = 1.10  # the big backlog may peak at most 10% above the small one


def run(ctx: Context, backend: str) -> None:
    small, _ = drain_backlog(ctx, backend, ctx.sizes.backlog_small)
    big, sent = drain_backlog(ctx, backend, ctx.sizes.backlog)
    growth = big / small
    ctx.report.figure(
        5,
        f"peak RSS draining {ctx.sizes.backlog:,} due reminders",
        f"{big:.0f} MB ({sent:,} sent before the {ctx.sizes.drain_seconds:.0f} s limit)"
        if sent < ctx.sizes.backlog
        else f"{big:.0f} MB (all sent)",
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


def drain_backlog(ctx: Context, backend: str, count: int) -> tuple[float, int]:
    """(peak RSS in MB, reminders sent) of a dispatcher draining ``count`` due reminders."""
    with ctx.database(backend, "memory") as url:
        now = dt.datetime.now(dt.UTC)
        load_backlog(url, count, [now - dt.timedelta(minutes=5)], now)
        args = {
            "mode": "drain",
            "sender": "console",
            "url": url,
            "seconds": ctx.sizes.drain_seconds,
        }
        (result,) = run_together([args], ctx.scratch, f"memory-{count}")
    sent = result["outcomes"].get("sent", 0)
    seconds = result["finished"] - result["started"]
    if set(result["outcomes"]) - {"sent", "released"}:
        raise RuntimeError(f"draining {count}: {result['outcomes']}")
    megabytes = float(result["maxrss_kb"] / 1024)
    ctx.report.note(
        f"{backend_of(url)}: backlog {count:,}, {sent:,} sent in {seconds:.1f} s "
        f"({sent / seconds:,.0f}/s), peak RSS {megabytes:.0f} MB"
    )
    return megabytes, sent
