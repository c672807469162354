"""What a send attempt came to: the delivery row, the reminder's next state, metrics and logs.

Each outcome is one short transaction after the provider call. Every change to the reminder
checks that this dispatcher still holds its claim; when the claim was lost to the in-doubt rule
(a lease that ran out, or a shutdown while the call was in flight), the answer settles the
in-doubt reminder instead, so a message the provider accepted is never sent again. A call that
timed out after the request went out (``ErrorKind.IN_DOUBT``) leaves the same state on purpose:
the delivery and the reminder ``in_doubt``, due again after the grace period, unclaimed.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from reminders import consents, queries
from reminders.channels import ChannelError, ErrorKind, OutboundMessage, Receipt, Sender
from reminders.logs import get_logger, mask_address
from reminders.models import Delivery, DeliveryStatus, Reminder, ReminderStatus, Treatment
from reminders.ratelimit import RateLimiter
from reminders.retry import RetryPolicy
from reminders.runtime import Runtime

log = get_logger(__name__)
RS = ReminderStatus


class ChannelPauses:
    """Channels paused after a misconfiguration error, so one bad key is not a retry storm."""

    def __init__(self, seconds: float = 300.0) -> None:
        self.seconds = seconds
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def pause(self, channel: str) -> None:
        with self._lock:
            self._until[channel] = time.monotonic() + self.seconds

    def paused(self, channel: str) -> bool:
        with self._lock:
            return self._until.get(channel, 0.0) > time.monotonic()


@dataclass(frozen=True)
class Attempt:
    """A delivery row written as ``sending`` and the message it is about to send."""

    delivery_id: int
    message: OutboundMessage
    sender: Sender
    due_at: dt.datetime


class Outcomes:
    """Records outcomes for one dispatcher (``owner``)."""

    def __init__(
        self,
        runtime: Runtime,
        owner: str,
        retry: RetryPolicy,
        pauses: ChannelPauses,
        limiters: dict[str, RateLimiter],
    ) -> None:
        self.runtime, self.owner, self.retry = runtime, owner, retry
        self.pauses, self.limiters = pauses, limiters

    def finish(self, session: Session, reminder: Reminder, status: RS, reason: str) -> str:
        """End a claimed reminder as failed, expired or cancelled."""
        queries.finish(session, reminder.id, self.owner, status=status, reason=reason)
        m = self.runtime.metrics
        if status == RS.EXPIRED:
            m.expired.labels(reason).inc()
        elif status == RS.CANCELLED:
            m.cancelled.labels(reason).inc()
        else:
            m.failed.labels(reminder.channel or "", reason).inc()
        log.info("reminder_finished", reminder_id=reminder.id, status=status, reason=reason)
        return str(status)

    def accepted(self, attempt: Attempt, receipt: Receipt, now: dt.datetime) -> str:
        msg = attempt.message
        with self.runtime.sessions() as session, session.begin():
            queries.finish_delivery(
                session,
                attempt.delivery_id,
                status=receipt.status,
                now=now,
                provider_id=receipt.provider_id,
                details=receipt.details or None,
            )
            if not queries.mark_sent(
                session, msg.reminder_id, self.owner, channel=msg.channel, now=now
            ):
                self._settle(session, attempt.delivery_id, accepted=True, now=now)
        m = self.runtime.metrics
        m.sent.labels(msg.channel).inc()
        waited = (self.runtime.clock() - attempt.due_at).total_seconds()
        m.latency.labels(msg.channel).observe(max(waited, 0))
        log.info(
            "reminder_sent",
            reminder_id=msg.reminder_id,
            delivery_id=attempt.delivery_id,
            channel=msg.channel,
            to=mask_address(msg.channel, msg.to),
        )
        return "sent"

    def failed(self, attempt: Attempt, exc: ChannelError, now: dt.datetime) -> str:
        """Retry a transient failure later; otherwise ``fallback`` to the next channel."""
        msg, channel = attempt.message, attempt.message.channel
        self.runtime.metrics.provider_errors.labels(channel, exc.kind, exc.code or "").inc()
        log.warning(
            "send_failed",
            reminder_id=msg.reminder_id,
            delivery_id=attempt.delivery_id,
            channel=channel,
            kind=exc.kind,
            code=exc.code,
        )
        if exc.kind == ErrorKind.IN_DOUBT:
            return self._in_doubt(attempt, exc, now)
        permanent = exc.kind in (ErrorKind.PERMANENT, ErrorKind.OPTED_OUT)
        with self.runtime.sessions() as session, session.begin():
            queries.finish_delivery(
                session,
                attempt.delivery_id,
                status=DeliveryStatus.FAILED,
                now=now,
                error_code=exc.code or exc.kind,
                error_message=str(exc),
                permanent=permanent,
            )
            if exc.kind == ErrorKind.TRANSIENT:
                return self._retry_later(session, attempt, exc, now)
            if exc.kind == ErrorKind.OPTED_OUT:
                self._record_opt_out(session, msg.reminder_id, channel, now)
            if exc.kind == ErrorKind.MISCONFIGURED:
                self._pause(channel, exc)
            if not self._still_claimed(session, msg.reminder_id):
                self._settle(session, attempt.delivery_id, accepted=False, now=now)
                return "settled"
        return "fallback"

    def not_sent(self, attempt: Attempt, now: dt.datetime) -> str:
        """Shutting down before the provider call: the attempt never left, give the claim back."""
        with self.runtime.sessions() as session, session.begin():
            queries.finish_delivery(
                session,
                attempt.delivery_id,
                status=DeliveryStatus.FAILED,
                now=now,
                error_code="shutdown",
                error_message="not sent: the dispatcher was stopping",
            )
            reminder_id = attempt.message.reminder_id
            if not queries.reschedule(
                session, reminder_id, self.owner, at=now, count_attempt=False
            ):
                self._settle(session, attempt.delivery_id, accepted=False, now=now)
        return "released"

    def _in_doubt(self, attempt: Attempt, exc: ChannelError, now: dt.datetime) -> str:
        """No answer to a request that went out: neither retried nor failed over (the provider
        may have it), but left to the in-doubt rule, exactly as a crash mid-call would be."""
        grace = dt.timedelta(seconds=self.runtime.settings.in_doubt_grace_seconds)
        reminder_id, error = attempt.message.reminder_id, str(exc)
        with self.runtime.sessions() as session, session.begin():
            queries.finish_delivery(
                session,
                attempt.delivery_id,
                status=DeliveryStatus.IN_DOUBT,
                now=now,
                error_code=exc.code or exc.kind,
                error_message=error,
            )
            # Two statements, one transaction: nobody can claim it between them.
            if queries.reschedule(
                session, reminder_id, self.owner, at=now + grace, count_attempt=False, error=error
            ):
                queries.conclude(
                    session,
                    reminder_id,
                    from_statuses=[RS.PENDING],
                    status=RS.IN_DOUBT,
                    reason=None,
                    error=error,
                )
        return "in_doubt"

    def _retry_later(
        self, session: Session, attempt: Attempt, exc: ChannelError, now: dt.datetime
    ) -> str:
        msg = attempt.message
        reminder = session.get_one(Reminder, msg.reminder_id)
        if exc.retry_after:
            self.limiters[msg.channel].hold_until(time.monotonic() + exc.retry_after)
        if not self._still_claimed(session, reminder.id):
            self._settle(session, attempt.delivery_id, accepted=False, now=now)
            return "settled"
        attempts = reminder.attempts + 1
        if self.retry.exhausted(attempts):
            return self.finish(session, reminder, RS.FAILED, "max_attempts")
        at = now + dt.timedelta(seconds=self.retry.delay(attempts, exc.retry_after))
        at = self.runtime.timing.send_window.next_allowed(at, ZoneInfo(zone_of(session, reminder)))
        if at >= reminder.expires_at:
            return self.finish(session, reminder, RS.EXPIRED, "retry_past_expiry")
        queries.reschedule(
            session, reminder.id, self.owner, at=at, count_attempt=True, error=str(exc)
        )
        self.runtime.metrics.retried.labels(msg.channel).inc()
        return "retry"

    def _pause(self, channel: str, exc: ChannelError) -> None:
        self.pauses.pause(channel)
        self.runtime.metrics.channel_paused.labels(channel).set(1)
        log.error("channel_paused", channel=channel, code=exc.code, seconds=self.pauses.seconds)

    def _record_opt_out(
        self, session: Session, reminder_id: int, channel: str, now: dt.datetime
    ) -> None:
        reminder = session.get_one(Reminder, reminder_id)
        patient = session.get_one(Treatment, reminder.treatment_id).patient
        consents.opt_out(
            session, patient, channel, source="provider", now=now, reason="provider reports opt-out"
        )

    def _still_claimed(self, session: Session, reminder_id: int) -> bool:
        reminder = session.get_one(Reminder, reminder_id, populate_existing=True)
        return reminder.status == RS.CLAIMED and reminder.claimed_by == self.owner

    def _settle(
        self, session: Session, delivery_id: int, *, accepted: bool, now: dt.datetime
    ) -> None:
        delivery = session.get_one(Delivery, delivery_id)
        queries.settle_in_doubt(session, delivery, accepted=accepted, now=now)
        log.warning("claim_lost_settled", delivery_id=delivery_id, accepted=accepted)


def zone_of(session: Session, reminder: Reminder) -> str:
    """The patient's time zone (send windows are local to the patient)."""
    return session.get_one(Treatment, reminder.treatment_id).patient.timezone
