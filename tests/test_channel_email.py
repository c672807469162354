"""The email channel: the real sendgrid SDK against the fake SendGrid, and the .ics attachment."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any

import icalendar
import pytest
from jsonschema import Draft7Validator

from reminders.channels import Attachment, ChannelError, ErrorKind, OutboundMessage, calendar
from reminders.channels.email import EmailSender
from reminders.planning import Window
from reminders.settings import Settings
from tests.fakes import FakeSendGrid
from tests.fakes.sendgrid import SCHEMA
from tests.provider_setup import FROM_EMAIL, TEMPLATE_ID, outbound, provider_settings

PATIENT = "ayse@example.com"
WINDOW = Window(open=dt.date(2026, 3, 4), target=dt.date(2026, 3, 10), close=dt.date(2026, 4, 3))
RECIPIENT_FIELD = "personalizations.0.to.0.email"


def email_sender(settings: Settings, fake: FakeSendGrid, **overrides: object) -> EmailSender:
    return EmailSender(provider_settings(settings, sendgrid=fake, **overrides))


def reminder_email(**fields: Any) -> OutboundMessage:
    return outbound(
        "email",
        PATIENT,
        subject="Your treatment window is open",
        text="Dear Ayşe, please book.",
        html="<p>Dear Ayşe, please book.</p>",
        **fields,
    )


def refusal(sender: EmailSender) -> ChannelError:
    with pytest.raises(ChannelError) as info:
        sender.send(reminder_email())
    return info.value


def test_it_sends_text_then_html_with_our_ids_and_keeps_the_message_id(settings, sendgrid) -> None:
    receipt = email_sender(settings, sendgrid).send(
        reminder_email(delivery_id="dlv42", reminder_id=7)
    )
    [mail] = sendgrid.mails
    assert mail.recipients == [PATIENT]
    assert mail.from_email == FROM_EMAIL
    assert mail.body["subject"] == "Your treatment window is open"
    assert [c["type"] for c in mail.body["content"]] == ["text/plain", "text/html"]
    assert mail.body["personalizations"][0]["custom_args"] == {"delivery": "dlv42", "reminder": "7"}
    assert (receipt.provider_id, receipt.status) == (mail.message_id, "accepted")


def test_a_text_only_template_sends_one_part(settings, sendgrid) -> None:
    message = outbound("email", PATIENT, subject="Hello", text="Plain only")
    email_sender(settings, sendgrid).send(message)
    assert sendgrid.mails[0].body["content"] == [{"type": "text/plain", "value": "Plain only"}]


def test_a_dynamic_template_gets_the_rendered_parts_as_its_data(settings, sendgrid) -> None:
    email_sender(settings, sendgrid, sendgrid_template_id=TEMPLATE_ID).send(reminder_email())
    body = sendgrid.mails[0].body
    assert body["template_id"] == TEMPLATE_ID
    assert "content" not in body
    assert body["personalizations"][0]["dynamic_template_data"] == {
        "subject": "Your treatment window is open",
        "text": "Dear Ayşe, please book.",
        "html": "<p>Dear Ayşe, please book.</p>",
    }


def test_the_unsubscribe_group_is_sent_only_when_configured(settings, sendgrid) -> None:
    email_sender(settings, sendgrid).send(reminder_email())
    email_sender(settings, sendgrid, sendgrid_unsubscribe_group_id=4242).send(reminder_email())
    assert [m.body.get("asm") for m in sendgrid.mails] == [None, {"group_id": 4242}]


def test_the_calendar_attachment_arrives_as_a_valid_ics(settings, sendgrid) -> None:
    ics = calendar.window_event(
        uid="treatment-1-window@example.org",
        window=WINDOW,
        summary="Your treatment window",
        description="Book between 4 March and 3 April.",
        stamp=dt.datetime(2026, 2, 18, 7, 0, tzinfo=dt.UTC),
    )
    attachment = Attachment(calendar.FILENAME, calendar.MIME_TYPE, ics)
    email_sender(settings, sendgrid).send(reminder_email(attachments=(attachment,)))
    [sent] = sendgrid.mails[0].body["attachments"]
    assert (sent["filename"], sent["type"]) == ("treatment-window.ics", "text/calendar")
    assert base64.b64decode(sent["content"]) == ics


def test_the_calendar_event_spans_the_whole_window() -> None:
    ics = calendar.window_event(
        uid="treatment-1-window@example.org",
        window=WINDOW,
        summary="Tedavi aralığınız açık",
        description="Randevu alın.",
        stamp=dt.datetime(2026, 2, 18, 7, 0, tzinfo=dt.UTC),
    )
    [event] = icalendar.Calendar.from_ical(ics).walk("VEVENT")
    assert event.decoded("dtstart") == WINDOW.open
    assert event.decoded("dtend") == WINDOW.close + dt.timedelta(days=1)  # DTEND is exclusive
    assert str(event["summary"]) == "Tedavi aralığınız açık"
    assert str(event["uid"]) == "treatment-1-window@example.org"


@pytest.mark.parametrize("template_id", [None, TEMPLATE_ID])
def test_what_sendgrid_receives_matches_the_send_mail_schema(
    settings, sendgrid, template_id
) -> None:
    ics = calendar.window_event(
        uid="u@example.org",
        window=WINDOW,
        summary="s",
        description="d",
        stamp=dt.datetime.now(dt.UTC),
    )
    attachments = (Attachment(calendar.FILENAME, calendar.MIME_TYPE, ics),)
    sender = email_sender(
        settings, sendgrid, sendgrid_template_id=template_id, sendgrid_unsubscribe_group_id=7
    )
    sender.send(reminder_email(attachments=attachments))
    [request] = sendgrid.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.headers["Authorization"] == f"Bearer {sendgrid.api_key}"
    assert list(Draft7Validator(SCHEMA).iter_errors(request.params)) == []


@pytest.mark.parametrize(
    ("status", "field", "kind"),
    [
        (400, RECIPIENT_FIELD, ErrorKind.PERMANENT),
        (400, "from.email", ErrorKind.MISCONFIGURED),  # our payload is wrong: alert
        (400, None, ErrorKind.MISCONFIGURED),
        (401, None, ErrorKind.MISCONFIGURED),
        (403, "from", ErrorKind.MISCONFIGURED),
        (413, None, ErrorKind.MISCONFIGURED),
        (500, None, ErrorKind.TRANSIENT),
        (503, None, ErrorKind.TRANSIENT),
    ],
)
def test_each_sendgrid_answer_is_classified(settings, sendgrid, status, field, kind) -> None:
    sendgrid.fail_next(status, field=field)
    error = refusal(email_sender(settings, sendgrid))
    assert (error.kind, error.code) == (kind, str(status))
    assert sendgrid.mails == []


def test_an_invalid_recipient_address_is_permanent(settings, sendgrid) -> None:
    error = refusal_of(email_sender(settings, sendgrid), "not-an-address")
    assert (error.kind, error.code) == (ErrorKind.PERMANENT, "400")


def refusal_of(sender: EmailSender, to: str) -> ChannelError:
    with pytest.raises(ChannelError) as info:
        sender.send(outbound("email", to, subject="Hello", text="Hi"))
    return info.value


def test_an_unverified_sender_is_a_misconfiguration(settings) -> None:
    with FakeSendGrid(verified_senders={"someone-else@example.org"}) as fake:
        error = refusal(email_sender(settings, fake))
    assert (error.kind, error.code) == (ErrorKind.MISCONFIGURED, "403")


def test_a_wrong_api_key_is_a_misconfiguration(settings, sendgrid) -> None:
    error = refusal(email_sender(settings, sendgrid, sendgrid_api_key="SG.wrong.key"))
    assert (error.kind, error.code) == (ErrorKind.MISCONFIGURED, "401")


def test_a_429_waits_until_the_rate_limit_resets(settings, sendgrid) -> None:
    reset = int(time.time()) + 900
    sendgrid.fail_next(429, headers={"X-RateLimit-Reset": str(reset)})
    error = refusal(email_sender(settings, sendgrid))
    assert error.kind == ErrorKind.TRANSIENT
    assert error.retry_after is not None
    assert reset - time.time() - 1 <= error.retry_after <= 900


def test_a_server_that_does_not_answer_in_time_leaves_the_mail_in_doubt(settings, sendgrid) -> None:
    sendgrid.hang_next(5.0)
    started = time.monotonic()
    error = refusal(email_sender(settings, sendgrid, provider_timeout=0.5))
    assert (error.kind, error.code) == (ErrorKind.IN_DOUBT, "no_answer")
    assert time.monotonic() - started < 3.0


def test_a_connection_dropped_after_the_request_leaves_the_mail_in_doubt(
    settings, sendgrid
) -> None:
    sendgrid.hang_next(0.2)  # closes the connection without an answer, well before the timeout
    error = refusal(email_sender(settings, sendgrid, provider_timeout=5.0))
    assert (error.kind, error.code) == (ErrorKind.IN_DOUBT, "no_answer")


def test_a_refused_connection_is_transient(settings, sendgrid) -> None:
    sender = email_sender(settings, sendgrid)
    sendgrid.stop()
    assert refusal(sender).kind == ErrorKind.TRANSIENT


def test_the_sdks_own_api_key_variable_is_ignored(settings, sendgrid, monkeypatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.from.environment")
    email_sender(settings, sendgrid).send(reminder_email())
    assert sendgrid.requests[0].headers["Authorization"] == f"Bearer {sendgrid.api_key}"


def test_content_that_looks_like_an_api_key_is_refused_before_sending(settings, sendgrid) -> None:
    message = outbound("email", PATIENT, subject="Hello", text="SG.abc123.def456 leaked")
    with pytest.raises(ChannelError) as info:
        email_sender(settings, sendgrid).send(message)
    assert info.value.kind == ErrorKind.MISCONFIGURED
    assert sendgrid.requests == []
