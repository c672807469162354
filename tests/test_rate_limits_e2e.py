"""Provider rate limits, measured where they matter: at the fake provider's arrival times.

``tests/test_rate_limit.py`` proves one process's workers keep each channel's rate and that a
Twilio 429's ``Retry-After`` holds the SMS sender; ``tests/test_provider_dispatch.py`` that a 429
reschedules the reminder no sooner than asked. What is left, here: SendGrid's
``X-RateLimit-Reset`` holding the email sender; SMS and WhatsApp, two senders on one Twilio
account, each kept to its own rate; a sender's rate kept through the running service's passes
while 429s come and go; two replicas sharing one sender keep its rate together (send slots
reserved in the database).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine

from reminders import migrate
from reminders.db import make_engine
from reminders.dispatch import Dispatcher
from reminders.models import Template
from reminders.runtime import Runtime
from reminders.service import Service
from tests.conftest import (
    POSTGRES_URL,
    create_postgres_database,
    drop_postgres_database,
)
from tests.fakes import FakeTwilio, RecordedRequest
from tests.fault_support import accepted, seed_due, statuses, wait_until
from tests.provider_setup import (
    CONTENT_SID,
    SMS_FROM,
    WHATSAPP_FROM,
    live_runtime,
    provider_settings,
)
from tests.support.service import BIN, ServiceProcess, service_env

NOW = dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC)
JITTER = 0.05  # loopback scheduling noise allowed between a send and its arrival


def dispatch_once(rt: Runtime, now: dt.datetime = NOW) -> Counter[str]:
    dispatcher = Dispatcher(rt, "rate-e2e")
    try:
        return dispatcher.run_once(now=now)
    finally:
        dispatcher.close()


def busiest(requests: Sequence[RecordedRequest], window: float = 1.0 - JITTER) -> int:
    """The most requests that arrived within any ``window`` seconds."""
    times = sorted(r.received_at for r in requests)
    return max((sum(1 for t in times if s <= t < s + window) for s in times), default=0)


def sent_from(twilio: FakeTwilio, sender: str) -> list[RecordedRequest]:
    return [r for r in twilio.requests if (r.params or {}).get("From") == sender]


def approve_whatsapp_template(rt: Runtime) -> None:
    with rt.sessions() as s, s.begin():
        s.add(
            Template(
                step="due",
                channel="whatsapp",
                language="en",
                version=1,
                text="{{ patient.given_name }}, your next visit is due.",
                content_sid=CONTENT_SID,
                variables={"1": "{{ patient.given_name }}"},
                author="staff@example.org",
            )
        )


def test_a_sendgrid_rate_limit_reset_holds_the_email_sender_until_then(settings, sendgrid) -> None:
    # One worker, so the order of requests at the fake is the order of sends.
    s = provider_settings(settings, sendgrid=sendgrid, email_rate=5.0, dispatch_concurrency=1)
    with live_runtime(s) as rt:
        seed_due(rt.engine, 6, "email", NOW)
        reset = int(time.time()) + 3
        sendgrid.fail_next(429, headers={"X-RateLimit-Reset": str(reset)})
        assert dispatch_once(rt) == Counter(retry=1, sent=5)
    first, *rest = sendgrid.requests
    assert first.status == 429 and [r.status for r in rest] == [202] * 5
    assert min(r.received_wall for r in rest) >= reset - JITTER
    assert busiest(rest) <= 5


def test_sms_and_whatsapp_on_one_twilio_account_each_keep_their_own_rate(settings, twilio) -> None:
    s = provider_settings(settings, twilio, sms_rate=3.0, whatsapp_rate=6.0, dispatch_concurrency=4)
    with live_runtime(s) as rt:
        approve_whatsapp_template(rt)
        seed_due(rt.engine, 12, "whatsapp", NOW)  # claimed first: the workers start on these
        seed_due(rt.engine, 9, "sms", NOW)
        assert dispatch_once(rt) == Counter(sent=21)
    sms, whatsapp = sent_from(twilio, SMS_FROM), sent_from(twilio, f"whatsapp:{WHATSAPP_FROM}")
    assert (len(sms), len(whatsapp)) == (9, 12)
    assert busiest(sms) <= 3 and busiest(whatsapp) <= 6
    assert busiest(whatsapp) > 3  # WhatsApp had a limiter of its own, not the SMS one


def test_the_running_service_keeps_a_senders_rate_while_429s_come_and_go(settings, twilio) -> None:
    s = provider_settings(
        settings,
        twilio,
        sms_rate=4.0,
        dispatch_concurrency=4,
        dispatch_interval=0.2,
        retry_base_seconds=0.5,
        retry_max_seconds=2.0,
    )
    with live_runtime(s) as rt:
        due = seed_due(rt.engine, 12, "sms", dt.datetime.now(dt.UTC))
        twilio.fail_next(429, 20429, times=3, headers={"Retry-After": "1"})
        service = Service(rt, owner="rate-e2e")
        service.start()
        try:
            ids = [d.reminder_id for d in due]
            wait_until(lambda: statuses(rt.engine, ids) == {"sent": 12}, 60, "all sent")
        finally:
            service.stop()
    requests = twilio.requests
    assert [r.status for r in requests] == [429] * 3 + [201] * 12
    assert busiest(requests) <= 4
    assert accepted(twilio, None) == Counter({d.address: 1 for d in due})


def test_a_retry_after_holds_even_the_workers_already_waiting_for_their_slot(
    settings, twilio
) -> None:
    s = provider_settings(settings, twilio, sms_rate=2.0, dispatch_concurrency=4)
    with live_runtime(s) as rt:
        seed_due(rt.engine, 4, "sms", NOW)
        twilio.fail_next(429, 20429, headers={"Retry-After": "2"})
        twilio.hang_next(0.3, accept=True)  # the 429 comes back while the others wait their turn
        assert dispatch_once(rt) == Counter(retry=1, sent=3)
    refused, *rest = twilio.requests
    answered = refused.received_at + 0.3
    assert refused.status == 429
    assert min(r.received_at for r in rest) >= answered + 2.0 - JITTER


# several replicas ------------------------------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[Engine]:
    if not POSTGRES_URL:
        pytest.skip("needs PostgreSQL (REMINDERS_TEST_POSTGRES_URL)")
    url = create_postgres_database(POSTGRES_URL, prefix="reminders_rate")
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
    drop_postgres_database(url)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_two_replicas_together_keep_one_senders_messages_per_second(
    postgres, twilio, tmp_path: Path
) -> None:
    due = seed_due(postgres, 16, "sms", dt.datetime.now(dt.UTC))
    url = postgres.url.render_as_string(hide_password=False)
    replicas = []
    for name in ("replica1", "replica2"):
        env = service_env(
            url,
            REMINDERS_DELIVERY_MODE="live",
            REMINDERS_SMS_RATE="2",
            REMINDERS_DISPATCH_BATCH_SIZE="2",  # so both replicas take a share
            TWILIO_ACCOUNT_SID=twilio.account_sid,
            TWILIO_AUTH_TOKEN=twilio.auth_token,
            TWILIO_SMS_FROM=SMS_FROM,
            TWILIO_API_BASE_URL=twilio.base_url,
        )
        replicas.append(ServiceProcess([str(BIN / "reminders"), "run"], env, tmp_path, name))
    try:
        for replica in replicas:
            replica.start()
        ids = [d.reminder_id for d in due]
        wait_until(lambda: statuses(postgres, ids) == {"sent": 16}, 90, "all sent")
    finally:
        for replica in replicas:
            replica.kill()
    assert accepted(twilio, None) == Counter({d.address: 1 for d in due})
    assert busiest(twilio.requests) <= 2
