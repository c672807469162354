"""Dispatch: claim due reminders, pick a channel, render, send, record.

The claim is one short transaction. Each reminder is then handled on a worker thread: a
transaction writes the delivery row (``sending``) and commits, the provider is called with no
transaction open, and a second transaction records the answer. A permanent failure falls back
to the patient's next channel within the same claim.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from reminders import consents, queries, template_store
from reminders.channels import ChannelError, ErrorKind, OutboundMessage, Receipt, Sender
from reminders.logs import get_logger, mask_address
from reminders.models import Channel, Reminder, ReminderStatus, Treatment
from reminders.planning import usable_channels
from reminders.ratelimit import RateLimiter
from reminders.retry import RetryPolicy
from reminders.runtime import Runtime
from reminders.templating import TemplateError, render

log = get_logger(__name__)
RS = ReminderStatus
NO_CHANNEL_RETRY = dt.timedelta(minutes=15)


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
    delivery_id: int
    message: OutboundMessage
    sender: Sender
    due_at: dt.datetime


class Dispatcher:
    """Sends what is due. One per process; ``owner`` names it in claims."""

    def __init__(self, runtime: Runtime, owner: str, retry: RetryPolicy | None = None) -> None:
        s = runtime.settings
        self.runtime, self.owner = runtime, owner
        self.retry = retry or RetryPolicy(s.retry_base_seconds, s.retry_max_seconds, s.max_attempts)
        self.pauses = ChannelPauses()
        rates = {"email": s.email_rate, "sms": s.sms_rate, "whatsapp": s.whatsapp_rate}
        self.limiters = {c: RateLimiter(rates.get(c, 10.0)) for c in runtime.senders}
        self.stopping = threading.Event()
        self._pool = ThreadPoolExecutor(s.dispatch_concurrency, thread_name_prefix="dispatch")

    def close(self) -> None:
        self.stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self.runtime.sessions() as session, session.begin():
            queries.release(session, self.owner)

    def run_once(self, *, now: dt.datetime) -> Counter[str]:
        """Claim batches until nothing is due (or stopping); returns outcome counts."""
        outcomes: Counter[str] = Counter()
        s = self.runtime.settings
        while not self.stopping.is_set():
            with self.runtime.sessions() as session, session.begin():
                ids = queries.claim_due(
                    session,
                    self.owner,
                    now=now,
                    limit=s.dispatch_batch_size,
                    lease=dt.timedelta(seconds=s.lease_seconds),
                )
            if not ids:
                break
            for outcome in self._pool.map(lambda i: self.process(i, now=now), ids):
                outcomes[outcome] += 1
            if len(ids) < s.dispatch_batch_size:
                break
        return outcomes

    def process(self, reminder_id: int, *, now: dt.datetime) -> str:
        """Handle one claimed reminder to its next state; returns what happened."""
        if self.stopping.is_set():
            return self._give_back(reminder_id)
        try:
            for _ in range(len(Channel) + 1):
                with self.runtime.sessions() as session, session.begin():
                    step = self._prepare(session, reminder_id, now)
                if isinstance(step, str):
                    return step
                outcome = self._send(step, now)
                if outcome != "fallback":
                    return outcome
            return "fallback_loop"
        except Exception:
            log.exception("dispatch_error", reminder_id=reminder_id)
            return "error"  # the lease runs out and housekeeping recovers it

    def _give_back(self, reminder_id: int) -> str:
        with self.runtime.sessions() as session, session.begin():
            queries.reschedule(
                session, reminder_id, self.owner, at=self.runtime.clock(), count_attempt=False
            )
        return "released"

    def _prepare(self, session: Session, reminder_id: int, now: dt.datetime) -> Attempt | str:
        reminder = session.get(Reminder, reminder_id)
        if reminder is None or reminder.status != RS.CLAIMED or reminder.claimed_by != self.owner:
            return "lost_claim"
        treatment = session.get_one(Treatment, reminder.treatment_id)
        patient = treatment.patient
        end = self._end_if_moot(session, reminder, now)
        if end:
            return end
        if not patient.active:
            return self._finish(session, reminder, RS.CANCELLED, "inactive")
        failed = queries.failed_channels(session, reminder.id)
        candidates = [c for c in usable_channels(patient) if c not in failed]
        if not candidates:
            if failed:
                return self._finish(session, reminder, RS.FAILED, "all_channels_failed")
            return self._finish(session, reminder, RS.CANCELLED, "no_channel")
        ready = [c for c in candidates if c in self.runtime.senders and not self.pauses.paused(c)]
        if not ready:
            at = now + NO_CHANNEL_RETRY
            if at >= reminder.expires_at:
                return self._finish(session, reminder, RS.EXPIRED, "no_channel_available")
            queries.reschedule(
                session,
                reminder.id,
                self.owner,
                at=at,
                count_attempt=False,
                error="no configured channel is available",
            )
            return "waiting_for_channel"
        return self._attempt(session, reminder, treatment, ready[0], now)

    def _end_if_moot(self, session: Session, reminder: Reminder, now: dt.datetime) -> str | None:
        """Expire a stale reminder; hold one that is outside the patient's send window."""
        if now >= reminder.expires_at:
            return self._finish(session, reminder, RS.EXPIRED, "stale")
        zone = ZoneInfo(_zone(session, reminder))
        allowed = self.runtime.timing.send_window.next_allowed(now, zone)
        if allowed <= now:
            return None
        if allowed >= reminder.expires_at:
            return self._finish(session, reminder, RS.EXPIRED, "send_window")
        queries.reschedule(session, reminder.id, self.owner, at=allowed, count_attempt=False)
        return "waiting_for_send_window"

    def _attempt(
        self,
        session: Session,
        reminder: Reminder,
        treatment: Treatment,
        channel: Channel,
        now: dt.datetime,
    ) -> Attempt | str:
        patient = treatment.patient
        address = patient.address(channel) or ""
        protocol = self.runtime.protocols.get(treatment.protocol)
        settings = self.runtime.settings
        spec = (
            template_store.find(
                session,
                self.runtime.templates,
                reminder.step,
                channel,
                patient.language,
                settings.default_language,
            )
            if protocol
            else None
        )
        delivery = queries.start_delivery(
            session, reminder.id, channel=channel, address=address, now=now
        )
        try:
            if spec is None or protocol is None:
                raise TemplateError("template", f"no {channel} template for step {reminder.step}")
            ctx = template_store.context(patient, treatment, protocol, reminder.step, settings)
            content = render(spec, {**ctx, "language": spec.language})  # dates match the text
            if channel == Channel.WHATSAPP and not content.content_sid:
                raise TemplateError("content_sid", "no approved WhatsApp ContentSid")
        except TemplateError as exc:
            log.error("template_failed", reminder_id=reminder.id, channel=channel, error=str(exc))
            queries.finish_delivery(
                session,
                delivery.id,
                status="failed",
                now=now,
                error_code="template",
                error_message=str(exc),
                permanent=True,
            )
            return "template_failed"
        message = OutboundMessage(channel, address, content, delivery.public_id, reminder.id)
        return Attempt(delivery.id, message, self.runtime.senders[channel], reminder.due_at)

    def _send(self, attempt: Attempt, now: dt.datetime) -> str:
        channel = attempt.message.channel
        self.limiters[channel].acquire()
        try:
            receipt = attempt.sender.send(attempt.message)
        except ChannelError as exc:
            return self._failed(attempt, exc, now)
        return self._accepted(attempt, receipt, now)

    def _accepted(self, attempt: Attempt, receipt: Receipt, now: dt.datetime) -> str:
        channel = attempt.message.channel
        with self.runtime.sessions() as session, session.begin():
            queries.finish_delivery(
                session,
                attempt.delivery_id,
                status=receipt.status,
                now=now,
                provider_id=receipt.provider_id,
                details=receipt.details or None,
            )
            queries.mark_sent(
                session, attempt.message.reminder_id, self.owner, channel=channel, now=now
            )
        m = self.runtime.metrics
        m.sent.labels(channel).inc()
        m.latency.labels(channel).observe(
            max((self.runtime.clock() - attempt.due_at).total_seconds(), 0)
        )
        log.info(
            "reminder_sent",
            reminder_id=attempt.message.reminder_id,
            delivery_id=attempt.delivery_id,
            channel=channel,
            to=mask_address(channel, attempt.message.to),
        )
        return "sent"

    def _failed(self, attempt: Attempt, exc: ChannelError, now: dt.datetime) -> str:
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
        permanent = exc.kind in (ErrorKind.PERMANENT, ErrorKind.OPTED_OUT)
        with self.runtime.sessions() as session, session.begin():
            queries.finish_delivery(
                session,
                attempt.delivery_id,
                status="failed",
                now=now,
                error_code=exc.code or exc.kind,
                error_message=str(exc),
                permanent=permanent,
            )
            if exc.kind == ErrorKind.TRANSIENT:
                return self._retry_later(session, msg, exc, now)
            if exc.kind == ErrorKind.OPTED_OUT:
                self._record_opt_out(session, msg.reminder_id, channel, now)
            if exc.kind == ErrorKind.MISCONFIGURED:
                self.pauses.pause(channel)
                self.runtime.metrics.channel_paused.labels(channel).set(1)
                log.error(
                    "channel_paused", channel=channel, code=exc.code, seconds=self.pauses.seconds
                )
        return "fallback"

    def _retry_later(
        self, session: Session, msg: OutboundMessage, exc: ChannelError, now: dt.datetime
    ) -> str:
        reminder = session.get_one(Reminder, msg.reminder_id)
        attempts = reminder.attempts + 1
        if exc.retry_after:
            self.limiters[msg.channel].hold_until(time.monotonic() + exc.retry_after)
        if self.retry.exhausted(attempts):
            self._finish(session, reminder, RS.FAILED, "max_attempts")
            return "failed"
        at = now + dt.timedelta(seconds=self.retry.delay(attempts, exc.retry_after))
        at = self.runtime.timing.send_window.next_allowed(at, ZoneInfo(_zone(session, reminder)))
        if at >= reminder.expires_at:
            self._finish(session, reminder, RS.EXPIRED, "retry_past_expiry")
            return "expired"
        queries.reschedule(
            session, reminder.id, self.owner, at=at, count_attempt=True, error=str(exc)
        )
        self.runtime.metrics.retried.labels(msg.channel).inc()
        return "retry"

    def _record_opt_out(
        self, session: Session, reminder_id: int, channel: str, now: dt.datetime
    ) -> None:
        reminder = session.get_one(Reminder, reminder_id)
        patient = session.get_one(Treatment, reminder.treatment_id).patient
        consents.opt_out(
            session, patient, channel, source="provider", now=now, reason="provider reports opt-out"
        )

    def _finish(self, session: Session, reminder: Reminder, status: RS, reason: str) -> str:
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


def _zone(session: Session, reminder: Reminder) -> str:
    return session.get_one(Treatment, reminder.treatment_id).patient.timezone
