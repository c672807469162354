"""What send attempts came to: the delivery rows, the reminders' next states, metrics and logs.

Outcomes are recorded with group commit: the worker threads only call the provider and queue
what happened (:class:`Done`); the dispatcher writes every queued outcome in one transaction
(:meth:`Outcomes.record`, ``executemany``), together with the attempts it starts next. What
needs no database (a rate-limit hold, a channel pause, the ``send_failed`` line) happens on the
worker at once.

Every change to a reminder checks that this dispatcher still holds its claim (``held``: the
reminders locked at the start of the transaction or, on PostgreSQL, by the step's one
statement, which marks sent and starts attempts only for those); when the claim was lost to
the in-doubt rule (a lease that ran out, or a shutdown while the call was in flight), the
answer settles the in-doubt reminder instead, so a message the provider accepted is never
sent again. A call that timed out after the request went out (``ErrorKind.IN_DOUBT``)
leaves the same state on purpose: the delivery and the reminder ``in_doubt``, due again after
the grace period, unclaimed.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update
from sqlalchemy.orm import Session

from reminders import consents, deliveries, queries
from reminders.channels import ChannelError, ErrorKind, OutboundMessage, Receipt, Sender
from reminders.db import after_commit
from reminders.logs import get_logger, mask_address
from reminders.models import Delivery, DeliveryStatus, Patient, Reminder, ReminderStatus
from reminders.ratelimit import Limiter
from reminders.retry import RetryPolicy
from reminders.runtime import Runtime

log = get_logger(__name__)
RS = ReminderStatus
SHUTDOWN_MESSAGE = "not sent: the dispatcher was stopping"
TOO_LATE = "too_late"  # the error code of a call not made: its turn came after ``send_by``


class ChannelPauses:
    """Channels paused after a misconfiguration error, so one bad key is not a retry storm.
    ``on_change(channel, paused)`` hears when a pause starts and when it is found over."""

    def __init__(
        self, seconds: float = 300.0, on_change: Callable[[str, bool], None] | None = None
    ) -> None:
        self.seconds = seconds
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._on_change = on_change

    def pause(self, channel: str) -> None:
        with self._lock:
            self._until[channel] = time.monotonic() + self.seconds
        if self._on_change is not None:
            self._on_change(channel, True)

    def paused(self, channel: str) -> bool:
        with self._lock:
            until = self._until.get(channel)
            if until is None:
                return False
            if until > time.monotonic():
                return True
            del self._until[channel]
        if self._on_change is not None:
            self._on_change(channel, False)
        return False


@dataclass(frozen=True)
class Attempt:
    """A delivery row written as ``sending`` and the message it is about to send, with what
    recording its outcome needs about the reminder (as claimed)."""

    delivery_id: int
    message: OutboundMessage
    sender: Sender
    due_at: dt.datetime
    expires_at: dt.datetime
    attempts: int  # the reminder's failed attempts before this one
    zone: str  # the patient's time zone (send windows are local to the patient)
    patient_id: int
    now: dt.datetime  # the dispatch pass's moment, at which the outcome is recorded
    send_by: dt.datetime  # not to reach the patient after (the window's end, the expiry)
    since: float  # time.monotonic() at ``now``: the pass's clock moves on from there

    def seconds_left(self) -> float:
        """Until ``send_by`` on the pass's clock: ``now`` moved on by the time since."""
        elapsed = time.monotonic() - self.since
        return (self.send_by - self.now).total_seconds() - elapsed


@dataclass
class Done:
    """A finished attempt: accepted (``receipt``), refused (``error``), never sent (neither:
    the dispatcher was stopping) or ``crashed`` (an unexpected error: left to the lease).
    ``outcome`` is set once it is recorded."""

    attempt: Attempt
    receipt: Receipt | None = None
    error: ChannelError | None = None
    crashed: bool = False
    outcome: str | None = None


@dataclass
class Recording:
    """What recording a group of outcomes writes: :func:`reminders.deliveries.finish_many`
    rows, the reminders sent by (channel, moment) (marked sent only where the claim is still
    held), the sends accepted (where the claim was lost, the in-doubt reminder is settled as
    sent instead), and the rarer outcomes, one at a time once the claims are known
    (:meth:`follow_up`)."""

    finished: list[dict[str, Any]] = field(default_factory=list)
    sent: dict[tuple[str, dt.datetime], list[int]] = field(default_factory=dict)
    accepted: list[Done] = field(default_factory=list)
    later: list[tuple[Done, Callable[[bool], str]]] = field(default_factory=list)

    def follow_up(self, held: Collection[int]) -> None:
        """The rarer outcomes, after the bulk writes, with ``held`` the reminders still
        claimed (and locked); each sets its ``outcome``."""
        for d, follow_up in self.later:
            outcome = follow_up(d.attempt.message.reminder_id in held)
            if d.outcome is None:
                d.outcome = outcome


class Outcomes:
    """Records outcomes for one dispatcher (``owner``)."""

    def __init__(
        self,
        runtime: Runtime,
        owner: str,
        retry: RetryPolicy,
        pauses: ChannelPauses,
        limiters: dict[str, Limiter],
    ) -> None:
        self.runtime, self.owner, self.retry = runtime, owner, retry
        self.pauses, self.limiters = pauses, limiters

    # --- ends ---------------------------------------------------------------------------------

    def end(
        self, session: Session, ids: Collection[int], status: RS, reason: str, channel: str = ""
    ) -> str:
        """End claimed reminders as failed, expired or cancelled, with one reason. The metric
        and the log lines follow the commit."""
        deliveries.end(session, ids, self.owner, status=status, reason=reason)
        after_commit(session, partial(self._ended, list(ids), status, reason, channel))
        return str(status)

    def _ended(self, ids: list[int], status: RS, reason: str, channel: str) -> None:
        m = self.runtime.metrics
        if status == RS.EXPIRED:
            m.expired.labels(reason).inc(len(ids))
        elif status == RS.CANCELLED:
            m.cancelled.labels(reason).inc(len(ids))
        else:
            m.failed.labels(channel, reason).inc(len(ids))
        for reminder_id in ids:
            log.info("reminder_finished", reminder_id=reminder_id, status=status, reason=reason)

    # --- on the worker, right after the call --------------------------------------------------

    def refused(self, attempt: Attempt, exc: ChannelError) -> None:
        """What a refusal changes at once, before it is recorded: the metric and log line, a
        rate-limit hold, a channel pause."""
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
        if exc.kind == ErrorKind.TRANSIENT and exc.retry_after:
            self.limiters[channel].hold_until(time.monotonic() + exc.retry_after)
        if exc.kind == ErrorKind.MISCONFIGURED:
            self.pauses.pause(channel)
            log.error("channel_paused", channel=channel, code=exc.code, seconds=self.pauses.seconds)

    # --- recording, many at a time ------------------------------------------------------------

    def record(
        self, session: Session, done: list[Done], held: set[int], events: list[dict[str, Any]]
    ) -> None:
        """Write what ``done`` came to; ``held``: the reminders still claimed (and locked).
        Sets each one's ``outcome``; adds the delivery events to ``events``."""
        recording = self.plan(session, done)
        self.write(session, recording, held, events)
        recording.follow_up(held)

    def write(
        self,
        session: Session,
        recording: Recording,
        held: Collection[int],
        events: list[dict[str, Any]],
    ) -> None:
        """The bulk writes of ``recording`` (the deliveries' rows, the reminders sent) in a
        statement each, and the accepted sends whose claim was lost settled (``held``: the
        reminders still claimed); adds the delivery events to ``events``."""
        deliveries.finish_many(session, recording.finished)
        events.extend(
            {
                "delivery_id": row["d_id"],
                "status": row["d_status"],
                "source": "dispatch",
                "occurred_at": row["d_now"],
                "error_code": row["d_error_code"],
            }
            for row in recording.finished
        )
        for (channel, now), ids in recording.sent.items():
            deliveries.mark_sent(session, ids, self.owner, channel=channel, now=now)
        for d in recording.accepted:
            if d.attempt.message.reminder_id not in held:
                self._settle(session, d.attempt, accepted=True)

    def plan(self, session: Session, done: list[Done]) -> Recording:
        """What recording ``done`` writes: the deliveries' rows and the reminders sent, for the
        caller to write in bulk, then the rest (:meth:`Recording.follow_up`), which depends on
        whether each claim is still held."""
        recording = Recording()
        rows, sent, later = recording.finished, recording.sent, recording.later
        for d in done:
            a, reminder_id = d.attempt, d.attempt.message.reminder_id
            if d.receipt is not None:
                r = d.receipt
                rows.append(_row(a, r.status, provider_id=r.provider_id, details=r.details or None))
                d.outcome = "sent"
                sent.setdefault((a.message.channel, a.now), []).append(reminder_id)
                recording.accepted.append(d)
            elif d.error is None:
                error = SHUTDOWN_MESSAGE
                rows.append(_row(a, DeliveryStatus.FAILED, error_code="shutdown", error=error))
                later.append((d, partial(self._released, session, a)))
            else:
                exc = d.error
                code = exc.code or exc.kind
                if exc.kind == ErrorKind.IN_DOUBT:
                    rows.append(_row(a, DeliveryStatus.IN_DOUBT, error_code=code, error=str(exc)))
                    later.append((d, partial(self._in_doubt, session, a, exc)))
                    continue
                if exc.code == TOO_LATE:
                    rows.append(_row(a, DeliveryStatus.FAILED, error_code=code, error=str(exc)))
                    later.append((d, partial(self._too_late, session, a, exc)))
                    continue
                permanent = exc.kind in (ErrorKind.PERMANENT, ErrorKind.OPTED_OUT)
                row = _row(
                    a, DeliveryStatus.FAILED, error_code=code, error=str(exc), perm=permanent
                )
                rows.append(row)
                later.append((d, partial(self._refusal, session, a, exc)))
        return recording

    def report(self, done: list[Done]) -> None:
        """Metrics and log lines of recorded sends (after the commit)."""
        m, now = self.runtime.metrics, self.runtime.clock()
        for d in done:
            if d.outcome != "sent":
                continue
            msg, channel = d.attempt.message, d.attempt.message.channel
            m.sent.labels(channel).inc()
            m.latency.labels(channel).observe(max((now - d.attempt.due_at).total_seconds(), 0))
            log.info(
                "reminder_sent",
                reminder_id=msg.reminder_id,
                delivery_id=d.attempt.delivery_id,
                channel=channel,
                to=mask_address(channel, msg.to),
            )

    # --- one reminder at a time: the rarer outcomes --------------------------------------------

    def settled(self, recording: Recording, reminder_ids: Collection[int]) -> None:
        """The log lines of accepted sends whose in-doubt reminders the step's one statement
        settled (PostgreSQL), once that is committed."""
        for d in recording.accepted:
            if d.attempt.message.reminder_id in reminder_ids:
                self._settled_line(d.attempt, accepted=True)

    def _released(self, session: Session, a: Attempt, mine: bool) -> str:
        """Stopping before the provider call: the attempt never left, give the claim back."""
        reminder_id = a.message.reminder_id
        if not (mine and deliveries.put_back(session, [reminder_id], self.owner, at=a.now)):
            self._settle(session, a, accepted=False)
        return "released"

    def _in_doubt(self, session: Session, a: Attempt, exc: ChannelError, mine: bool) -> str:
        """No answer to a request that went out: neither retried nor failed over (the provider
        may have it), but left to the in-doubt rule, exactly as a crash mid-call would be."""
        if mine:
            grace = dt.timedelta(seconds=self.runtime.settings.in_doubt_grace_seconds)
            session.execute(
                update(Reminder)
                .where(Reminder.id == a.message.reminder_id)
                .values(
                    status=RS.IN_DOUBT,
                    next_attempt_at=a.now + grace,
                    last_error=str(exc)[:500],
                    claimed_by=None,
                    lease_until=None,
                )
                .execution_options(synchronize_session=False)
            )
        return "in_doubt"

    def _too_late(self, session: Session, a: Attempt, exc: ChannelError, mine: bool) -> str:
        """Not sent because its turn came after the send window closed (or the reminder
        expired): no attempt is counted (the provider was never asked); it waits for the next
        window, or expires."""
        if not mine:
            self._settle(session, a, accepted=False)
            return "settled"
        reminder_id = a.message.reminder_id
        at = self.runtime.timing.send_window.next_allowed(a.send_by, ZoneInfo(a.zone))
        if at >= a.expires_at:
            reason = "stale" if a.send_by >= a.expires_at else "send_window"
            return self.end(session, [reminder_id], RS.EXPIRED, reason)
        queries.reschedule(
            session, reminder_id, self.owner, at=at, count_attempt=False, error=str(exc)
        )
        return "waiting_for_send_window"

    def _refusal(self, session: Session, a: Attempt, exc: ChannelError, mine: bool) -> str:
        """Retry a transient failure later; otherwise ``fallback`` to the next channel."""
        if exc.kind == ErrorKind.TRANSIENT:
            return self._retry_later(session, a, exc, mine)
        if exc.kind == ErrorKind.OPTED_OUT:
            patient = session.get_one(Patient, a.patient_id)
            consents.opt_out(
                session,
                patient,
                a.message.channel,
                source="provider",
                now=a.now,
                reason="provider reports opt-out",
            )
        if not mine:
            self._settle(session, a, accepted=False)
            return "settled"
        return "fallback"

    def _retry_later(self, session: Session, a: Attempt, exc: ChannelError, mine: bool) -> str:
        if not mine:
            self._settle(session, a, accepted=False)
            return "settled"
        reminder_id, channel = a.message.reminder_id, a.message.channel
        attempts = a.attempts + 1
        if self.retry.exhausted(attempts):
            return self.end(session, [reminder_id], RS.FAILED, "max_attempts")
        at = a.now + dt.timedelta(seconds=self.retry.delay(attempts, exc.retry_after))
        at = self.runtime.timing.send_window.next_allowed(at, ZoneInfo(a.zone))
        if at >= a.expires_at:
            return self.end(session, [reminder_id], RS.EXPIRED, "retry_past_expiry")
        queries.reschedule(
            session, reminder_id, self.owner, at=at, count_attempt=True, error=str(exc)
        )
        after_commit(session, self.runtime.metrics.retried.labels(channel).inc)
        return "retry"

    def _settle(self, session: Session, a: Attempt, *, accepted: bool) -> None:
        delivery = session.get_one(Delivery, a.delivery_id)
        queries.settle_in_doubt(session, delivery, accepted=accepted, now=a.now)
        after_commit(session, partial(self._settled_line, a, accepted=accepted))

    def _settled_line(self, a: Attempt, *, accepted: bool) -> None:
        log.warning("claim_lost_settled", delivery_id=a.delivery_id, accepted=accepted)


def _row(
    a: Attempt,
    status: str,
    *,
    provider_id: str | None = None,
    details: dict[str, Any] | None = None,
    error_code: str | None = None,
    error: str | None = None,
    perm: bool = False,
) -> dict[str, Any]:
    """One delivery's update for :func:`reminders.deliveries.finish_many`."""
    return {
        "d_id": a.delivery_id,
        "d_status": status,
        "d_permanent": perm,
        "d_now": a.now,
        "d_provider_id": provider_id,
        "d_error_code": error_code,
        "d_error_message": error[:500] if error else None,
        "d_details": details,
    }
