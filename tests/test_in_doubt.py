"""The crash window: a delivery claimed and possibly handed to the provider, with no answer
recorded. Once its lease runs out it is *in doubt* (visible on the reminder, the delivery's
history and the ``reminders_in_doubt`` gauge); a provider callback settles it either way; with no
word for ``REMINDERS_IN_DOUBT_GRACE_SECONDS`` it is abandoned and sent again, once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from reminders import queries
from reminders.channels import OutboundMessage
from reminders.models import Patient, Reminder
from reminders.runtime import Runtime
from reminders.service import Service
from reminders.web.app import create_app
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.webhook_support import (
    NOW,
    Sent,
    dispatch,
    history,
    plan_due,
    sendgrid_event,
    sendgrid_post,
    state,
    status_params,
    status_path,
    twilio_post,
    web_settings,
)

SID = "SM" + "5" * 32


@pytest.fixture
def twilio() -> FakeTwilio:
    return FakeTwilio()


@pytest.fixture
def sendgrid() -> FakeSendGrid:
    return FakeSendGrid()


@pytest.fixture
def web(runtime: Runtime, settings, twilio, sendgrid) -> Runtime:
    runtime.settings = web_settings(settings, twilio, sendgrid)
    runtime.clock = lambda: NOW
    return runtime


@pytest.fixture
def client(web: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(web)) as test_client:
        yield test_client


def lease(rt: Runtime) -> dt.timedelta:
    return dt.timedelta(seconds=rt.settings.lease_seconds)


def grace(rt: Runtime) -> dt.timedelta:
    return dt.timedelta(seconds=rt.settings.in_doubt_grace_seconds)


def crash_mid_send(rt: Runtime, channel: str = "sms") -> Sent:
    """What a dispatcher that died inside the provider call leaves behind: its reminder claimed
    under a lease and a delivery row ``sending`` with no provider id."""
    reminder_id = plan_due(rt, channels={"sms": "sms|email", "email": "email|sms"}[channel])
    with rt.sessions() as s, s.begin():
        assert queries.claim_due(s, "dead-worker", now=NOW, limit=5, lease=lease(rt)) == [
            reminder_id
        ]
        patient = s.get_one(Patient, s.get_one(Reminder, reminder_id).patient_id)
        address = patient.address(channel) or ""
        d = queries.start_delivery(s, reminder_id, channel=channel, address=address, now=NOW)
        ids = (patient.id, d.id, d.public_id)
    return Sent(ids[0], reminder_id, ids[1], ids[2], SID, channel, address)


def housekeeping(rt: Runtime, at: dt.datetime) -> None:
    service = Service(rt, owner="housekeeper")
    try:
        service.housekeeping(at)
    finally:
        service.dispatcher.close()


def in_doubt_gauge(client: TestClient) -> str:
    lines = client.get("/metrics").text.splitlines()
    return next(line for line in lines if line.startswith("reminders_in_doubt "))


def callback(client, twilio, sent: Sent, status: str, code: int | None = None):
    answer = twilio_post(
        client, twilio, status_path(sent.public_id), status_params(SID, status, code)
    )
    assert answer.status_code == 200


def test_a_send_cut_off_by_a_crash_is_in_doubt_once_its_lease_runs_out(web, client) -> None:
    sent = crash_mid_send(web)
    housekeeping(web, NOW + lease(web) - dt.timedelta(seconds=1))
    assert state(web, sent.reminder_id)[0].status == "claimed"  # the worker may be alive
    expired = NOW + lease(web) + dt.timedelta(seconds=1)
    housekeeping(web, expired)
    reminder, [delivery] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.claimed_by, delivery.status) == ("in_doubt", None, "in_doubt")
    assert reminder.next_attempt_at == expired + grace(web)
    assert history(web, delivery.id) == [
        ("sending", "dispatch", None),
        ("in_doubt", "housekeeping", None),
    ]
    assert in_doubt_gauge(client) == "reminders_in_doubt 1.0"


def test_a_delivered_callback_settles_it_as_sent_and_it_is_never_sent_again(
    web, client, twilio, senders
) -> None:
    sent = crash_mid_send(web)
    housekeeping(web, NOW + lease(web) + dt.timedelta(seconds=1))
    callback(client, twilio, sent, "delivered")
    reminder, [delivery] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.channel, reminder.sent_at) == ("sent", "sms", NOW)
    assert (delivery.status, delivery.provider_message_id) == ("delivered", SID)
    later = NOW + lease(web) + grace(web) + dt.timedelta(minutes=1)
    housekeeping(web, later)
    dispatch(web, later)
    assert state(web, sent.reminder_id)[0].status == "sent"
    assert not senders["sms"].attempts and not senders["email"].attempts
    assert in_doubt_gauge(client) == "reminders_in_doubt 0.0"


def test_a_permanent_failure_callback_sends_it_by_the_next_channel(
    web, client, twilio, senders
) -> None:
    sent = crash_mid_send(web)
    housekeeping(web, NOW + lease(web) + dt.timedelta(seconds=1))
    callback(client, twilio, sent, "undelivered", 30005)
    reminder, [sms] = state(web, sent.reminder_id)
    assert (reminder.status, sms.status, sms.permanent) == ("pending", "undelivered", True)
    dispatch(web)
    assert [m.channel for m in senders["email"].sent] == ["email"] and not senders["sms"].attempts


def test_a_transient_failure_callback_retries_it_after_a_backoff(web, client, twilio) -> None:
    sent = crash_mid_send(web)
    housekeeping(web, NOW + lease(web) + dt.timedelta(seconds=1))
    callback(client, twilio, sent, "failed", 30001)
    reminder, _ = state(web, sent.reminder_id)
    assert (reminder.status, reminder.attempts) == ("pending", 1)
    assert NOW < reminder.next_attempt_at <= NOW + dt.timedelta(seconds=30)


def test_with_no_word_within_the_grace_period_it_is_sent_again_exactly_once(web, senders) -> None:
    sent = crash_mid_send(web)
    doubted = NOW + lease(web) + dt.timedelta(seconds=1)
    housekeeping(web, doubted)
    housekeeping(web, doubted + grace(web) - dt.timedelta(seconds=1))
    assert state(web, sent.reminder_id)[0].status == "in_doubt"
    resolved = doubted + grace(web)
    housekeeping(web, resolved)
    reminder, [abandoned] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.next_attempt_at) == ("pending", resolved)
    assert abandoned.status == "abandoned"
    assert history(web, abandoned.id)[-1] == ("abandoned", "housekeeping", None)
    dispatch(web, resolved)
    dispatch(web, resolved + dt.timedelta(minutes=1))
    reminder, [_, again] = state(web, sent.reminder_id)
    assert (reminder.status, again.channel, again.status) == ("sent", "sms", "accepted")
    assert len(senders["sms"].sent) == 1


def test_a_callback_after_the_grace_period_but_before_the_resend_stops_the_resend(
    web, client, twilio, senders
) -> None:
    sent = crash_mid_send(web)
    doubted = NOW + lease(web) + dt.timedelta(seconds=1)
    housekeeping(web, doubted)
    housekeeping(web, doubted + grace(web))
    callback(client, twilio, sent, "sent")
    dispatch(web, doubted + grace(web))
    reminder, [delivery] = state(web, sent.reminder_id)
    assert (reminder.status, delivery.status) == ("sent", "sent")
    assert not senders["sms"].attempts


def test_a_callback_after_the_resend_is_recorded_and_changes_nothing_else(
    web, client, twilio, senders
) -> None:
    sent = crash_mid_send(web)
    doubted = NOW + lease(web) + dt.timedelta(seconds=1)
    housekeeping(web, doubted)
    housekeeping(web, doubted + grace(web))
    dispatch(web, doubted + grace(web))
    callback(client, twilio, sent, "undelivered", 30003)
    reminder, [first, second] = state(web, sent.reminder_id)
    assert (first.status, second.status, reminder.status) == ("undelivered", "accepted", "sent")


def test_a_sendgrid_event_settles_an_in_doubt_email(web, client, sendgrid) -> None:
    sent = crash_mid_send(web, "email")
    housekeeping(web, NOW + lease(web) + dt.timedelta(seconds=1))
    event = sendgrid_event(sent, "processed", "ev-1")
    del event["sg_message_id"]  # the send never returned, so only our custom args can match
    assert sendgrid_post(client, sendgrid, [event]).status_code == 200
    reminder, [email] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.channel, email.status) == ("sent", "email", "accepted")


# a callback that overtakes the dispatcher's own record ----------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "reminder_after", "delivery_after"),
    [("sent", None, "sent", "sent"), ("undelivered", 30003, "pending", "undelivered")],
)
def test_a_callback_that_arrives_before_the_send_is_recorded_is_not_lost(
    web, client, twilio, senders, status, code, reminder_after, delivery_after
) -> None:
    def overtaken(message: OutboundMessage) -> None:
        params = status_params(SID, status, code)
        twilio_post(client, twilio, status_path(message.delivery_id), params)

    senders["sms"].script = overtaken
    reminder_id = plan_due(web)
    dispatch(web)
    reminder, [sms] = state(web, reminder_id)
    assert (reminder.status, sms.status, sms.provider_message_id) == (
        reminder_after,
        delivery_after,
        SID,
    )
    assert len(senders["sms"].sent) == 1
