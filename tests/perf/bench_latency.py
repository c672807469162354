"""Figure 6: at rest, a reminder due at T is accepted by the provider by T + the dispatch
interval + 1 s.

The service's own loop (:class:`reminders.service.Service`: APScheduler ticks for planning,
dispatch and housekeeping) runs with a short dispatch interval and the real Twilio SMS channel
pointed at the fake Twilio on 127.0.0.1. The reminders come due one after the other while it
runs; the latency of each is the wall-clock time the fake received its message minus its due
time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from reminders.channels.registry import build_senders
from reminders.runtime import build_runtime
from reminders.service import Service
from tests.fakes import FakeTwilio
from tests.perf.backlog import load_backlog
from tests.perf.context import Context
from tests.perf.databases import settings_for
from tests.perf.report import percentile
from tests.perf.worker import twilio_settings


def run(ctx: Context, backend: str) -> None:
    s = ctx.sizes
    with ctx.database(backend, "latency") as url, FakeTwilio() as fake:
        now = dt.datetime.now(dt.UTC)
        step = dt.timedelta(seconds=s.latency_spread / s.latency_reminders)
        lead = dt.timedelta(seconds=1 + s.latency_spread / 10)  # for the service to start
        instants = [now + lead + i * step for i in range(s.latency_reminders)]
        load_backlog(url, s.latency_reminders, instants, now)
        waited = _serve(url, fake, s.dispatch_interval, len(instants), s.latency_spread + 30.0)
        received = {r.params["To"]: r.received_wall for r in fake.requests if r.status == 201}
    latencies = [received[to] - _due(to, instants) for to in received]
    target = s.dispatch_interval + 1.0
    p99 = percentile(latencies, 99)
    ctx.report.note(
        f"{backend}: {len(received)} of {s.latency_reminders} accepted; service ran {waited:.0f} s"
    )
    ctx.report.figure(
        6,
        f"due -> accepted at rest, {s.latency_reminders:,} reminders over "
        f"{s.latency_spread:.0f} s, dispatch interval {s.dispatch_interval:g} s",
        f"p50 {percentile(latencies, 50):.2f} s, p99 {p99:.2f} s, max {max(latencies):.2f} s"
        f" ({len(latencies)} accepted)",
        f"p99 <= {target:g} s",
        p99 <= target and len(latencies) == s.latency_reminders,
        backend,
    )


def _serve(url: str, fake: FakeTwilio, interval: float, count: int, timeout: float) -> float:
    overrides: dict[str, Any] = {
        **twilio_settings(
            {
                "account_sid": fake.account_sid,
                "auth_token": fake.auth_token,
                "base_url": fake.base_url,
            }
        ),
        "dispatch_interval": interval,
        "planning_interval": 60.0,
        "housekeeping_interval": 60.0,
        "sms_rate": 1_000_000.0,
    }
    settings = settings_for(url, **overrides)
    runtime = build_runtime(settings, build_senders(settings))
    service = Service(runtime, owner="perf-latency")
    started = dt.datetime.now(dt.UTC)
    service.start()
    try:
        fake.wait_for_requests(count, timeout=timeout)
    except TimeoutError:
        pass  # reported as fewer accepted than due
    finally:
        service.stop()
        runtime.close()
    return (dt.datetime.now(dt.UTC) - started).total_seconds()


def _due(to: str, instants: list[dt.datetime]) -> float:
    patient = int(to.removeprefix("+90533"))  # tests.perf.backlog.phone
    return instants[patient % len(instants)].timestamp()
