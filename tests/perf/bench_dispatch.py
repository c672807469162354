"""Figure 4: dispatch throughput through the real ``twilio`` SDK, database writes included.

One fake Twilio process on 127.0.0.1 serves the whole benchmark. Measured side by side:
- the bare SDK: ``messages.create`` from as many threads as the dispatcher uses, no database;
- one dispatcher process (:class:`reminders.dispatch.Dispatcher` with the real SMS channel)
  draining a backlog of due reminders;
- two dispatcher processes draining a backlog twice as big at the same time;
- for information, one dispatcher with ``REMINDERS_DISPATCH_AHEAD`` (attempts written ahead,
  waiting for a worker: not the default, since a crash would leave more in doubt);
- the bare SDK in two processes at once: what this machine allows two senders, whatever they
  are (the fake and PostgreSQL share its cores), printed beside the dispatchers' scaling;
- one dispatcher with a channel that sends nowhere (the console channel, into /dev/null): the
  dispatcher's own work, claims, preparing and steps, without the SDK's;
- for information, the bare SDK and one dispatcher against a second fake that holds every
  request ``SLOW_SECONDS`` before answering, as a provider across a network does (one round,
  fewer messages).
A dispatcher commits each attempt's delivery row before its call (what a crash can leave in
doubt is bounded by the calls in flight), so each message waits for a step and then for its
call: the dispatchers' lines print the mean of each, from its own histograms
(``reminders_dispatch_step_seconds``, ``reminders_provider_call_seconds``), and the rate those
waits alone would allow. A process's threads share one interpreter lock, so what bounds it in
the end is the CPU each message costs: printed for the bare SDK and one dispatcher, with what
the target would take of a core at that cost, and how much of it is the dispatcher's own work
(the drain with a channel that sends nowhere), the SDK's (the bare SDK's) and what is left: what
the two cost each other on one interpreter lock.
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
SLOW_SECONDS = 0.05  # the slow fake's hold on every request


def run(ctx: Context, backend: str) -> None:
    n = ctx.sizes.dispatch_messages
    names = (
        "bare SDK",
        "bare SDK, two processes",
        "one dispatcher",
        "two dispatchers",
        f"one dispatcher, {AHEAD} ahead per worker",
        "one dispatcher, a channel that sends nowhere",
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
            rounds[5].append(_measure(lambda: _drain(ctx, backend, fake, 1, n, sender="console")))
    phases = [
        (name, max(runs, key=lambda p: p.rate)) for name, runs in zip(names, rounds, strict=True)
    ]
    for (name, phase), runs in zip(phases, rounds, strict=True):
        ctx.report.note(
            f"{name}: {phase.sent:,} in {phase.seconds:.1f} s, {phase.cpu:.0%} of a core in "
            f"the sending process(es), all CPUs {phase.busy:.0%} busy (rounds: "
            + ", ".join(f"{p.rate:,.0f}/s" for p in runs)
            + ")"
            + phase.waits()
        )
    once = all(t == p.sent for t, p in zip(twice_each, rounds[3], strict=True))
    twice = sum(twice_each)
    ctx.report.note(f"the fake accepted {twice:,} messages from the two dispatchers, all rounds")
    bare_rate, bare_two_rate, one_rate, two_rate, ahead_rate, _ = (p.rate for _, p in phases)
    bare, one, nowhere = phases[0][1], phases[2][1], phases[5][1]
    if one.steps:  # every worker waits for a step, then for its call
        ceiling = THREADS / (one.call + one.step)
        ctx.report.note(
            f"one dispatcher: {THREADS} workers that each wait for a step and then a call can "
            f"send at most {ceiling:,.0f}/s here ({ceiling / bare_rate:.0%} of the bare SDK)"
        )
    if one.sent and bare.sent:  # the threads share one interpreter lock: CPU is the budget
        need, mine, theirs = TARGET_SHARE * bare_rate, one.cpu_per_message, bare.cpu_per_message
        ctx.report.note(
            f"CPU a message: bare SDK {theirs * 1000:.2f} ms, one dispatcher {mine * 1000:.2f} "
            f"ms (x{mine / theirs:.2f}); {TARGET_SHARE:.0%} of the bare SDK ({need:,.0f}/s) takes "
            f"{need * mine:.0%} of a core at that cost, or "
            f"{one.cpu / need * 1000:.2f} ms a message at the {one.cpu:.0%} of a core the "
            "dispatcher used (its threads share one interpreter lock)"
        )
        if nowhere.sent:
            own = nowhere.cpu_per_message
            ctx.report.note(
                f"of one dispatcher's {mine * 1000:.2f} ms of CPU a message: its own work "
                f"{own * 1000:.2f} ms (claims, preparing, steps: the drain with a channel that "
                f"sends nowhere), the SDK's {theirs * 1000:.2f} ms (the bare SDK's), and "
                f"{(mine - own - theirs) * 1000:.2f} ms left: what they cost each other on one "
                "interpreter lock"
            )
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
    slow_bare, slow_one = _slow_provider(ctx, backend, max(n // 5, 8))
    for name, phase in (("bare SDK", slow_bare), ("one dispatcher", slow_one)):
        ctx.report.note(
            f"{name}, the fake answering after {SLOW_SECONDS * 1000:.0f} ms: {phase.sent:,} in "
            f"{phase.seconds:.1f} s ({phase.rate:,.0f}/s){phase.waits()}"
        )
    ctx.report.figure(
        4,
        f"dispatch, 1 process, the fake answering after {SLOW_SECONDS * 1000:.0f} ms",
        f"{slow_one.rate:,.0f}/s against {slow_bare.rate:,.0f}/s bare: "
        f"{slow_one.rate / slow_bare.rate:.0%}",
        "(information)",
        None,
        backend,
    )


def _slow_provider(ctx: Context, backend: str, count: int) -> tuple[Phase, Phase]:
    """The bare SDK and one dispatcher against a fake that holds every request a while."""
    args = {"latency": SLOW_SECONDS}
    with Child("tests.perf.fake_provider", args, ctx.scratch, "fake-twilio-slow") as process:
        fake = process.read()
        bare = _measure(lambda: run_together([_bare(fake, count)], ctx.scratch, "bare-slow"))
        one = _measure(lambda: _drain(ctx, backend, fake, 1, count))
    return bare, one


def _bare(fake: dict[str, Any], count: int) -> dict[str, Any]:
    return {"mode": "bare", "fake": fake, "count": count, "threads": THREADS}


@dataclass(frozen=True)
class Phase:
    sent: int
    seconds: float  # from the common start to the last finish
    cpu: float  # CPU seconds of the worker processes per second of the phase
    busy: float  # how busy the machine's CPUs were, 0..1
    call: float = 0.0  # a dispatcher's mean provider call, seconds
    step: float = 0.0  # a dispatcher's mean step (the commit before calls), seconds
    steps: float = 0.0  # how many steps

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    @property
    def cpu_per_message(self) -> float:
        """CPU seconds the sending process(es) spent on each message."""
        return self.cpu * self.seconds / self.sent if self.sent else 0.0

    def waits(self) -> str:
        """What a dispatcher's messages waited for (nothing for the bare SDK)."""
        if not self.steps:
            return ""
        return (
            f"; a call took {self.call * 1000:.1f} ms on average, a step (the commit before "
            f"calls) {self.step * 1000:.1f} ms, {self.sent / self.steps:.1f} messages a step"
        )


def _measure(work: Callable[[], list[dict[str, Any]]]) -> Phase:
    meter = CpuMeter()
    results = work()
    # A dispatcher counts "sent"; the bare SDK counts Twilio's answers ("queued").
    sent = sum(r["outcomes"].get("sent", 0) + r["outcomes"].get("queued", 0) for r in results)
    seconds = max(r["finished"] for r in results) - min(r["started"] for r in results)
    cpu = sum(r["cpu_seconds"] for r in results) / seconds
    calls, steps = sum(r.get("calls", 0) for r in results), sum(r.get("steps", 0) for r in results)
    call = sum(r.get("calls", 0) * r.get("call_seconds", 0) for r in results) / max(calls, 1)
    step = sum(r.get("steps", 0) * r.get("step_seconds", 0) for r in results) / max(steps, 1)
    return Phase(sent, seconds, cpu, meter.busy(), call, step, steps)


def _drain(
    ctx: Context,
    backend: str,
    fake: dict[str, Any],
    processes: int,
    count: int,
    ahead: int = 0,
    sender: str = "twilio",
) -> list[dict[str, Any]]:
    with ctx.database(backend, "dispatch") as url:
        now = dt.datetime.now(dt.UTC)
        load_backlog(url, count, [now - dt.timedelta(minutes=5)], now)
        args = {
            "mode": "drain",
            "sender": sender,
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
