"""SendGrid's signed event webhook: delivery events and unsubscribes.

The request is SendGrid's when ``X-Twilio-Email-Event-Webhook-Signature`` (ECDSA P-256 over
timestamp + raw body) verifies with ``SENDGRID_WEBHOOK_PUBLIC_KEY`` through the SDK's
``EventWebhook`` helper, and its timestamp is within ``REMINDERS_WEBHOOK_MAX_AGE_SECONDS``
(600) of now; the helper does not check the age, so a captured request could otherwise be
replayed forever. Events come batched, repeated and unordered: each is handled in its own
transaction and counted once by ``sg_event_id``.
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
from collections import Counter
from functools import lru_cache
from typing import Any

from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from reminders import consents, queries
from reminders.feedback import Feedback, sendgrid_report
from reminders.logs import get_logger
from reminders.models import Channel, Delivery, Patient, Reminder
from reminders.runtime import Runtime
from reminders.settings import Settings

log = get_logger(__name__)
SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
OPT_OUT_EVENTS = frozenset({"unsubscribe", "group_unsubscribe", "spamreport"})
SOURCE = "sendgrid"


@lru_cache(maxsize=4)
def _verifier(public_key: str) -> EventWebhook:
    return EventWebhook(public_key)


def signature_problem(
    settings: Settings, body: str, signature: str | None, timestamp: str | None, now: dt.datetime
) -> str | None:
    """None when the request is SendGrid's and fresh; else why it is refused."""
    key = settings.sendgrid_webhook_public_key
    if not key:
        return "not_configured"
    if not signature or not timestamp:
        return "missing_signature"
    try:
        valid = _verifier(key).verify_signature(body, signature, timestamp)
    except (binascii.Error, ValueError, TypeError):
        valid = False  # bad base64 or a mangled DER signature
    if not valid:
        return "bad_signature"
    if not (timestamp.isascii() and timestamp.isdigit()):
        return "bad_timestamp"
    if abs(now.timestamp() - int(timestamp)) > settings.webhook_max_age_seconds:
        return "stale_timestamp"
    return None


def parse_events(body: str) -> list[Any]:
    """The batch: a JSON array. Raises ValueError (naming what is wrong) for anything else."""
    events = json.loads(body)
    if not isinstance(events, list):
        raise ValueError("the body must be a JSON array of events")
    if _holds_nul(events):
        raise ValueError("an event holds a NUL character")  # no provider sends one
    return events


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def handle_events(runtime: Runtime, events: list[Any], now: dt.datetime) -> Counter[str]:
    """Handle each event in its own transaction; one that breaks is logged and skipped.
    The database being unreachable propagates (the batch is answered 503 and retried)."""
    feedback, outcomes = Feedback(runtime), Counter[str]()
    for index, event in enumerate(events):
        try:
            with runtime.sessions() as session, session.begin():
                outcome = handle_event(session, feedback, event, now)
        except (OperationalError, PoolTimeout):
            raise
        except Exception:
            log.exception("sendgrid_event_failed", index=index)
            outcome = "error"
        outcomes[outcome] += 1
        runtime.metrics.webhook_events.labels(SOURCE, outcome).inc()
    return outcomes


def handle_event(session: Session, feedback: Feedback, event: Any, now: dt.datetime) -> str:
    if not isinstance(event, dict):
        return "malformed"
    name, event_id = event.get("event"), event.get("sg_event_id")
    if not isinstance(name, str) or not isinstance(event_id, str) or not event_id:
        return "malformed"
    if not queries.first_seen(session, SOURCE, event_id, now):
        return "duplicate"
    delivery = _delivery(session, event)
    if name in OPT_OUT_EVENTS or name == "group_resubscribe":
        return _consent(session, feedback, delivery, event, now)
    report = sendgrid_report(event)
    if report is None:
        return "ignored"
    if delivery is None:
        return "unknown"
    return feedback.apply(session, delivery, report, now)


def _delivery(session: Session, event: dict[str, Any]) -> Delivery | None:
    """By our ``delivery`` custom arg, else by ``sg_message_id``, which starts with the
    ``X-Message-Id`` the send was answered with."""
    public_id = event.get("delivery")
    message_id = str(event.get("sg_message_id") or "")
    candidates = {message_id, message_id.split(".", 1)[0]} - {""}
    found = queries.find_delivery(
        session,
        public_id=public_id if isinstance(public_id, str) else None,
        provider_ids=sorted(candidates),
        channels=[Channel.EMAIL],
    )
    return found


def _consent(
    session: Session, feedback: Feedback, delivery: Delivery | None, event: dict[str, Any],
    now: dt.datetime,
) -> str:  # fmt: skip
    """Unsubscribe and spam report stop email for the address; a resubscribe to the group
    undoes only a group unsubscribe."""
    name, changed = str(event["event"]), 0
    for patient in _patients(session, delivery, event.get("email")):
        if name == "group_resubscribe":
            consent = patient.consent(Channel.EMAIL)
            if consent is None or consent.opt_out_reason != "group_unsubscribe":
                continue
            changed += consents.opt_in(session, patient, Channel.EMAIL, source=SOURCE, now=now)
        else:
            changed += consents.opt_out(
                session, patient, Channel.EMAIL, source=SOURCE, now=now, reason=name
            )
    action = "in" if name == "group_resubscribe" else "out"
    if changed:
        feedback.runtime.metrics.opt_outs.labels(Channel.EMAIL, SOURCE, action).inc(changed)
    return "opt_in" if action == "in" else "opt_out"


def _patients(session: Session, delivery: Delivery | None, email: Any) -> list[Patient]:
    """The patient the delivery went to, and every patient with that address."""
    found: dict[int, Patient] = {}
    if delivery is not None:
        reminder = session.get_one(Reminder, delivery.reminder_id)
        patient = session.get_one(Patient, reminder.patient_id)
        found[patient.id] = patient
    if isinstance(email, str) and email.strip():
        same = select(Patient).where(func.lower(Patient.email) == email.strip().lower())
        found.update((p.id, p) for p in session.scalars(same))
    return [found[k] for k in sorted(found)]
