"""Figure 4: dispatch throughput through the real ``twilio`` SDK, database writes included.

One fake Twilio process on 127.0.0.1 serves the whole benchmark. Measured side by side:
- the bare SDK: ``messages.create`` from as many threads as the dispatcher uses, no database;
- one dispatcher process (:class:`reminders.dispatch.Dispatcher` with the real SMS channel)
  draining a backlog of due reminders;
- two dispatcher processes draining a backlog twice as big at the same time;
- for information, one dispatcher with ``REMINDERS_DISPATCH_AHEAD`` (attempts written ahead,
  waiting for a worker: not the default, since a crash would leave more in doubt);
- the bare SDK in two processes at once: what this machine allows two senders, whatever they
  are (the fake and PostgreSQL share its cores), printed beside the dispatchers' scaling.
Rates are messages over the wall-clock time from the common start to the last finish. The
fake's count proves every reminder went out exactly once. This machine's speed wanders by a
third from one run to the next (a virtual machine's neighbours), so the phases run
interleaved in ``ROUNDS`` rounds and each figure takes every phase's best round (all rounds
are printed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.perf.backlog import load_backlog
from tests.perf.children import Child, run_together
from tests.perf.context import Context
from tests.perf.report import CpuMeter

TARGET_SHARE = 0.70  # one dispatcher: at least 70% of the bare SDK's rate
TARGET_SCALING = 1.6  # two dispatchers: at least 1.6 times one
THREADS = 4  # REMINDERS_DISPATCH_CONCURRENCY's default
AHEAD = 3  # REMINDERS_DISPATCH_AHEAD for the information line (0 is the default)
TIME_LIMIT = 120.0  # seconds per measurement, so a slow engine cannot stall the run
ROUNDS = 3  # of every phase, interleaved; the best of each counts


def run(ctx: Context, backend: str) -> None:
    n = ctx.sizes.dispatch_messages
    names = (
        "bare SDK",
        "bare SDK, two processes",
        "one dispatcher",
        "two dispatchers",
        f"one dispatcher, {AHEAD} ahead per worker",
    )
    rounds: list[list[Phase]] = [[] for _ in names]
    twice_each: list[int] = []
    with Child("tests.perf.fake_provider", {}, ctx.scratch, "fake-twilio") as fake_process:
        fake = fake_process.read()
        for _ in range(ROUNDS):
            rounds[0].append(_measure(lambda: run_together([_bare(fake, n)], ctx.scratch, "bare")))
            rounds[1].append(
                _measure(lambda: run_together([_bare(fake, n)] * 2, ctx.scratch, "bare-2"))
            )
            rounds[2].append(_measure(lambda: _drain(ctx, backend, fake, 1, n)))
            before = _accepted(fake_process)
            rounds[3].append(_measure(lambda: _drain(ctx, backend, fake, 2, 2 * n)))
            twice_each.append(_accepted(fake_process) - before)
            rounds[4].append(_measure(lambda: _drain(ctx, backend, fake, 1, n, ahead=AHEAD)))
    phases = [
        (name, max(runs, key=lambda p: p.rate)) for name, runs in zip(names, rounds, strict=True)
    ]
    for (name, phase), runs in zip(phases, rounds, strict=True):
        ctx.report.note(
            f"{name}: {phase.sent:,} in {phase.seconds:.1f} s, {phase.cpu:.0%} of a core in "
            f"the sending process(es), all CPUs {phase.busy:.0%} busy (rounds: "
            + ", ".join(f"{p.rate:,.0f}/s" for p in runs)
            + ")"
        )
    once = all(t == p.sent for t, p in zip(twice_each, rounds[3], strict=True))
    twice = sum(twice_each)
    ctx.report.note(f"the fake accepted {twice:,} messages from the two dispatchers, all rounds")
    bare_rate, bare_two_rate, one_rate, two_rate, ahead_rate = (p.rate for _, p in phases)
    share, scaling = one_rate / bare_rate, two_rate / one_rate
    ctx.report.figure(
        4,
        f"dispatch, 1 process, {THREADS} threads, against the bare SDK",
        f"{one_rate:,.0f}/s against {bare_rate:,.0f}/s bare: {share:.0%}",
        f">= {TARGET_SHARE:.0%} of the bare SDK",
        share >= TARGET_SHARE,
        backend,
    )
    ctx.report.figure(
        4,
        "dispatch, 2 processes against 1",
        f"{two_rate:,.0f}/s against {one_rate:,.0f}/s: x{scaling:.2f} ({twice:,} sent"
        f"{' once each' if once else ', NOT once each'};"
        f" the bare SDK x{bare_two_rate / bare_rate:.2f} here)",
        f">= x{TARGET_SCALING}",
        scaling >= TARGET_SCALING and once,
        backend,
    )
    ctx.report.figure(
        4,
        f"dispatch, 1 process, REMINDERS_DISPATCH_AHEAD={AHEAD} (not the default)",
        f"{ahead_rate:,.0f}/s against {bare_rate:,.0f}/s bare: {ahead_rate / bare_rate:.0%}",
        "(information)",
        None,
        backend,
    )


def _bare(fake: dict[str, Any], count: int) -> dict[str, Any]:
    return {"mode": "bare", "fake": fake, "count": count, "threads": THREADS}


@dataclass(frozen=True)
class Phase:
    sent: int
    seconds: float  # from the common start to the last finish
    cpu: float  # CPU seconds of the worker processes per second of the phase
    busy: float  # how busy the machine's CPUs were, 0..1

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


def _measure(work: Callable[[], list[dict[str, Any]]]) -> Phase:
    meter = CpuMeter()
    results = work()
    # A dispatcher counts "sent"; the bare SDK counts Twilio's answers ("queued").
    sent = sum(r["outcomes"].get("sent", 0) + r["outcomes"].get("queued", 0) for r in results)
    seconds = max(r["finished"] for r in results) - min(r["started"] for r in results)
    cpu = sum(r["cpu_seconds"] for r in results) / seconds
    return Phase(sent, seconds, cpu, meter.busy())


def _drain(
    ctx: Context, backend: str, fake: dict[str, Any], processes: int, count: int, ahead: int = 0
) -> list[dict[str, Any]]:
    with ctx.database(backend, "dispatch") as url:
        now = dt.datetime.now(dt.UTC)
        load_backlog(url, count, [now - dt.timedelta(minutes=5)], now)
        args = {
            "mode": "drain",
            "sender": "twilio",
            "url": url,
            "fake": fake,
            "threads": THREADS,
            "ahead": ahead,
            "seconds": TIME_LIMIT,
        }
        return run_together([args] * processes, ctx.scratch, f"dispatch-{processes}")


def _accepted(fake_process: Child) -> int:
    fake_process.send("count")
    return int(fake_process.read()["messages"])
