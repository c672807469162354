"""Dispatch: claim due reminders, pick a channel, render, send.

The claim is one short transaction. Each reminder is then handled on a worker thread: a
transaction locks it, writes the delivery row (``sending``) and commits; the provider is called
with no transaction open; :mod:`reminders.outcomes` records the answer. A permanent failure (or a
template that does not render) falls back to the patient's next channel within the same claim; a
call that went out but got no answer (``in_doubt``) is neither retried nor failed over: it waits
for the provider's word or the grace period, like a send cut off by a crash.

Shutdown (:meth:`Dispatcher.close`) waits a bounded time for calls in flight, then gives every
claim back: unsent ones to ``pending``, ones still inside a provider call to ``in_doubt``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from functools import partial
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from reminders import queries, template_store
from reminders.channels import ChannelError, OutboundMessage, calendar
from reminders.logs import get_logger
from reminders.models import Channel, DeliveryStatus, Reminder, ReminderStatus, Treatment
from reminders.outcomes import Attempt, ChannelPauses, Outcomes, zone_of
from reminders.planning import usable_channels
from reminders.ratelimit import RateLimiter
from reminders.retry import RetryPolicy
from reminders.runtime import Runtime
from reminders.templating import Rendered, TemplateError, render
from reminders.workers import WorkerPool

log = get_logger(__name__)
RS = ReminderStatus
NO_CHANNEL_RETRY = dt.timedelta(minutes=15)
CLOSE_SECONDS = 5.0  # how long close() waits for provider calls in flight
TEMPLATE_FAILED = "template_failed"

__all__ = ["Attempt", "ChannelPauses", "Dispatcher"]


class Dispatcher:
    """Sends what is due. One per process; ``owner`` names it in claims."""

    def __init__(self, runtime: Runtime, owner: str, retry: RetryPolicy | None = None) -> None:
        s = runtime.settings
        self.runtime, self.owner = runtime, owner
        self.retry = retry or RetryPolicy(s.retry_base_seconds, s.retry_max_seconds, s.max_attempts)
        self.pauses = ChannelPauses()
        rates = {"email": s.email_rate, "sms": s.sms_rate, "whatsapp": s.whatsapp_rate}
        self.limiters = {c: RateLimiter(rates.get(c, 10.0)) for c in runtime.senders}
        self.outcomes = Outcomes(runtime, owner, self.retry, self.pauses, self.limiters)
        self.stopping = threading.Event()
        self._abandon = threading.Event()  # close() stopped waiting for calls in flight
        self._claiming = threading.Lock()  # no claim starts once close() has begun
        self._pool = WorkerPool(s.dispatch_concurrency, "dispatch")

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop claiming, wait up to ``timeout`` for sends in flight, give back every claim."""
        with self._claiming:
            self.stopping.set()
        if not self._pool.wait_idle(timeout):
            log.warning("shutdown_with_sends_in_flight", owner=self.owner)
        self._abandon.set()
        grace = dt.timedelta(seconds=self.runtime.settings.in_doubt_grace_seconds)
        with self.runtime.sessions() as session, session.begin():
            released, doubtful = queries.release(
                session, self.owner, now=self.runtime.clock(), grace=grace
            )
        self._pool.shutdown()
        if released or doubtful:
            log.info("claims_given_back", owner=self.owner, released=released, in_doubt=doubtful)

    def run_once(self, *, now: dt.datetime) -> Counter[str]:
        """Claim batches until nothing is due (or stopping); returns outcome counts. ``now`` is
        the start of the pass; later batches see it advanced by the time the pass has taken."""
        outcomes: Counter[str] = Counter()
        size, started, moment = self.runtime.settings.dispatch_batch_size, time.monotonic(), now
        while ids := self._claim(moment, size):
            outcomes.update(self._pool.map(partial(self._process_at, moment), ids, self._abandon))
            if len(ids) < size:
                break
            moment = now + dt.timedelta(seconds=time.monotonic() - started)
        return outcomes

    def _claim(self, now: dt.datetime, limit: int) -> list[int]:
        lease = dt.timedelta(seconds=self.runtime.settings.lease_seconds)
        with self._claiming:
            if self.stopping.is_set():
                return []
            with self.runtime.sessions() as session, session.begin():
                return queries.claim_due(session, self.owner, now=now, limit=limit, lease=lease)

    def _process_at(self, now: dt.datetime, reminder_id: int) -> str:
        return self.process(reminder_id, now=now)

    def process(self, reminder_id: int, *, now: dt.datetime) -> str:
        """Handle one claimed reminder to its next state; returns what happened."""
        if self.stopping.is_set():
            return self._give_back(reminder_id, now)
        try:
            for _ in range(len(Channel) + 1):
                with self.runtime.sessions() as session, session.begin():
                    step = self._prepare(session, reminder_id, now)
                if step == TEMPLATE_FAILED:
                    continue  # that channel is marked failed: the next one is tried
                if isinstance(step, str):
                    return step
                outcome = self._send(step, now)
                if outcome != "fallback":
                    return outcome
            return "fallback_loop"
        except Exception:
            log.exception("dispatch_error", reminder_id=reminder_id)
            return "error"  # the lease runs out and housekeeping recovers it

    def _give_back(self, reminder_id: int, now: dt.datetime) -> str:
        with self.runtime.sessions() as session, session.begin():
            queries.reschedule(session, reminder_id, self.owner, at=now, count_attempt=False)
        return "released"

    def _prepare(self, session: Session, reminder_id: int, now: dt.datetime) -> Attempt | str:
        # The row lock keeps lease recovery from releasing it while the delivery row is written.
        reminder = session.get(Reminder, reminder_id, with_for_update=True)
        if reminder is None or reminder.status != RS.CLAIMED or reminder.claimed_by != self.owner:
            return "lost_claim"
        treatment = session.get_one(Treatment, reminder.treatment_id)
        end = self._end_if_moot(session, reminder, treatment, now)
        if end:
            return end
        failed = queries.failed_channels(session, reminder.id)
        candidates = [c for c in usable_channels(treatment.patient) if c not in failed]
        if not candidates:
            if failed:
                return self.outcomes.finish(session, reminder, RS.FAILED, "all_channels_failed")
            return self.outcomes.finish(session, reminder, RS.CANCELLED, "no_channel")
        ready = [c for c in candidates if c in self.runtime.senders and not self.pauses.paused(c)]
        if not ready:
            return self._wait_for_channel(session, reminder, now)
        return self._attempt(session, reminder, treatment, ready[0], now)

    def _end_if_moot(
        self, session: Session, reminder: Reminder, treatment: Treatment, now: dt.datetime
    ) -> str | None:
        """End a reminder that no longer makes sense; hold one outside the send window."""
        finish = partial(self.outcomes.finish, session, reminder)
        if now >= reminder.expires_at:
            return finish(RS.EXPIRED, "stale")
        if treatment.deleted_at is not None:
            return finish(RS.CANCELLED, "deleted")
        if queries.superseded(session, treatment):
            return finish(RS.CANCELLED, "superseded")
        if not treatment.patient.active:
            return finish(RS.CANCELLED, "inactive")
        zone = ZoneInfo(zone_of(session, reminder))
        allowed = self.runtime.timing.send_window.next_allowed(now, zone)
        if allowed <= now:
            return None
        if allowed >= reminder.expires_at:
            return finish(RS.EXPIRED, "send_window")
        queries.reschedule(session, reminder.id, self.owner, at=allowed, count_attempt=False)
        return "waiting_for_send_window"

    def _wait_for_channel(self, session: Session, reminder: Reminder, now: dt.datetime) -> str:
        at = now + NO_CHANNEL_RETRY
        if at >= reminder.expires_at:
            return self.outcomes.finish(session, reminder, RS.EXPIRED, "no_channel_available")
        error = "no configured channel is available"
        queries.reschedule(
            session, reminder.id, self.owner, at=at, count_attempt=False, error=error
        )
        return "waiting_for_channel"

    def _attempt(
        self,
        session: Session,
        reminder: Reminder,
        treatment: Treatment,
        channel: Channel,
        now: dt.datetime,
    ) -> Attempt | str:
        address = treatment.patient.address(channel) or ""
        delivery = queries.start_delivery(
            session, reminder.id, channel=channel, address=address, now=now
        )
        try:
            content = self._render(session, reminder, treatment, channel)
        except TemplateError as exc:
            log.error("template_failed", reminder_id=reminder.id, channel=channel, error=str(exc))
            queries.finish_delivery(
                session,
                delivery.id,
                status=DeliveryStatus.FAILED,
                now=now,
                error_code="template",
                error_message=str(exc),
                permanent=True,
            )
            return TEMPLATE_FAILED
        ics = calendar.attachments_for(
            channel,
            treatment,
            self.runtime.protocols[treatment.protocol],
            content,
            now=now,
            public_url=self.runtime.settings.public_url,
        )
        message = OutboundMessage(channel, address, content, delivery.public_id, reminder.id, ics)
        return Attempt(delivery.id, message, self.runtime.senders[channel], reminder.due_at)

    def _render(
        self, session: Session, reminder: Reminder, treatment: Treatment, channel: Channel
    ) -> Rendered:
        settings, patient = self.runtime.settings, treatment.patient
        protocol = self.runtime.protocols.get(treatment.protocol)
        if protocol is None:
            raise TemplateError("protocol", f"unknown protocol {treatment.protocol!r}")
        spec = template_store.find(
            session,
            self.runtime.templates,
            reminder.step,
            channel,
            patient.language,
            settings.default_language,
        )
        if spec is None:
            raise TemplateError("template", f"no {channel} template for step {reminder.step}")
        ctx = template_store.context(patient, treatment, protocol, reminder.step, settings)
        content = render(spec, {**ctx, "language": spec.language})  # dates match the text
        if channel == Channel.WHATSAPP and not content.content_sid:
            raise TemplateError("content_sid", "no approved WhatsApp ContentSid")
        return content

    def _send(self, attempt: Attempt, now: dt.datetime) -> str:
        self.limiters[attempt.message.channel].acquire(self.stopping)
        if self.stopping.is_set():
            return self.outcomes.not_sent(attempt, now)
        try:
            receipt = attempt.sender.send(attempt.message)
        except ChannelError as exc:
            return self.outcomes.failed(attempt, exc, now)
        return self.outcomes.accepted(attempt, receipt, now)
