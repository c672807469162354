"""A provider that fails for a while, then recovers: nothing is lost, nothing is sent twice,
the provider is not hammered meanwhile, and everything goes out soon after it is back.

The two slow runs keep the service running (its scheduler, real SDKs, the fakes): one minute of
503 from Twilio and SendGrid, retried with backoff; then requests that hang past the provider
timeout, which leave the message *in doubt* (the request went out, the provider may have it) so
it is sent again only after the grace period. The fast tests pin the in-doubt rule for a hang:
a message the provider accepted (and confirms by callback) is not sent twice; one it dropped is
sent again once the grace period is over. Counts go to ``tests/artifacts/outage_counts.json``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from reminders.runtime import Runtime
from reminders.service import Service
from reminders.web.app import create_app
from tests.fakes import FakeSendGrid, FakeTwilio, RecordedRequest, Reply
from tests.fakes.sendgrid import sendgrid_error
from tests.fakes.twilio import twilio_error
from tests.fault_support import (
    Due,
    accepted,
    arrivals,
    count,
    ever_in_doubt,
    report,
    seed_due,
    statuses,
    wait_until,
)
from tests.provider_setup import PUBLIC_URL, live_runtime, provider_settings
from tests.webhook_support import dispatch, history, state, twilio_post

NOW = dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC)
OUTAGE = 60.0  # seconds of 503
HANG = 20.0  # seconds of requests that hang past the timeout
RECOVERY_LIMIT = 120.0  # everything sent within this long after the provider is back
BASE, CAP = 1.0, 20.0  # REMINDERS_RETRY_BASE_SECONDS / _MAX_SECONDS for the outage run
LAG = 1.5  # a retry is timed from its dispatch batch, which may start this much before the send


@contextmanager
def running(rt: Runtime) -> Iterator[Service]:
    """The service's scheduler (planning, dispatch, housekeeping) on the real clock."""
    service = Service(rt, owner="outage-test")
    service.start()
    try:
        yield service
    finally:
        service.stop()


def housekeeping(rt: Runtime, at: dt.datetime) -> None:
    service = Service(rt, owner="housekeeper")
    try:
        service.housekeeping(at)
    finally:
        service.dispatcher.close()


def grace(rt: Runtime) -> dt.timedelta:
    return dt.timedelta(seconds=rt.settings.in_doubt_grace_seconds)


# the in-doubt rule for a provider that answers too late (fast) ------------------------------


def test_a_message_the_provider_accepted_but_answered_too_late_is_not_sent_twice(
    settings, twilio
) -> None:
    with live_runtime(
        provider_settings(settings, twilio, provider_timeout=0.5, sms_rate=50.0)
    ) as rt:
        [due] = seed_due(rt.engine, 1, "sms", NOW)
        twilio.hang_next(2.0, accept=True)  # created at once, answered after the timeout
        assert dispatch(rt, NOW) == {"in_doubt": 1}
        reminder, [delivery] = state(rt, due.reminder_id)
        [message] = twilio.messages
        assert (reminder.status, delivery.status) == ("in_doubt", "in_doubt")
        assert history(rt, delivery.id)[-1] == ("in_doubt", "dispatch", "no_answer")

        assert message.status_callback is not None
        path = message.status_callback.removeprefix(PUBLIC_URL)
        with TestClient(create_app(rt)) as client:
            params = twilio.callback_params(message.sid, "sent")
            answer = twilio_post(client, twilio, path, params, public_url=PUBLIC_URL)
        assert answer.status_code == 200
        later = NOW + grace(rt) + dt.timedelta(minutes=1)
        housekeeping(rt, later)
        dispatch(rt, later)
        reminder, [delivery] = state(rt, due.reminder_id)
        assert (reminder.status, reminder.channel) == ("sent", "sms")
        assert (delivery.status, delivery.provider_message_id) == ("sent", message.sid)
        assert len(twilio.messages) == 1 and len(twilio.requests) == 1


def test_a_message_the_provider_dropped_is_sent_again_once_the_grace_period_is_over(
    settings, sendgrid
) -> None:
    with live_runtime(provider_settings(settings, sendgrid=sendgrid, provider_timeout=0.5)) as rt:
        [due] = seed_due(rt.engine, 1, "email", NOW)
        sendgrid.hang_next(2.0)  # never processed, no answer before the timeout
        assert dispatch(rt, NOW) == {"in_doubt": 1}
        assert sendgrid.mails == [] and len(sendgrid.requests) == 1
        early = NOW + grace(rt) - dt.timedelta(seconds=1)
        housekeeping(rt, early)
        assert dispatch(rt, early) == {}  # not retried on the spot, nor before the grace
        assert state(rt, due.reminder_id)[0].status == "in_doubt"

        housekeeping(rt, NOW + grace(rt))
        assert dispatch(rt, NOW + grace(rt)) == {"sent": 1}
        reminder, deliveries = state(rt, due.reminder_id)
        assert reminder.status == "sent"
        assert [d.status for d in deliveries] == ["abandoned", "accepted"]
        assert [m.recipients for m in sendgrid.mails] == [[due.address]]


# the slow runs -------------------------------------------------------------------------------


def most_attempts(seconds: float, wait: Callable[[int], float]) -> int:
    """The most attempts one reminder can make in ``seconds`` when the wait after its attempt
    number ``k`` is at least ``wait(k)``."""
    attempts, elapsed = 1, 0.0
    while elapsed + wait(attempts) <= seconds:
        elapsed += wait(attempts)
        attempts += 1
    return attempts


def backoff_floor(k: int) -> float:
    """The shortest wait RetryPolicy allows after failed attempt ``k`` (equal jitter: half the
    capped exponential), less the dispatch-pass lag."""
    return max(0.5 * min(CAP, BASE * 2 ** (k - 1)) - LAG, 0.0)


def during(requests: Sequence[RecordedRequest], until: float) -> list[RecordedRequest]:
    return [r for r in requests if r.received_at < until]


def all_sent(rt: Runtime, due: Sequence[Due]) -> Callable[[], bool]:
    ids = [d.reminder_id for d in due]
    return lambda: statuses(rt.engine, ids) == {"sent": len(ids)}


def last_acceptance(twilio: FakeTwilio, sendgrid: FakeSendGrid) -> float:
    times = [m.received_at for m in twilio.messages] + [m.received_at for m in sendgrid.mails]
    return max(times)


def peak_rate(requests: Sequence[RecordedRequest], window: float) -> float:
    times = sorted(r.received_at for r in requests)
    best = max((sum(1 for t in times if s <= t < s + window) for s in times), default=0)
    return best / window


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_minute_of_503s_loses_nothing_backs_off_and_all_goes_out_soon_after(
    settings, twilio, sendgrid
) -> None:
    s = provider_settings(
        settings,
        twilio,
        sendgrid,
        retry_base_seconds=BASE,
        retry_max_seconds=CAP,
        max_attempts=30,  # about 11 fail in the minute: the outage, not the cap, is under test
        dispatch_interval=0.5,
        housekeeping_interval=1.0,
        dispatch_batch_size=10,  # small batches: a retry is timed close to its send
        sms_rate=100.0,
        email_rate=100.0,
    )
    with live_runtime(s) as rt:
        now = dt.datetime.now(dt.UTC)
        due = seed_due(rt.engine, 40, "sms", now) + seed_due(rt.engine, 40, "email", now)
        recovered = time.monotonic() + OUTAGE
        twilio.outage(503, until=recovered)
        sendgrid.outage(503, until=recovered)
        with running(rt):
            wait_until(all_sent(rt, due), OUTAGE + RECOVERY_LIMIT + 10, "everything sent")
        failing = during(twilio.requests, recovered) + during(sendgrid.requests, recovered)
        got = accepted(twilio, sendgrid)
        counts, twice = count(
            rt.engine, due, got, ever_in_doubt(rt.engine, [d.reminder_id for d in due])
        )
        tries = arrivals(failing)

    limit = most_attempts(OUTAGE, backoff_floor)
    report(
        "outage_counts",
        "http_503",
        counts,
        outage_seconds=OUTAGE,
        requests_during_outage=len(failing),
        most_attempts_per_reminder=max(len(t) for t in tries.values()),
        backoff_limit_per_reminder=limit,
        peak_requests_per_second=peak_rate(failing, 1.0),
        last_sent_after_recovery_seconds=round(last_acceptance(twilio, sendgrid) - recovered, 1),
    )
    assert {r.status for r in failing} == {503}
    assert set(tries) == {d.address for d in due}  # every reminder met the outage
    for address, times in tries.items():
        assert len(times) <= limit, (address, times)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= backoff_floor(k) for k, gap in enumerate(gaps, 1)), (address, gaps)
    assert len(failing) <= limit * len(due)
    assert (counts.lost, counts.duplicated, twice) == (0, 0, [])
    assert counts.sent == len(due)
    assert last_acceptance(twilio, sendgrid) - recovered <= RECOVERY_LIMIT


def hang_until(until: float, seconds: float, reply: Reply) -> Callable[[RecordedRequest], Any]:
    """A fake handler: before ``until``, hold each request ``seconds`` (past the client's
    timeout) without processing it; afterwards, normal service."""

    def handler(_request: RecordedRequest) -> Reply | None:
        if time.monotonic() >= until:
            return None
        time.sleep(seconds)
        return reply

    return handler


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_provider_that_hangs_past_the_timeout_loses_nothing_and_sends_each_once(
    settings, twilio, sendgrid
) -> None:
    timeout, concurrency, grace_seconds = 1.0, 4, 5
    s = provider_settings(
        settings,
        twilio,
        sendgrid,
        provider_timeout=timeout,
        in_doubt_grace_seconds=grace_seconds,
        dispatch_concurrency=concurrency,
        dispatch_batch_size=concurrency,  # a pass's moment stays within a timeout of its sends
        dispatch_interval=0.5,
        housekeeping_interval=1.0,
        sms_rate=100.0,
        email_rate=100.0,
    )
    with live_runtime(s) as rt:
        now = dt.datetime.now(dt.UTC)
        due = seed_due(rt.engine, 12, "sms", now) + seed_due(rt.engine, 12, "email", now)
        recovered = time.monotonic() + HANG
        twilio.set_handler(hang_until(recovered, timeout + 0.5, twilio_error(503)))
        sendgrid.set_handler(hang_until(recovered, timeout + 0.5, sendgrid_error(503, "busy")))
        with running(rt):
            wait_until(all_sent(rt, due), HANG + RECOVERY_LIMIT, "everything sent")
        hung = during(twilio.requests, recovered) + during(sendgrid.requests, recovered)
        got = accepted(twilio, sendgrid)
        doubted = ever_in_doubt(rt.engine, [d.reminder_id for d in due])
        counts, twice = count(rt.engine, due, got, doubted)
        tries = arrivals(hung)

    # After a hang a reminder waits out the grace period (less one pass of lag) before its
    # next attempt; and each attempt holds a dispatch worker for the whole timeout.
    limit = most_attempts(HANG, lambda _k: grace_seconds - timeout)
    report(
        "outage_counts",
        "hang",
        counts,
        hang_seconds=HANG,
        provider_timeout=timeout,
        requests_during_hang=len(hung),
        most_attempts_per_reminder=max(len(t) for t in tries.values()),
        limit_per_reminder=limit,
        peak_requests_per_second=peak_rate(hung, 5.0),
        last_sent_after_recovery_seconds=round(last_acceptance(twilio, sendgrid) - recovered, 1),
    )
    assert set(tries) == {d.address for d in due}
    assert all(len(times) <= limit for times in tries.values()), tries
    assert peak_rate(hung, 5.0) <= concurrency / timeout + 0.2
    assert counts.in_doubt >= len(due)  # every one was left in doubt at least once
    assert (counts.lost, counts.duplicated, twice) == (0, 0, [])
    assert Counter(got.values()) == {1: len(due)}
    assert last_acceptance(twilio, sendgrid) - recovered <= RECOVERY_LIMIT
