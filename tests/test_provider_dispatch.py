"""End to end: patients and treatments in the database, ``Dispatcher.run_once`` with the real
senders (real twilio and sendgrid SDKs) pointed at the fake providers; every class of provider
answer, with the reminder's and the delivery's final state."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import icalendar
import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from reminders.dispatch import Dispatcher
from reminders.models import Consent, Delivery, Patient, Reminder, Template
from reminders.planner import plan_pending
from reminders.runtime import Runtime
from reminders.settings import Settings
from tests import factories
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.fakes.twilio import num_segments
from tests.provider_setup import CONTENT_SID, PUBLIC_URL, live_runtime, provider_settings

NOW = dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC)  # 11:00 in Istanbul
TREATED = NOW.date() - dt.timedelta(days=84)  # chronic_migraine: the window opens today
RECIPIENT_FIELD = "personalizations.0.to.0.email"


@pytest.fixture
def live(settings: Settings, twilio: FakeTwilio, sendgrid: FakeSendGrid) -> Iterator[Runtime]:
    """A runtime whose senders are built from settings naming the fakes."""
    with live_runtime(provider_settings(settings, twilio, sendgrid, sms_rate=50.0)) as rt:
        yield rt


def due_patient(rt: Runtime, **fields: Any) -> int:
    """A patient whose `due` reminder is due at NOW; returns the patient id."""
    with rt.sessions() as s, s.begin():
        patient = factories.patient(s, **fields)
        factories.treatment(s, patient, TREATED)
        patient_id = patient.id
    plan_pending(rt, now=NOW)
    return patient_id


def dispatch(rt: Runtime, now: dt.datetime = NOW) -> Counter[str]:
    dispatcher = Dispatcher(rt, "test")
    try:
        return dispatcher.run_once(now=now)
    finally:
        dispatcher.close()


def due_reminder(rt: Runtime, patient_id: int) -> tuple[Reminder, list[Delivery]]:
    with rt.sessions() as s:
        reminder = s.scalars(
            select(Reminder).where(Reminder.patient_id == patient_id, Reminder.step == "due")
        ).one()
        deliveries = list(
            s.scalars(
                select(Delivery).where(Delivery.reminder_id == reminder.id).order_by(Delivery.id)
            )
        )
        s.expunge_all()
    return reminder, deliveries


@contextmanager
def log_events(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, Any]]]:
    """Structured log events, whether structlog is unconfigured or routed through logging
    (as ``reminders.logs.configure`` does for the CLI)."""
    events: list[dict[str, Any]] = []
    with caplog.at_level(logging.INFO), capture_logs() as captured:
        yield events
    events.extend(captured)
    events.extend(r.msg for r in caplog.records if isinstance(r.msg, dict))


def approve_whatsapp_template(rt: Runtime) -> None:
    with rt.sessions() as s, s.begin():
        s.add(
            Template(
                step="due",
                channel="whatsapp",
                language="en",
                version=1,
                text="{{ patient.given_name }}, your visit is due from {{ window.open | date }}.",
                content_sid=CONTENT_SID,
                variables={"1": "{{ patient.given_name }}", "2": "{{ window.open | date }}"},
                author="staff@example.org",
            )
        )


# accepted ----------------------------------------------------------------------------------


def test_a_turkish_sms_is_sent_and_recorded_with_its_ucs2_segments(live, twilio) -> None:
    pid = due_patient(live, language="tr", channels="sms")
    assert dispatch(live) == Counter(sent=1)
    reminder, [delivery] = due_reminder(live, pid)
    [message] = twilio.messages
    assert "ı" in message.body  # the Turkish default template
    assert (reminder.status, reminder.channel) == ("sent", "sms")
    assert (delivery.status, delivery.provider_message_id) == ("queued", message.sid)
    assert delivery.details == {"segments": num_segments(message.body), "encoding": "UCS-2"}
    assert delivery.details["segments"] == int(message.resource["num_segments"]) >= 2
    status_url = f"{PUBLIC_URL}/webhooks/twilio/status?d={delivery.public_id}"
    assert message.status_callback == status_url


def test_an_email_carries_our_ids_keeps_the_message_id_and_the_window(live, sendgrid) -> None:
    pid = due_patient(live, channels="email")
    dispatch(live)
    reminder, [delivery] = due_reminder(live, pid)
    [mail] = sendgrid.mails
    custom_args = mail.body["personalizations"][0]["custom_args"]
    assert custom_args == {"delivery": delivery.public_id, "reminder": str(reminder.id)}
    assert (reminder.status, reminder.channel) == ("sent", "email")
    assert (delivery.status, delivery.provider_message_id) == ("accepted", mail.message_id)
    [attachment] = mail.body["attachments"]
    [event] = icalendar.Calendar.from_ical(base64.b64decode(attachment["content"])).walk("VEVENT")
    assert event.decoded("dtstart") == TREATED + dt.timedelta(days=84)
    assert event.decoded("dtend") == TREATED + dt.timedelta(days=121)  # closes at +120, inclusive


def test_a_whatsapp_reminder_is_its_approved_template_without_a_body(live, twilio) -> None:
    approve_whatsapp_template(live)
    pid = due_patient(live, channels="whatsapp", whatsapp="+905321230001")
    dispatch(live)
    reminder, [delivery] = due_reminder(live, pid)
    [message] = twilio.messages
    assert "Body" not in message.params
    assert message.params["ContentSid"] == CONTENT_SID
    assert json.loads(message.params["ContentVariables"]) == {"1": "Ayşe", "2": "March 4, 2026"}
    assert message.to == "whatsapp:+905321230001"
    assert (reminder.status, delivery.provider_message_id) == ("sent", message.sid)


def test_whatsapp_without_an_approved_template_sends_no_free_text(live, twilio) -> None:
    pid = due_patient(live, channels="whatsapp|sms", whatsapp="+905321230002")
    dispatch(live)
    reminder, deliveries = due_reminder(live, pid)
    assert [(d.channel, d.status, d.error_code) for d in deliveries] == [
        ("whatsapp", "failed", "template"),
        ("sms", "queued", None),
    ]
    assert [m.to for m in twilio.messages] == [deliveries[1].address]
    assert reminder.channel == "sms"


# not to arrive late: Twilio may hold a message only until the window closes or it expires ---------


def validity(message: Any) -> int:
    return int(message.params["ValidityPeriod"])


def test_an_sms_may_wait_at_twilio_until_the_send_window_closes(live, twilio) -> None:
    due_patient(live, channels="sms")  # Istanbul: NOW is 11:00, the window closes at 20:00
    assert dispatch(live) == Counter(sent=1)
    [message] = twilio.messages
    assert 9 * 3600 - 30 <= validity(message) <= 9 * 3600


def test_late_in_the_day_it_may_wait_only_the_rest_of_the_window(live, twilio) -> None:
    due_patient(live, channels="sms", timezone="America/New_York")
    evening = dt.datetime(2026, 3, 4, 23, 30, tzinfo=dt.UTC)  # 18:30 in New York (EST)
    assert dispatch(live, evening) == Counter(sent=1)
    [message] = twilio.messages
    assert 5400 - 30 <= validity(message) <= 5400


def test_a_reminder_expiring_before_the_window_closes_may_wait_only_until_then(
    live, twilio
) -> None:
    pid = due_patient(live, channels="whatsapp", whatsapp="+905431970001")
    approve_whatsapp_template(live)
    with live.sessions() as s, s.begin():
        reminder = s.scalars(select(Reminder).where(Reminder.patient_id == pid)).first()
        assert reminder is not None
        reminder.expires_at = NOW + dt.timedelta(minutes=10)
    assert dispatch(live) == Counter(sent=1)
    [message] = twilio.messages
    assert 600 - 30 <= validity(message) <= 600


def test_a_send_whose_turn_comes_after_the_window_closes_is_not_made_but_waits_for_morning(
    settings, twilio
) -> None:
    """A rate of one SMS segment a second (each of these messages is two, so each call's turn
    comes 2 s after the one before) and the window closing 1.5 s after the pass begins: the
    first goes out (Twilio may hold it the 5 s it advises at least), the others would arrive
    after 20:00, so they are not sent: they wait for 09:00, no attempt counted."""
    closing = dt.datetime(2026, 3, 4, 16, 59, 58, 500_000, tzinfo=dt.UTC)  # 19:59:58.5 local
    with live_runtime(provider_settings(settings, twilio, sms_rate=1.0)) as rt:
        pids = [due_patient(rt, channels="sms") for _ in range(3)]
        assert dispatch(rt, closing) == Counter(sent=1, waiting_for_send_window=2)
        [message] = twilio.messages
        assert validity(message) == 5
        morning = dt.datetime(2026, 3, 5, 6, 0, tzinfo=dt.UTC)  # 09:00 local
        late = []
        for pid in pids:
            reminder, deliveries = due_reminder(rt, pid)
            if reminder.status == "sent":
                continue
            assert (reminder.status, reminder.attempts, reminder.next_attempt_at) == (
                "pending",
                0,
                morning,
            )
            [delivery] = deliveries
            late.append((delivery.status, delivery.error_code, delivery.permanent))
        assert late == [("failed", "too_late", False)] * 2


def test_a_send_whose_turn_comes_after_the_reminder_expired_is_not_made(settings, twilio) -> None:
    """As above, with the reminders expiring 1.5 s after the pass begins (the first call has
    that long to go out, the second's turn comes 2 s after the first's)."""
    with live_runtime(provider_settings(settings, twilio, sms_rate=1.0)) as rt:
        pids = [due_patient(rt, channels="sms") for _ in range(3)]
        with rt.sessions() as s, s.begin():
            for reminder in s.scalars(select(Reminder).where(Reminder.patient_id.in_(pids))):
                reminder.expires_at = NOW + dt.timedelta(seconds=1.5)
        assert dispatch(rt) == Counter(sent=1, expired=2)
        assert len(twilio.messages) == 1
        ends = sorted((r.status, r.reason) for r, _ in map(partial(due_reminder, rt), pids))
        assert ends == [("expired", "stale"), ("expired", "stale"), ("sent", None)]


# permanent for this address: fall back --------------------------------------------------------


@pytest.mark.parametrize("code", [21211, 21614, 21408])
def test_it_falls_back_to_email_when_the_number_is_refused(live, twilio, sendgrid, code) -> None:
    pid = due_patient(live, channels="sms|email")
    reminder, _ = due_reminder(live, pid)
    with live.sessions() as s:
        twilio.fail_to(s.get_one(Patient, pid).phone or "", code=code)
    dispatch(live)
    reminder, deliveries = due_reminder(live, pid)
    assert [(d.channel, d.status, d.permanent, d.error_code) for d in deliveries] == [
        ("sms", "failed", True, str(code)),
        ("email", "accepted", False, None),
    ]
    assert (reminder.status, reminder.channel) == ("sent", "email")
    assert len(sendgrid.mails) == 1


def test_each_provider_call_and_each_step_before_it_is_timed(live, twilio, sendgrid) -> None:
    """Ops can tell what holds the rate back: every provider call (a refused one too) and every
    dispatch step (the commit a call waits for) lands in a histogram."""
    pid = due_patient(live, channels="sms|email")
    with live.sessions() as s:
        twilio.fail_to(s.get_one(Patient, pid).phone or "", code=21211)
    twilio.set_handler(lambda _: time.sleep(0.05))  # then answers as usual: a refusal

    def sample(name: str, **labels: str) -> float:
        return live.metrics.registry.get_sample_value(name, labels) or 0.0

    dispatch(live)
    assert [d.channel for d in due_reminder(live, pid)[1]] == ["sms", "email"]
    calls = "reminders_provider_call_seconds"
    assert sample(f"{calls}_count", channel="sms") == 1
    assert sample(f"{calls}_sum", channel="sms") >= 0.05
    assert sample(f"{calls}_bucket", channel="sms", le="0.025") == 0
    assert sample(f"{calls}_count", channel="email") == 1
    # a step started each call and a step recorded each outcome (one round per channel)
    assert sample("reminders_dispatch_step_seconds_count") == 4
    assert 0 < sample("reminders_dispatch_step_seconds_sum") < 5


def test_a_number_not_on_whatsapp_falls_back_to_sms(live, twilio) -> None:
    approve_whatsapp_template(live)
    pid = due_patient(live, channels="whatsapp|sms", whatsapp="+905321230003")
    twilio.fail_to("whatsapp:+905321230003", code=63003)
    dispatch(live)
    reminder, deliveries = due_reminder(live, pid)
    assert [(d.channel, d.status, d.permanent) for d in deliveries] == [
        ("whatsapp", "failed", True),
        ("sms", "queued", False),
    ]
    assert (reminder.status, reminder.channel) == ("sent", "sms")


def test_an_address_sendgrid_rejects_falls_back_to_sms(live, twilio, sendgrid) -> None:
    pid = due_patient(live, channels="email|sms", email="gone@example.com")
    sendgrid.fail_to("gone@example.com", 400, "Does not contain a valid address.", RECIPIENT_FIELD)
    dispatch(live)
    reminder, deliveries = due_reminder(live, pid)
    assert [(d.channel, d.status, d.permanent, d.error_code) for d in deliveries] == [
        ("email", "failed", True, "400"),
        ("sms", "queued", False, None),
    ]
    assert (reminder.status, reminder.channel) == ("sent", "sms")


def test_every_channel_refusing_the_patient_fails_the_reminder(live, twilio, sendgrid) -> None:
    pid = due_patient(live, channels="sms|email", email="gone@example.com")
    with live.sessions() as s:
        twilio.fail_to(s.get_one(Patient, pid).phone or "", code=21614)
    sendgrid.fail_to("gone@example.com", 400, "Does not contain a valid address.", RECIPIENT_FIELD)
    dispatch(live)
    reminder, deliveries = due_reminder(live, pid)
    assert [(d.channel, d.permanent) for d in deliveries] == [("sms", True), ("email", True)]
    assert (reminder.status, reminder.reason) == ("failed", "all_channels_failed")


# opted out --------------------------------------------------------------------------------------


def test_a_stop_at_twilio_records_the_opt_out_and_falls_back(live, twilio, sendgrid) -> None:
    pid = due_patient(live, channels="sms|email")
    with live.sessions() as s:
        twilio.fail_to(s.get_one(Patient, pid).phone or "", code=21610)
    dispatch(live)
    reminder, deliveries = due_reminder(live, pid)
    assert [(d.channel, d.status, d.error_code) for d in deliveries] == [
        ("sms", "failed", "21610"),
        ("email", "accepted", None),
    ]
    with live.sessions() as s:
        consent = s.scalars(
            select(Consent).where(Consent.patient_id == pid, Consent.channel == "sms")
        ).one()
    assert (consent.opted_out_at, consent.opt_out_source) == (NOW, "provider")
    assert (reminder.status, reminder.channel) == ("sent", "email")


# transient: retried later, no sooner than asked ------------------------------------------------


def test_a_twilio_429_reschedules_no_sooner_than_its_retry_after(live, twilio, sendgrid) -> None:
    pid = due_patient(live, channels="sms|email")
    twilio.fail_next(429, 20429, headers={"Retry-After": "7200"})  # beyond the backoff cap
    assert dispatch(live) == Counter(retry=1)
    reminder, [delivery] = due_reminder(live, pid)
    assert (reminder.status, reminder.attempts) == ("pending", 1)
    assert reminder.next_attempt_at >= NOW + dt.timedelta(seconds=7200)
    assert (delivery.status, delivery.permanent, delivery.error_code) == ("failed", False, "20429")
    assert sendgrid.mails == []  # a transient failure does not fall back


def test_a_sendgrid_429_reschedules_no_sooner_than_the_reset(live, sendgrid) -> None:
    pid = due_patient(live, channels="email")
    reset = int(time.time()) + 7200
    sendgrid.fail_next(429, headers={"X-RateLimit-Reset": str(reset)})
    dispatch(live)
    asked = reset - time.time()
    reminder, [delivery] = due_reminder(live, pid)
    assert (reminder.status, reminder.attempts) == ("pending", 1)
    assert reminder.next_attempt_at >= NOW + dt.timedelta(seconds=asked)
    assert (delivery.status, delivery.error_code) == ("failed", "429")


@pytest.mark.parametrize(("status", "code"), [(500, 20500), (503, 20503)])
def test_a_server_error_is_retried_later_on_the_same_channel(live, twilio, status, code) -> None:
    pid = due_patient(live, channels="sms")
    twilio.fail_next(status, code)
    dispatch(live)
    reminder, [delivery] = due_reminder(live, pid)
    assert (reminder.status, reminder.attempts) == ("pending", 1)
    assert reminder.next_attempt_at > NOW
    assert (delivery.status, delivery.error_code) == ("failed", str(code))
    assert not delivery.permanent
    dispatch(live, reminder.next_attempt_at)
    reminder, deliveries = due_reminder(live, pid)
    assert [d.status for d in deliveries] == ["failed", "queued"]
    assert reminder.status == "sent"


def test_a_provider_that_does_not_answer_leaves_it_in_doubt_not_retried(
    settings, twilio, sendgrid
) -> None:
    with live_runtime(provider_settings(settings, twilio, sendgrid, provider_timeout=0.5)) as rt:
        pid = due_patient(rt, channels="email|sms")
        sendgrid.hang_next(3.0)
        assert dispatch(rt) == Counter(in_doubt=1)
        reminder, [delivery] = due_reminder(rt, pid)
        grace = dt.timedelta(seconds=rt.settings.in_doubt_grace_seconds)
        assert (reminder.status, reminder.attempts, reminder.claimed_by) == ("in_doubt", 0, None)
        assert reminder.next_attempt_at == NOW + grace
        assert (delivery.status, delivery.error_code) == ("in_doubt", "no_answer")
        assert twilio.requests == []  # no fallback either: the mail may have gone out


# misconfigured: pause, alert, no retry storm -------------------------------------------------


def test_bad_twilio_credentials_pause_sms_alert_and_spare_the_provider(
    settings, twilio, sendgrid, caplog
) -> None:
    wrong = provider_settings(settings, twilio, sendgrid, sms_rate=50.0, twilio_auth_token="0" * 32)
    with live_runtime(wrong) as rt:
        ids = [due_patient(rt, channels="sms") for _ in range(12)]
        dispatcher = Dispatcher(rt, "test")
        with log_events(caplog) as logs:
            dispatcher.run_once(now=NOW)
            later = NOW + dt.timedelta(minutes=16)
            dispatcher.run_once(now=later)  # still paused: nothing is sent
        dispatcher.close()
        assert 1 <= len(twilio.requests) <= rt.settings.dispatch_concurrency
        assert all(r.status == 401 for r in twilio.requests)
        paused = rt.metrics.registry.get_sample_value(
            "reminders_channel_paused", {"channel": "sms"}
        )
        assert paused == 1
        assert any(e["event"] == "channel_paused" and e["channel"] == "sms" for e in logs)
        for pid in ids:
            reminder, deliveries = due_reminder(rt, pid)
            assert (reminder.status, reminder.attempts) == ("pending", 0)
            assert reminder.next_attempt_at > later
            assert all(d.error_code == "20003" and not d.permanent for d in deliveries)


def test_an_unverified_sender_pauses_email_and_the_reminder_goes_by_sms(settings, twilio) -> None:
    with (
        FakeSendGrid(verified_senders={"someone-else@example.org"}) as sendgrid,
        live_runtime(provider_settings(settings, twilio, sendgrid, sms_rate=50.0)) as rt,
    ):
        pid = due_patient(rt, channels="email|sms")
        dispatch(rt)
        reminder, deliveries = due_reminder(rt, pid)
        assert [(d.channel, d.status, d.permanent, d.error_code) for d in deliveries] == [
            ("email", "failed", False, "403"),
            ("sms", "queued", False, None),
        ]
        assert (reminder.status, reminder.channel) == ("sent", "sms")
        paused = rt.metrics.registry.get_sample_value(
            "reminders_channel_paused", {"channel": "email"}
        )
        assert paused == 1
