"""SendGrid's signed event webhook against the real app: every batch signed with a generated
P-256 key (the fake's), verified by the SDK's EventWebhook helper; deduplication on
``sg_event_id``; delivery events ranked; bounces and drops through the fallback and retry policy;
unsubscribes and spam reports opting the address out of email."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from reminders.runtime import Runtime
from reminders.settings import ConfigError, load_settings
from reminders.web.app import create_app
from tests import factories
from tests.fakes import FakeSendGrid
from tests.webhook_support import (
    EVENTS_PATH,
    NOW,
    consent,
    dispatch,
    history,
    plan_due,
    send_due,
    sendgrid_event,
    sendgrid_post,
    state,
    web_settings,
)

EMAIL_FIRST = {"channels": "email|sms"}
RSA_KEY = base64.b64encode(
    rsa.generate_private_key(65537, 2048)
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()


@pytest.fixture
def sendgrid() -> FakeSendGrid:
    return FakeSendGrid()  # not started: its key pair signs the batches


@pytest.fixture
def web(runtime: Runtime, settings, sendgrid: FakeSendGrid) -> Runtime:
    runtime.settings = web_settings(settings, sendgrid=sendgrid)
    runtime.clock = lambda: NOW
    return runtime


@pytest.fixture
def client(web: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(web)) as test_client:
        yield test_client


def metric(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


def outcome(rt: Runtime, name: str) -> float:
    return metric(rt, "reminders_webhook_events_total", source="sendgrid", outcome=name)


# delivery events ------------------------------------------------------------------------------


def test_a_delivered_event_marks_the_email_delivered(web, client, sendgrid) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    answer = sendgrid_post(client, sendgrid, [sendgrid_event(sent, "delivered", "ev-1")])
    assert answer.status_code == 200
    reminder, [email] = state(web, sent.reminder_id)
    assert (sent.channel, reminder.status, email.status) == ("email", "sent", "delivered")
    assert history(web, email.id)[-1] == ("delivered", "sendgrid", None)


def test_an_unordered_batch_never_moves_a_status_backwards(web, client, sendgrid) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    batch = [
        sendgrid_event(sent, name, f"ev-{name}")
        for name in ("open", "delivered", "deferred", "processed")
    ]
    sendgrid_post(client, sendgrid, batch)
    _, [email] = state(web, sent.reminder_id)
    assert email.status == "read"  # an open: the furthest news, whatever the order
    assert [s for s, source, _ in history(web, email.id) if source == "sendgrid"] == ["read"]


def test_events_in_order_each_leave_an_event(web, client, sendgrid) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    for name in ("processed", "deferred", "delivered"):
        sendgrid_post(client, sendgrid, [sendgrid_event(sent, name, f"ev-{name}")])
    statuses = [s for s, source, _ in history(web, sent.delivery_id) if source == "sendgrid"]
    assert statuses == ["deferred", "delivered"]  # processed: accepted, as the send already said


def test_a_repeated_event_counts_once(web, client, sendgrid) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    bounce = sendgrid_event(sent, "bounce", "ev-bounce", type="bounce", reason="550 5.1.1")
    sendgrid_post(client, sendgrid, [bounce, bounce])
    sendgrid_post(client, sendgrid, [bounce])
    reminder, [email] = state(web, sent.reminder_id)
    assert email.status == "failed" and reminder.status == "pending"
    assert outcome(web, "fallback") == 1 and outcome(web, "duplicate") == 2


def test_an_event_without_our_custom_args_is_matched_by_its_message_id(web, client, sendgrid):
    sent = send_due(web, **EMAIL_FIRST)
    event = sendgrid_event(sent, "delivered", "ev-1")
    del event["delivery"], event["reminder"]
    sendgrid_post(client, sendgrid, [event])
    assert state(web, sent.reminder_id)[1][0].status == "delivered"


def test_an_event_for_an_unknown_message_is_answered_200_and_counted(web, client, sendgrid):
    event = {"email": "x@example.org", "event": "delivered", "sg_event_id": "ev-x",
             "sg_message_id": "unknown.recvd-1", "timestamp": 1}  # fmt: skip
    assert sendgrid_post(client, sendgrid, [event]).status_code == 200
    assert outcome(web, "unknown") == 1


def test_a_broken_event_is_skipped_and_the_rest_of_the_batch_applied(web, client, sendgrid):
    sent = send_due(web, **EMAIL_FIRST)
    batch = ["not an event", {"event": "delivered"}, sendgrid_event(sent, "delivered", "ev-1")]
    assert sendgrid_post(client, sendgrid, batch).status_code == 200
    assert state(web, sent.reminder_id)[1][0].status == "delivered"
    assert outcome(web, "malformed") == 2


# late failures ---------------------------------------------------------------------------------


def test_a_bounce_falls_back_to_the_next_channel(web, client, sendgrid, senders) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    bounce = sendgrid_event(sent, "bounce", "ev-1", type="bounce", status="5.1.1", reason="no")
    sendgrid_post(client, sendgrid, [bounce])
    _, [email] = state(web, sent.reminder_id)
    assert (email.status, email.permanent, email.error_code) == ("failed", True, "bounce")
    dispatch(web)
    reminder, [_, sms] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.channel, sms.channel) == ("sent", "sms", "sms")


def test_a_blocked_bounce_is_retried_on_email_later(web, client, sendgrid) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    blocked = sendgrid_event(sent, "bounce", "ev-1", type="blocked", reason="IP reputation")
    sendgrid_post(client, sendgrid, [blocked])
    reminder, [email] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.attempts, email.permanent) == ("pending", 1, False)
    assert reminder.next_attempt_at > NOW and reminder.last_error == "IP reputation"


def test_a_drop_for_an_unsubscribed_address_records_the_opt_out(web, client, sendgrid) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    dropped = sendgrid_event(sent, "dropped", "ev-1", reason="Unsubscribed Address")
    sendgrid_post(client, sendgrid, [dropped])
    row = consent(web, sent.patient_id, "email")
    assert row is not None and row.opted_out_at == NOW and row.opt_out_source == "sendgrid"
    assert state(web, sent.reminder_id)[0].status == "pending"


# unsubscribes --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unsubscribe", "group_unsubscribe", "spamreport"])
def test_an_unsubscribe_opts_the_address_out_of_email(web, client, sendgrid, name) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    with web.sessions() as s, s.begin():
        same = factories.patient(s, email=sent.address.upper()).id
    sendgrid_post(client, sendgrid, [sendgrid_event(sent, name, "ev-1", asm_group_id=7)])
    for patient_id in (sent.patient_id, same):
        row = consent(web, patient_id, "email")
        assert row is not None and row.opted_out_at == NOW and row.opt_out_reason == name
    assert state(web, sent.reminder_id)[1][0].status == "accepted"  # not news about delivery
    assert metric(web, "reminders_opt_outs_total", channel="email", source="sendgrid", action="out")


@pytest.mark.parametrize(
    ("first", "back_in"), [("group_unsubscribe", True), ("unsubscribe", False)]
)
def test_a_group_resubscribe_undoes_only_a_group_unsubscribe(web, client, sendgrid, first, back_in):
    sent = send_due(web, **EMAIL_FIRST)
    sendgrid_post(client, sendgrid, [sendgrid_event(sent, first, "ev-1")])
    sendgrid_post(client, sendgrid, [sendgrid_event(sent, "group_resubscribe", "ev-2")])
    row = consent(web, sent.patient_id, "email")
    assert row is not None and row.usable is back_in


def test_an_unsubscribe_after_planning_sends_the_reminder_by_the_next_channel(
    web, client, sendgrid, senders
) -> None:
    reminder_id = plan_due(web, **EMAIL_FIRST, email="ayse.planned@example.com")
    event = {"email": "ayse.planned@example.com", "event": "unsubscribe",
             "sg_event_id": "ev-1", "timestamp": int(NOW.timestamp())}  # fmt: skip
    sendgrid_post(client, sendgrid, [event])
    dispatch(web)
    assert not senders["email"].attempts and len(senders["sms"].sent) == 1
    assert state(web, reminder_id)[0].channel == "sms"


# signatures and bodies -----------------------------------------------------------------------


def _refused(web, answer, reason: str) -> None:
    assert answer.status_code == 403
    assert metric(web, "reminders_webhook_rejected_total", source="sendgrid", reason=reason) == 1


@pytest.mark.parametrize(
    ("age", "accepted"),
    [(dt.timedelta(minutes=9), True), (dt.timedelta(minutes=11), False),
     (-dt.timedelta(minutes=11), False)],
    ids=["9-minutes-old", "11-minutes-old", "11-minutes-ahead"],
)  # fmt: skip
def test_a_timestamp_older_than_ten_minutes_is_refused(web, client, sendgrid, age, accepted):
    sent = send_due(web, **EMAIL_FIRST)
    answer = sendgrid_post(
        client, sendgrid, [sendgrid_event(sent, "delivered", "ev-1")], at=NOW - age
    )
    status = state(web, sent.reminder_id)[1][0].status
    if accepted:
        assert (answer.status_code, status) == (200, "delivered")
    else:
        _refused(web, answer, "stale_timestamp")
        assert status == "accepted"


def test_a_batch_signed_by_another_key_is_refused(web, client) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    answer = sendgrid_post(client, FakeSendGrid(), [sendgrid_event(sent, "bounce", "ev-1")])
    _refused(web, answer, "bad_signature")
    assert state(web, sent.reminder_id)[1][0].status == "accepted"


def test_a_body_changed_after_signing_is_refused(web, client, sendgrid) -> None:
    sent = send_due(web, **EMAIL_FIRST)
    signed = json.dumps([sendgrid_event(sent, "delivered", "ev-1")]).encode()
    signature, ts = sendgrid.sign(signed, str(int(NOW.timestamp())))
    tampered = json.dumps([sendgrid_event(sent, "bounce", "ev-1")]).encode()
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
    }
    answer = client.post(EVENTS_PATH, content=tampered, headers=headers)
    _refused(web, answer, "bad_signature")


@pytest.mark.parametrize("header", ["Signature", "Timestamp"])
def test_a_batch_missing_a_signature_header_is_refused(web, client, sendgrid, header) -> None:
    body = b"[]"
    signature, ts = sendgrid.sign(body, str(int(NOW.timestamp())))
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
    }
    del headers[f"X-Twilio-Email-Event-Webhook-{header}"]
    answer = client.post(EVENTS_PATH, content=body, headers=headers)
    _refused(web, answer, "missing_signature")


def test_a_signature_that_is_not_base64_is_refused(web, client) -> None:
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": "%%%not-base64",
        "X-Twilio-Email-Event-Webhook-Timestamp": str(int(NOW.timestamp())),
    }
    answer = client.post(EVENTS_PATH, content=b"[]", headers=headers)
    _refused(web, answer, "bad_signature")


def test_without_a_public_key_every_batch_is_refused(web, settings, sendgrid) -> None:
    web.settings = web_settings(settings)
    with TestClient(create_app(web)) as client:
        answer = sendgrid_post(client, sendgrid, [])
    assert answer.status_code == 403


@pytest.mark.parametrize(
    "body", [b"not json", b'{"event": "delivered"}', b"\xff\xfe"], ids=["text", "object", "binary"]
)
def test_a_signed_body_that_is_not_an_array_of_events_is_a_bad_request(
    web, client, sendgrid, body
) -> None:
    answer = sendgrid_post(client, sendgrid, None, body=body)
    assert answer.status_code == 400
    assert metric(web, "reminders_webhook_rejected_total", source="sendgrid", reason="malformed")


def test_the_allowed_age_of_a_batch_is_a_setting(web, client, sendgrid) -> None:
    web.settings = web.settings.model_copy(update={"webhook_max_age_seconds": 60})
    sent = send_due(web, **EMAIL_FIRST)
    event = [sendgrid_event(sent, "delivered", "ev-1")]
    answer = sendgrid_post(client, sendgrid, event, at=NOW - dt.timedelta(minutes=2))
    _refused(web, answer, "stale_timestamp")


@pytest.mark.parametrize("key", ["not base64!", "aGVsbG8=", RSA_KEY], ids=["text", "bytes", "rsa"])
def test_a_public_key_that_is_not_an_ec_key_stops_the_service_naming_it(key) -> None:
    with pytest.raises(ConfigError, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        load_settings({"SENDGRID_WEBHOOK_PUBLIC_KEY": key})
