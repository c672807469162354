"""Twilio webhooks: message status callbacks and inbound messages.

Both are form POSTs signed with ``X-Twilio-Signature``, which covers the URL exactly as Twilio
requested it (scheme, host, port, path and query) plus the form fields. Behind a proxy the URL the
service sees is not that one, so it is rebuilt from ``REMINDERS_PUBLIC_URL`` + path + query (the
request's own URL only when no public URL is configured) and checked with the SDK's
``RequestValidator``.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl

from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from reminders import inbound, queries
from reminders.feedback import Feedback, twilio_report
from reminders.logs import get_logger, mask_phone
from reminders.models import Channel
from reminders.runtime import Runtime
from reminders.settings import Settings

log = get_logger(__name__)
Form = ImmutableMultiDict[str, str]
MAX_FIELDS = 200
TWILIO_CHANNELS = (Channel.SMS, Channel.WHATSAPP)


def parse_form(body: bytes) -> Form:
    """The form fields, repeated names kept (the signature covers every value).
    Raises ValueError for a body that is not a UTF-8 form."""
    text = body.decode("utf-8")
    return ImmutableMultiDict(parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS))


def signed_url(settings: Settings, request_url: str, path: str, query: str) -> str:
    """The URL Twilio signed: the public URL when there is one, with the request's path and
    its query string exactly as received."""
    if not settings.public_url:
        return request_url
    return settings.public_url.rstrip("/") + path + (f"?{query}" if query else "")


def signature_problem(
    settings: Settings, url: str, form: Form, signature: str | None
) -> str | None:
    """None when the request is Twilio's; else why it is refused."""
    if settings.twilio_auth_token is None:
        return "not_configured"
    if not signature:
        return "missing_signature"
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    return None if validator.validate(url, form, signature) else "bad_signature"


def missing(form: Form, *names: str) -> str | None:
    """The first required field that is absent or empty."""
    return next((n for n in names if not form.get(n, "").strip()), None)


def handle_status(runtime: Runtime, form: Form, public_id: str | None, now: dt.datetime) -> str:
    """Apply a status callback; returns its outcome (``unknown``: no such delivery)."""
    sid, status = form["MessageSid"].strip(), form["MessageStatus"]
    report = twilio_report(status, form.get("ErrorCode"), sid)
    if report is None:
        return "ignored"
    with runtime.sessions() as session, session.begin():
        delivery = queries.find_delivery(
            session, public_id=public_id, provider_ids=[sid], channels=TWILIO_CHANNELS
        )
        if delivery is None:
            log.info("status_for_unknown_delivery", status=status)
            return "unknown"
        return Feedback(runtime).apply(session, delivery, report, now)


def handle_inbound(runtime: Runtime, form: Form, now: dt.datetime) -> tuple[str, str]:
    """Store and act on an inbound message; returns (outcome, TwiML answer)."""
    message = inbound.Inbound(
        message_id=form["MessageSid"].strip(),
        sender=form["From"].strip(),
        body=form.get("Body", ""),
        opt_out_type=form.get("OptOutType") or None,
    )
    with runtime.sessions() as session, session.begin():
        received = inbound.receive(session, message, now=now)
    _count(runtime, message, received)
    answer = MessagingResponse()
    if received.kind == inbound.Kind.HELP:
        answer.message(inbound.help_text(runtime.settings, received.language))
    outcome = "duplicate" if received.repeat else received.kind.value
    return outcome, str(answer)


def _count(runtime: Runtime, message: inbound.Inbound, received: inbound.Received) -> None:
    log.info(
        "inbound_message",
        channel=message.channel,
        sender=mask_phone(message.number),
        kind=received.kind,
        patients=received.patients,
        changed=received.changed,
        repeat=received.repeat,
    )
    if received.repeat:
        return
    m = runtime.metrics
    m.replies.labels(message.channel, received.kind).inc()
    if received.changed:
        action = "out" if received.kind == inbound.Kind.STOP else "in"
        m.opt_outs.labels(message.channel, "twilio", action).inc(received.changed)
