"""The HTTP surface on the real app and database: health, readiness, metrics, and the webhooks
end to end over real HTTP (uvicorn on 127.0.0.1) with the real senders and the fakes' own posts."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from reminders import migrate
from reminders.channels import ChannelError, ErrorKind
from reminders.channels.registry import build_senders
from reminders.runtime import Runtime, build_runtime
from reminders.settings import Settings
from reminders.web.app import PROBE_SECONDS, create_app
from tests import factories
from tests.conftest import POSTGRES_URL, create_postgres_database, drop_postgres_database
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.provider_setup import provider_settings
from tests.webhook_support import (
    EVENTS_PATH,
    INBOUND_PATH,
    NOW,
    STATUS_PATH,
    consent,
    dispatch,
    live_server,
    phone_of,
    plan_due,
    send_due,
    state,
    status_params,
    status_path,
    twilio_post,
    web_settings,
)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    runtime.clock = lambda: NOW
    with TestClient(create_app(runtime)) as test_client:
        yield test_client


@contextmanager
def other_runtime(settings: Settings, database_url: str) -> Iterator[Runtime]:
    rt = build_runtime(web_settings(settings, database_url=database_url))
    try:
        yield rt
    finally:
        rt.close()


@contextmanager
def empty_database(tmp_path: Path) -> Iterator[str]:
    """A new database with no schema, on the backend under test."""
    if not POSTGRES_URL:
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url = create_postgres_database(POSTGRES_URL, prefix="reminders_readyz")
    try:
        yield url
    finally:
        drop_postgres_database(url)


def test_healthz_says_the_process_is_alive(client) -> None:
    answer = client.get("/healthz")
    assert (answer.status_code, answer.text) == (200, "ok")


def test_readyz_is_ready_on_a_migrated_database(client) -> None:
    answer = client.get("/readyz")
    assert (answer.status_code, answer.text) == (200, "ready")


def test_readyz_is_503_until_the_schema_is_at_head(settings, tmp_path) -> None:
    with (
        empty_database(tmp_path) as url,
        other_runtime(settings, url) as rt,
        TestClient(create_app(rt)) as client,
    ):
        empty = client.get("/readyz")
        migrate.upgrade(rt.engine)
        at_head = client.get("/readyz")
        migrate.downgrade(rt.engine, "base")
        behind = client.get("/readyz")
    assert empty.status_code == 503 and "run `reminders migrate`" in empty.text
    assert at_head.status_code == 200
    assert behind.status_code == 503 and "schema at nothing" in behind.text


def test_readyz_stays_ready_once_a_newer_release_migrated_the_schema(settings, tmp_path) -> None:
    """A rolling upgrade: the new release migrates first, the old replicas keep serving until
    they are replaced (every revision keeps the previous release working). A schema one step
    behind this code is still not ready."""
    with (
        empty_database(tmp_path) as url,
        other_runtime(settings, url) as rt,
        TestClient(create_app(rt)) as client,
    ):
        migrate.upgrade(rt.engine)
        with rt.engine.begin() as conn:  # a revision from the future, unknown to this code
            conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
        newer = client.get("/readyz")
        with rt.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        older = client.get("/readyz")
    assert (newer.status_code, newer.text) == (200, "ready")
    assert older.status_code == 503 and "schema at 0001, not " in older.text


def unreachable_urls(tmp_path: Path) -> list[str]:
    urls = [f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'db.sqlite'}"]
    if POSTGRES_URL:
        urls.append("postgresql+psycopg://postgres@127.0.0.1:1/nothing")  # refused at once
    return urls


def test_readyz_is_503_when_the_database_cannot_be_reached(settings, tmp_path) -> None:
    for url in unreachable_urls(tmp_path):
        with other_runtime(settings, url) as rt, TestClient(create_app(rt)) as client:
            answer = client.get("/readyz")
        assert (answer.status_code, answer.text) == (503, "database unreachable"), url


def test_readyz_answers_in_bounded_time_when_the_database_hangs(settings) -> None:
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
        with other_runtime(settings, url) as rt, TestClient(create_app(rt)) as client:
            started = time.monotonic()
            answer = client.get("/readyz")
            metrics = client.get("/metrics")
            took = time.monotonic() - started
    assert answer.status_code == 503 and "did not answer" in answer.text
    assert metrics.status_code == 200  # the last known gauges, not a hang
    assert took < 2 * PROBE_SECONDS + 2


# metrics -----------------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_metrics_show_what_the_service_did_in_prometheus_text(
    runtime, settings, senders, client
) -> None:
    twilio = FakeTwilio()
    runtime.settings = web_settings(settings, twilio)
    sent = send_due(runtime)  # planned, sent by SMS, the due-to-accepted latency
    late = status_params(sent.provider_id, "undelivered", 30003)
    twilio_post(client, twilio, status_path(sent.public_id), late)  # due again: fall back
    client.post(STATUS_PATH, data=status_params("SM1", "sent"))  # unsigned: rejected
    refused = "+905431970999"
    plan_due(runtime, channels="sms", phone=refused)
    senders["sms"].script = lambda m: (
        ChannelError(ErrorKind.PERMANENT, "no", code="21211") if m.to == refused else None
    )
    dispatch(runtime)  # the first by email; the second refused on its only channel: failed
    dispatch(runtime, NOW + dt.timedelta(days=38))  # both `last_call` steps long past: expired

    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)
    assert value(found, "reminders_planned_total", protocol="chronic_migraine") == 4
    assert value(found, "reminders_sent_total", channel="sms") == 1
    assert value(found, "reminders_sent_total", channel="email") == 1
    assert value(found, "reminders_due_to_accepted_seconds_count", channel="sms") == 1
    assert value(found, "reminders_expired_total", reason="stale") == 2
    assert value(found, "reminders_failed_total", channel="", reason="all_channels_failed") == 1
    assert value(found, "reminders_delivery_status_total", channel="sms", status="undelivered") == 1
    errors = {"channel": "sms", "kind": "permanent"}
    assert value(found, "reminders_provider_errors_total", **errors, code="30003") == 1
    assert value(found, "reminders_provider_errors_total", **errors, code="21211") == 1
    rejected = {"source": "twilio_status", "reason": "missing_signature"}
    assert value(found, "reminders_webhook_rejected_total", **rejected) == 1
    assert value(found, "reminders_due_unsent") == 0  # read from the database at the scrape
    assert value(found, "reminders_in_doubt") == 0


def test_the_due_but_unsent_depth_is_read_from_the_database_at_each_scrape(client, runtime):
    assert samples(client.get("/metrics").text)[("reminders_due_unsent", frozenset())] == 0
    plan_due(runtime)
    plan_due(runtime)
    assert samples(client.get("/metrics").text)[("reminders_due_unsent", frozenset())] == 2


# the webhooks over real HTTP: uvicorn on 127.0.0.1, the real senders, the fakes' own posts ---


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


@pytest.mark.parametrize("later", [None, 30003])
def test_twilio_status_callbacks_over_http_reach_the_delivery(runtime, settings, later) -> None:
    runtime.clock = lambda: NOW
    app = create_app(runtime)
    with (
        FakeTwilio(auto_callbacks=True) as fake,
        FakeSendGrid() as sendgrid,
        live_server(app) as url,
    ):
        # The public URL is the live server's, http://127.0.0.1:PORT: Twilio signs the port.
        runtime.settings = provider_settings(
            settings, fake, sendgrid, public_url=url, sms_rate=50.0
        )
        runtime.senders = build_senders(runtime.settings)
        reminder_id = plan_due(runtime)
        if later:
            fake.fail_later(phone_of(runtime, reminder_id), later)
        dispatch(runtime)
        wait_for(lambda: len(fake.callbacks) == 2)
        assert [c.status for c in fake.callbacks] == [200, 200]
        if later:
            dispatch(runtime)  # the late failure fell back to email
    reminder, deliveries = state(runtime, reminder_id)
    expected = [("sms", "undelivered"), ("email", "accepted")] if later else [("sms", "delivered")]
    assert [(d.channel, d.status) for d in deliveries] == expected
    assert reminder.status == "sent"


def test_an_inbound_stop_over_http_opts_out(runtime, settings) -> None:
    app = create_app(runtime)
    with FakeTwilio() as fake, live_server(app) as url:
        runtime.settings = web_settings(settings, fake, public_url=url)
        with runtime.sessions() as s, s.begin():
            patient = factories.patient(s)
            patient_id, phone = patient.id, patient.phone
        answer = fake.post_inbound(url + INBOUND_PATH, phone, "STOP")
    assert answer.status == 200 and b"<Response />" in answer.body
    row = consent(runtime, patient_id, "sms")
    assert row is not None and not row.usable


def test_sendgrid_events_over_http_reach_the_delivery(runtime, settings) -> None:
    app = create_app(runtime)
    runtime.clock = lambda: dt.datetime.fromtimestamp(time.time(), dt.UTC)  # signed "now"
    with FakeSendGrid() as fake, live_server(app) as url:
        runtime.settings = provider_settings(
            settings, None, fake, public_url=url, sendgrid_webhook_public_key=fake.public_key_b64
        )
        runtime.senders = build_senders(runtime.settings)
        reminder_id = plan_due(runtime, NOW, channels="email")
        dispatch(runtime, NOW)
        [mail] = fake.mails
        email = mail.recipients[0]
        events = [fake.event(mail, email, "processed"), fake.event(mail, email, "delivered")]
        answer = fake.signed_event_post(url + EVENTS_PATH, events)
    assert answer.status == 200
    reminder, [delivery] = state(runtime, reminder_id)
    assert (reminder.status, delivery.status) == ("sent", "delivered")
