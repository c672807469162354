"""Messages per second per sender, shared by every dispatch worker of a process, measured at the
arrival times the fake providers record."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator

import pytest

from reminders.dispatch import Dispatcher
from reminders.planner import plan_pending
from reminders.runtime import Runtime
from tests import factories
from tests.fakes import FakeSendGrid, FakeTwilio, RecordedRequest
from tests.provider_setup import live_runtime, provider_settings

NOW = dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC)
TREATED = NOW.date() - dt.timedelta(days=84)
JITTER = 0.05  # loopback scheduling noise allowed between a send and its arrival


@pytest.fixture
def fakes() -> Iterator[tuple[FakeTwilio, FakeSendGrid]]:
    with FakeTwilio() as twilio, FakeSendGrid() as sendgrid:
        yield twilio, sendgrid


def add_due_patients(rt: Runtime, count: int, channels: str) -> None:
    with rt.sessions() as s, s.begin():
        for _ in range(count):
            factories.treatment(s, factories.patient(s, channels=channels), TREATED)
    plan_pending(rt, now=NOW)


def dispatch(rt: Runtime) -> Counter[str]:
    dispatcher = Dispatcher(rt, "rate-test")
    try:
        return dispatcher.run_once(now=NOW)
    finally:
        dispatcher.close()


def busiest(requests: list[RecordedRequest], window: float) -> int:
    """The most requests that arrived within any ``window`` seconds."""
    times = sorted(r.received_at for r in requests)
    return max((sum(1 for t in times if start <= t < start + window) for start in times), default=0)


def test_several_workers_never_exceed_a_senders_messages_per_second(settings, fakes) -> None:
    twilio, sendgrid = fakes
    s = provider_settings(settings, twilio, sendgrid, sms_rate=5.0, dispatch_concurrency=4)
    with live_runtime(s) as rt:
        add_due_patients(rt, 12, "sms")
        assert dispatch(rt) == Counter(sent=12)
    arrivals = twilio.requests
    assert len(arrivals) == 12
    assert busiest(arrivals, 1.0 - JITTER) <= 5
    span = max(r.received_at for r in arrivals) - min(r.received_at for r in arrivals)
    assert span >= 11 / 5.0 - JITTER


def test_each_channel_keeps_its_own_rate(settings, fakes) -> None:
    twilio, sendgrid = fakes
    s = provider_settings(
        settings, twilio, sendgrid, sms_rate=4.0, email_rate=10.0, dispatch_concurrency=4
    )
    with live_runtime(s) as rt:
        add_due_patients(rt, 6, "sms")
        add_due_patients(rt, 12, "email")
        assert dispatch(rt) == Counter(sent=18)
    assert busiest(twilio.requests, 1.0 - JITTER) <= 4
    assert busiest(sendgrid.requests, 1.0 - JITTER) <= 10
    assert len(sendgrid.mails) == 12


def test_a_429_holds_the_sender_for_every_worker_until_retry_after(settings, fakes) -> None:
    twilio, sendgrid = fakes
    s = provider_settings(settings, twilio, sendgrid, sms_rate=50.0, dispatch_concurrency=1)
    twilio.fail_next(429, 20429, headers={"Retry-After": "2"})
    with live_runtime(s) as rt:
        add_due_patients(rt, 2, "sms")
        assert dispatch(rt) == Counter(retry=1, sent=1)
    first, second = twilio.requests
    assert (first.status, second.status) == (429, 201)
    assert second.received_at - first.received_at >= 2.0 - JITTER
