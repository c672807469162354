"""Delivery feedback: what a provider says about a message after accepting it, and what follows.

A delivery's status only climbs this ladder, so repeated and reordered callbacks change nothing::

    sending, in_doubt, abandoned     ours: no word from the provider yet
    accepted < queued < sent = deferred
    delivered | undelivered | failed terminal; only delivered may still become read
    read

A late failure (``undelivered`` / ``failed`` with an error code, a bounce, a drop) goes through
the engine's own policy, as a failure at send time would, while the reminder still makes sense
(``now < expires_at``)::

    ErrorKind.TRANSIENT      the same channel again after RetryPolicy backoff, in the send window
    ErrorKind.PERMANENT      this address will not work: the next channel (dispatch falls back)
    ErrorKind.OPTED_OUT      the opt-out is recorded, then as PERMANENT
    ErrorKind.MISCONFIGURED  our fault (63016: WhatsApp free text outside the session): fall back

News decides a reminder only through its latest attempt: an in-doubt reminder is settled (sent, or
back to the policy); a sent one is reopened by a late failure; a claimed one is taken over only
while that attempt is still ``sending`` (the dispatcher's own writes check its claim, so they do
nothing after); a pending one after an ``abandoned`` attempt is marked sent when that attempt
turns out to have been accepted, instead of being sent twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from reminders import consents, queries
from reminders.channels import ErrorKind
from reminders.logs import get_logger
from reminders.models import Delivery, DeliveryStatus, Patient, Reminder, ReminderStatus
from reminders.retry import RetryPolicy
from reminders.runtime import Runtime

log = get_logger(__name__)
DS = DeliveryStatus
RS = ReminderStatus
EK = ErrorKind

RANK: dict[str, int] = {
    DS.SENDING: 0,
    DS.IN_DOUBT: 0,
    DS.ABANDONED: 0,
    DS.ACCEPTED: 1,
    DS.QUEUED: 2,
    DS.SENT: 3,
    DS.DEFERRED: 3,
    DS.DELIVERED: 4,
    DS.UNDELIVERED: 4,
    DS.FAILED: 4,
    DS.READ: 5,
}
TERMINAL = frozenset({DS.DELIVERED, DS.READ, DS.UNDELIVERED, DS.FAILED})
FAILURES = frozenset({DS.UNDELIVERED, DS.FAILED})

TWILIO_STATUS: dict[str, DS] = {
    "accepted": DS.ACCEPTED,
    "scheduled": DS.ACCEPTED,
    "queued": DS.QUEUED,
    "sending": DS.QUEUED,  # Twilio handing it to the carrier; our own "sending" means pre-call
    "sent": DS.SENT,
    "delivered": DS.DELIVERED,
    "partially_delivered": DS.DELIVERED,
    "read": DS.READ,
    "undelivered": DS.UNDELIVERED,
    "failed": DS.FAILED,
}
# ErrorCode of a failed/undelivered callback; any other code: PERMANENT (the next channel).
TWILIO_LATE: dict[str, ErrorKind] = {
    "30001": EK.TRANSIENT,  # queue overflow
    "30008": EK.TRANSIENT,  # unknown error
    "30036": EK.TRANSIENT,  # validity period expired while queued
    "63018": EK.TRANSIENT,  # WhatsApp rate limit
    "30002": EK.MISCONFIGURED,  # account suspended
    "63016": EK.MISCONFIGURED,  # WhatsApp free-form outside the 24 h window: needs a template
    "21610": EK.OPTED_OUT,  # the recipient replied STOP
}
SENDGRID_STATUS: dict[str, DS] = {
    "processed": DS.ACCEPTED,
    "deferred": DS.DEFERRED,
    "delivered": DS.DELIVERED,
    "open": DS.READ,
    "click": DS.READ,
    "bounce": DS.FAILED,
    "dropped": DS.FAILED,
}


def can_move(current: str, new: str) -> bool:
    """Whether ``new`` is news for a delivery that is ``current`` (never backwards)."""
    if current in TERMINAL:
        return current == DS.DELIVERED and new == DS.READ
    return RANK[new] > RANK.get(current, 0)


def predecessors(new: str) -> list[str]:
    return [str(s) for s in DS if can_move(s, new)]


@dataclass(frozen=True)
class Report:
    """What a provider says about one delivery."""

    status: DS
    source: str  # twilio, sendgrid
    kind: ErrorKind | None = None  # failures only
    code: str | None = None
    detail: str | None = None
    provider_id: str | None = None

    def columns(self) -> dict[str, Any]:
        if self.status not in FAILURES:
            return {}
        return {
            "error_code": (self.code or str(self.status))[:32],
            "error_message": (self.detail or "")[:500] or None,
            "permanent": self.kind != EK.TRANSIENT,
        }


def twilio_report(status: str, error_code: str | None, sid: str) -> Report | None:
    """A Twilio status callback as a Report (None: a status we have no use for)."""
    mapped = TWILIO_STATUS.get(status.strip().lower())
    if mapped is None:
        return None
    if mapped not in FAILURES:
        return Report(mapped, "twilio", provider_id=sid)
    code = (error_code or "").strip() or None
    kind = TWILIO_LATE.get(code or "", EK.PERMANENT)
    return Report(mapped, "twilio", kind, code, f"Twilio {status} {code or ''}".strip(), sid)


def sendgrid_report(event: dict[str, Any]) -> Report | None:
    """A SendGrid delivery event as a Report (None: not about delivery)."""
    name = str(event.get("event", ""))
    mapped = SENDGRID_STATUS.get(name)
    if mapped is None:
        return None
    reason = str(event.get("reason") or event.get("response") or "")
    if name == "bounce":
        blocked = event.get("type") == "blocked"  # refused for now (reputation), not a bad address
        kind, code = (EK.TRANSIENT, "blocked") if blocked else (EK.PERMANENT, "bounce")
        return Report(mapped, "sendgrid", kind, code, reason)
    if name == "dropped":
        refused = any(w in reason.lower() for w in ("unsubscribe", "spam"))
        return Report(mapped, "sendgrid", EK.OPTED_OUT if refused else EK.PERMANENT, name, reason)
    return Report(mapped, "sendgrid")


class Feedback:
    """Applies provider reports to deliveries and, through the policy above, to reminders."""

    def __init__(self, runtime: Runtime) -> None:
        s = runtime.settings
        self.runtime = runtime
        self.retry = RetryPolicy(s.retry_base_seconds, s.retry_max_seconds, s.max_attempts)

    def apply(self, session: Session, delivery: Delivery, report: Report, now: dt.datetime) -> str:
        """Record ``report`` on ``delivery`` (locked by the caller); returns what it came to."""
        prior = delivery.status
        moved = queries.advance_delivery(
            session,
            delivery,
            status=report.status,
            from_statuses=predecessors(report.status),
            source=report.source,
            now=now,
            provider_id=report.provider_id,
            **report.columns(),
        )
        if moved:
            self.runtime.metrics.delivery_status.labels(delivery.channel, report.status).inc()
        if report.status in FAILURES:
            return self._failed(session, delivery, prior, report, now) if moved else "ignored"
        settled = self._accepted(session, delivery, prior, now)
        return settled or ("applied" if moved else "ignored")

    def _latest(self, session: Session, delivery: Delivery) -> Reminder | None:
        """The delivery's reminder (locked), if this delivery is its latest attempt."""
        if queries.latest_delivery_id(session, delivery.reminder_id) != delivery.id:
            return None
        return session.get(
            Reminder, delivery.reminder_id, with_for_update=True, populate_existing=True
        )

    def _accepted(
        self, session: Session, delivery: Delivery, prior: str, now: dt.datetime
    ) -> str | None:
        reminder = self._latest(session, delivery)
        status = reminder.status if reminder else None
        if reminder is None or not (
            status == RS.IN_DOUBT
            or (status == RS.CLAIMED and prior == DS.SENDING)
            or (status == RS.PENDING and prior == DS.ABANDONED)
        ):
            return None
        queries.confirm_sent(
            session, reminder.id, from_statuses=[reminder.status], channel=delivery.channel, now=now
        )
        if status != RS.CLAIMED:  # a live dispatcher counts its own sends
            self.runtime.metrics.sent.labels(delivery.channel).inc()
        log.info("reminder_confirmed", reminder_id=reminder.id, delivery_id=delivery.id, was=status)
        return "settled_sent"

    def _failed(
        self, session: Session, delivery: Delivery, prior: str, report: Report, now: dt.datetime
    ) -> str:
        kind = report.kind or EK.PERMANENT
        self.runtime.metrics.provider_errors.labels(delivery.channel, kind, report.code or "").inc()
        log.warning(
            "late_failure",
            delivery_id=delivery.id,
            channel=delivery.channel,
            status=report.status,
            kind=kind,
            code=report.code,
        )
        reminder = self._latest(session, delivery)
        if kind == EK.OPTED_OUT:
            self._opt_out(session, delivery, report, now)
        if reminder is None or not (
            reminder.status in (RS.SENT, RS.IN_DOUBT)
            or (reminder.status == RS.CLAIMED and prior == DS.SENDING)
        ):
            return "applied"
        return self._next_step(session, reminder, delivery, report, now)

    def _next_step(
        self,
        session: Session,
        reminder: Reminder,
        delivery: Delivery,
        report: Report,
        now: dt.datetime,
    ) -> str:
        error = report.detail or f"{report.source} {report.status} {report.code or ''}".strip()
        if now >= reminder.expires_at:
            return self._too_late(session, reminder, error)
        if report.kind == EK.TRANSIENT:
            return self._retry(session, reminder, delivery, error, now)
        queries.reopen(
            session,
            reminder.id,
            from_statuses=[reminder.status],
            at=now,
            count_attempt=False,
            error=error,
        )
        log.info("reminder_reopened", reminder_id=reminder.id, delivery_id=delivery.id)
        return "fallback"

    def _too_late(self, session: Session, reminder: Reminder, error: str) -> str:
        """It no longer makes sense to try again: a sent reminder stays sent (the provider did
        accept it; its delivery shows the failure); an unsettled one expires."""
        if reminder.status == RS.SENT:
            queries.conclude(
                session,
                reminder.id,
                from_statuses=[RS.SENT],
                status=RS.SENT,
                reason=None,
                error=error,
            )
            return "too_late"
        return self._end(session, reminder, RS.EXPIRED, "stale", error, "")

    def _retry(
        self,
        session: Session,
        reminder: Reminder,
        delivery: Delivery,
        error: str,
        now: dt.datetime,
    ) -> str:
        attempts = reminder.attempts + 1
        if self.retry.exhausted(attempts):
            return self._end(session, reminder, RS.FAILED, "max_attempts", error, delivery.channel)
        zone = ZoneInfo(session.get_one(Patient, reminder.patient_id).timezone)
        at = now + dt.timedelta(seconds=self.retry.delay(attempts))
        at = self.runtime.timing.send_window.next_allowed(at, zone)
        if at >= reminder.expires_at:
            return self._end(session, reminder, RS.EXPIRED, "retry_past_expiry", error, "")
        queries.reopen(
            session,
            reminder.id,
            from_statuses=[reminder.status],
            at=at,
            count_attempt=True,
            error=error,
        )
        self.runtime.metrics.retried.labels(delivery.channel).inc()
        return "retry"

    def _end(
        self,
        session: Session,
        reminder: Reminder,
        status: RS,
        reason: str,
        error: str,
        channel: str,
    ) -> str:
        queries.conclude(
            session,
            reminder.id,
            from_statuses=[reminder.status],
            status=status,
            reason=reason,
            error=error,
        )
        m = self.runtime.metrics
        if status == RS.EXPIRED:
            m.expired.labels(reason).inc()
        else:
            m.failed.labels(channel, reason).inc()
        log.info("reminder_finished", reminder_id=reminder.id, status=status, reason=reason)
        return str(status)

    def _opt_out(
        self, session: Session, delivery: Delivery, report: Report, now: dt.datetime
    ) -> None:
        reminder = session.get_one(Reminder, delivery.reminder_id)
        patient = session.get_one(Patient, reminder.patient_id)
        reason = f"{report.source} reports an opt-out ({report.code or report.status})"
        if consents.opt_out(
            session, patient, delivery.channel, source=report.source, now=now, reason=reason
        ):
            self.runtime.metrics.opt_outs.labels(delivery.channel, report.source, "out").inc()
