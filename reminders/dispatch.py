"""Dispatch: claim due reminders, pick a channel, render, send.

The claim is one short transaction. The claimed batch is then prepared in one more (while a
full batch is sent, the next is claimed and prepared on a thread of its own): the
reminders, their treatments, patients and consents, superseded treatments, failed channels and
staff templates are read in a few queries; the moot ones (expired, deleted, superseded,
inactive, outside the send window, no channel) are ended or put back with bulk statements; the
rest are rendered. Provider calls run on the worker threads with no transaction open. Each
message must reach the patient before its send window ends (or the reminder expires, if
sooner): a call whose turn comes later is not made (``too_late``: the next window, no attempt
counted), and Twilio is told how long it may hold the message (``valid_for``).

A delivery row is written (``sending``) and committed before its provider call, and by default
no more deliveries are ``sending`` at once than calls can be in flight (``dispatch_concurrency``),
so a crash leaves at most that many in doubt. Workers queue what their calls came to; one
transaction writes every queued outcome (group commit, ``executemany``) together with the rows
of the attempts that take the freed places, and only then are those calls made. On PostgreSQL
that step is one statement (:func:`reminders.deliveries.write_step`), and when it records only
accepted sends it runs on its own in autocommit: no BEGIN and COMMIT round trips. With
``dispatch_ahead`` > 0, each worker also has that many attempts written ahead, waiting for it:
a worker that finishes a call starts the next at once instead of waiting for that commit, and
each commit covers more outcomes (faster where no rate limit holds the sends back); a crash
then leaves those in doubt too, but only the calls in flight can have reached the provider (at
most one duplicate each, as before): the others are sent after the grace period. A permanent
failure (or a template that does not render) falls back to the patient's next channel in
another round within the batch; a call that went out but got no answer (``in_doubt``) is
neither retried nor failed over: it waits for the provider's word or the grace period, like a
send cut off by a crash.

Shutdown (:meth:`Dispatcher.close`) cancels attempts still waiting for a worker (recorded as
not sent), waits a bounded time for calls in flight, then gives every claim back: unsent ones
to ``pending``, ones still inside a provider call to ``in_doubt``. A call that ends after that
records its own outcome, which settles the in-doubt reminder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from dataclasses import dataclass
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from reminders import db, deliveries, queries, template_store
from reminders.channels import ChannelError, ErrorKind, OutboundMessage, calendar, segments
from reminders.deliveries import Claimed
from reminders.logs import get_logger
from reminders.models import Channel, DeliveryStatus, Patient, ReminderStatus, Treatment
from reminders.outcomes import TOO_LATE, Attempt, ChannelPauses, Done, Outcomes
from reminders.planning import usable_channels
from reminders.ratelimit import Limiter, SharedRateLimiter
from reminders.retry import RetryPolicy
from reminders.runtime import Runtime
from reminders.templating import Rendered, TemplateError, TemplateSpec, language_chain, render
from reminders.workers import WorkerPool

log = get_logger(__name__)
RS = ReminderStatus
NO_CHANNEL_RETRY = dt.timedelta(minutes=15)
NO_CHANNEL_ERROR = "no configured channel is available"
CLOSE_SECONDS = 5.0  # how long close() waits for provider calls in flight
POLL_SECONDS = 0.2  # how often the dispatcher looks at close() while sends are in flight
CONFLICT_TRIES = 5  # a step the database rolled back for a lock conflict is run again
PAUSED_MESSAGE = "not sent: the channel was paused by a misconfiguration error"
TOO_LATE_MESSAGE = "not sent: the send window closed (or the reminder expired) before its turn"

__all__ = ["Attempt", "ChannelPauses", "Dispatcher"]


@dataclass(frozen=True)
class Ready:
    """A prepared attempt: the channel chosen, the message rendered, no row written yet."""

    claimed: Claimed
    message: OutboundMessage
    zone: str
    patient_id: int
    send_by: dt.datetime  # the send window's end or the reminder's expiry, whichever is first
    since: float  # time.monotonic() at the batch's ``now``


@dataclass
class Prepared:
    """A claimed batch with its first round prepared (or the error that stopped it)."""

    ids: list[int]
    now: dt.datetime
    since: float  # time.monotonic() at ``now``
    ready: list[Ready] = dataclasses.field(default_factory=list)
    results: dict[int, str] = dataclasses.field(default_factory=dict)
    error: Exception | None = None

    def take(self, results: dict[int, str]) -> list[Ready]:
        """The prepared attempts; what preparing settled goes into ``results``."""
        if self.error is not None:
            raise self.error
        results.update(self.results)
        return self.ready


class _Ahead:
    """The next batch: started once, when first called (the current batch has started all
    its attempts) or when its result is asked for (it never got that far)."""

    def __init__(self, start: Callable[[], Future[Prepared]]) -> None:
        self._start = start
        self._future: Future[Prepared] | None = None

    def __call__(self) -> None:
        if self._future is None:
            self._future = self._start()

    def result(self) -> Prepared:
        self()
        assert self._future is not None
        return self._future.result()


class Dispatcher:
    """Sends what is due. One per process; ``owner`` names it in claims."""

    def __init__(
        self,
        runtime: Runtime,
        owner: str,
        retry: RetryPolicy | None = None,
        *,
        max_sending: int | None = None,
    ) -> None:
        s = runtime.settings
        self.runtime, self.owner = runtime, owner
        self.retry = retry or RetryPolicy(s.retry_base_seconds, s.retry_max_seconds, s.max_attempts)
        self.pauses = ChannelPauses(on_change=self._paused_gauge)
        rates = {"email": s.email_rate, "sms": s.sms_rate, "whatsapp": s.whatsapp_rate}
        # One rate per sender for all replicas together (slots reserved in the database).
        self.limiters: dict[str, Limiter] = {
            c: SharedRateLimiter(runtime.sessions, c, rates.get(c, 10.0)) for c in runtime.senders
        }
        self.outcomes = Outcomes(runtime, owner, self.retry, self.pauses, self.limiters)
        self.stopping = threading.Event()
        self._abandon = threading.Event()  # close() stopped waiting for calls in flight
        self._claiming = threading.Lock()  # no claim or attempt starts once close() has begun
        self._recording = threading.Lock()  # one transaction records outcomes at a time
        self._outbox: list[Done] = []  # finished attempts waiting to be recorded
        self._outbox_lock = threading.Lock()
        self._submitted: dict[Future[Done], Attempt] = {}  # attempts not finished yet
        self._submitted_lock = threading.Lock()
        threads = max(1, s.dispatch_concurrency)
        # What a crash can leave in doubt; ``max_sending`` is for tests and measurements.
        self._max_sending = max_sending or threads * (1 + s.dispatch_ahead)
        self._pool = WorkerPool(threads, "dispatch")
        metrics = runtime.metrics
        self._call_seconds = {c: metrics.provider_call.labels(c) for c in runtime.senders}
        self._step_seconds = metrics.dispatch_step
        self._preparer = WorkerPool(1, "prepare")  # the next batch, while one is sent
        # A step's claim check and writes: one statement on PostgreSQL, five elsewhere.
        self._one_statement = runtime.engine.dialect.name == "postgresql"

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop claiming, cancel attempts no worker has started, wait up to ``timeout`` for
        sends in flight, give back every claim."""
        with self._claiming:
            self.stopping.set()
        self._preparer.shutdown()  # no batch is claimed from now on
        self._cancel_waiting()
        if not self._pool.wait_idle(timeout):
            log.warning("shutdown_with_sends_in_flight", owner=self.owner)
        self._abandon.set()
        if not self._preparer.wait_idle(timeout):  # a batch being prepared: its claims too
            log.warning("shutdown_while_preparing", owner=self.owner)
        self._record_late()  # what finished in time is written before the claims go back
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
        the start of the pass; later batches see it advanced by the time the pass has taken.

        Once every attempt of a full batch has started, the next batch is claimed and
        prepared on another thread (its rows read, its messages rendered) while the last calls
        are made, so the workers do not sit idle between batches: at most two batches are
        claimed at once, the second only for as long as the first's last calls take."""
        outcomes: Counter[str] = Counter()
        size, started = self.runtime.settings.dispatch_batch_size, time.monotonic()
        batch = self._claim_and_prepare(now, size)
        while batch.ids:
            ahead = _Ahead(partial(self._ahead, now, started, size))
            more = len(batch.ids) == size and not self._abandon.is_set()
            outcomes.update(
                self._dispatch(batch.ids, batch.now, batch, ahead if more else None).values()
            )
            if not more:
                break
            try:
                batch = ahead.result()  # a failure to claim propagates, as for the first
            except CancelledError:  # close() shut the preparing thread down first
                break
        return outcomes

    def _ahead(self, now: dt.datetime, started: float, size: int) -> Future[Prepared]:
        """The next batch of the pass begun at ``now`` (``started``, monotonic), claimed and
        prepared on the preparing thread."""
        moment = now + dt.timedelta(seconds=time.monotonic() - started)
        return self._preparer.submit(partial(self._claim_and_prepare, moment, size))

    def _claim_and_prepare(self, now: dt.datetime, size: int) -> Prepared:
        """A batch claimed and its first round prepared. A failure to claim propagates; a
        failure to prepare is kept for :meth:`_dispatch` (which logs it and leaves the claims
        to their leases)."""
        ids = self._claim(now, size)
        batch = Prepared(ids, now, time.monotonic())
        if ids:
            try:
                batch.ready = self._prepare(ids, now, batch.since, batch.results)
            except Exception as exc:
                batch.error = exc
        return batch

    def process(self, reminder_id: int, *, now: dt.datetime) -> str:
        """Handle one claimed reminder to its next state; returns what happened."""
        return self._dispatch([reminder_id], now).get(reminder_id, "lost_claim")

    def _claim(self, now: dt.datetime, limit: int) -> list[int]:
        lease = dt.timedelta(seconds=self.runtime.settings.lease_seconds)
        with self._claiming:
            if self.stopping.is_set():
                return []
            with self.runtime.sessions() as session, session.begin():
                return queries.claim_due(session, self.owner, now=now, limit=limit, lease=lease)

    def _paused_gauge(self, channel: str, paused: bool) -> None:
        self.runtime.metrics.channel_paused.labels(channel).set(1 if paused else 0)

    # --- a claimed batch ----------------------------------------------------------------------

    def _dispatch(
        self,
        ids: list[int],
        now: dt.datetime,
        first: Prepared | None = None,
        drained: Callable[[], object] | None = None,
    ) -> dict[int, str]:
        """Every claimed reminder of ``ids`` to its next state: what happened to each.
        ``first``: the first round, prepared already; ``drained``: called once every attempt
        of the first round has started (:meth:`run_once`)."""
        results: dict[int, str] = {}
        todo = list(ids)
        # ``now`` moves on from here (a send must not come too late)
        since = first.since if first is not None else time.monotonic()
        try:
            for _ in range(len(Channel) + 1):
                if not todo:
                    break
                ready = None
                if first is not None:  # prepared while the previous batch was sent
                    ready, first = first.take(results), None
                    todo = [r.claimed.id for r in ready]
                if self.stopping.is_set():
                    results.update(self._give_back(todo, now))
                    todo = []
                    break
                if ready is None:
                    ready = self._prepare(todo, now, since, results)
                todo = self._send_all(ready, now, results, drained)
                drained = None
            results.update(dict.fromkeys(todo, "fallback_loop"))
        except Exception:
            log.exception("dispatch_error", reminder_ids=[i for i in ids if i not in results])
            # the leases run out and housekeeping recovers them
            results.update({i: "error" for i in ids if i not in results})
        return results

    def _give_back(self, ids: list[int], now: dt.datetime) -> dict[int, str]:
        if not ids:
            return {}
        with self.runtime.sessions() as session, session.begin():
            deliveries.put_back(session, ids, self.owner, at=now)
        return dict.fromkeys(ids, "released")

    # --- preparing: one transaction for the batch ---------------------------------------------

    def _prepare(
        self, ids: list[int], now: dt.datetime, since: float, results: dict[int, str]
    ) -> list[Ready]:
        with self.runtime.sessions() as session, session.begin():
            claimed = deliveries.load_claimed(session, ids, self.owner)
            held = {c.id for c in claimed}
            results.update({i: "lost_claim" for i in ids if i not in held})
            if not claimed:
                return []
            batch = _Batch(self, session, claimed, now, since)
            ready = [r for c in claimed if (r := batch.prepare(c)) is not None]
            batch.write()
        results.update(batch.results)
        return ready

    # --- sending: slots, group commit ---------------------------------------------------------

    def _send_all(
        self,
        ready: list[Ready],
        now: dt.datetime,
        results: dict[int, str],
        drained: Callable[[], object] | None = None,
    ) -> list[int]:
        """Send the prepared attempts; returns the reminders to try on their next channel.
        ``drained`` is called once every attempt has started."""
        queue: deque[Ready] = deque(ready)
        again: list[int] = []
        running: set[Future[Done]] = set()
        finished: list[Done] = []
        try:
            # The round's connections: no pool checkout (and ping) per step. On PostgreSQL a
            # step that only records sends and starts attempts is one statement, run on its
            # own in autocommit (no BEGIN and COMMIT round trips); the others, a transaction.
            with (
                self.runtime.engine.connect() as conn,
                Session(conn) as session,
                self._autocommit() as auto,
            ):
                while True:
                    began = time.monotonic()
                    started, done = self._step(
                        session, auto, queue, len(running), now, results, again
                    )
                    running.update(map(self._submit, started))
                    if drained is not None and not queue:
                        drained()
                        drained = None
                    self.outcomes.report(done)  # while those calls go out
                    if not running or self._abandon.is_set():
                        break
                    # Group commit: wait for more calls to end, up to what a step costs.
                    window = min(time.monotonic() - began, POLL_SECONDS)
                    over, running = wait(running, timeout=window)
                    if not over:
                        over, running = wait(running, POLL_SECONDS, FIRST_COMPLETED)
                    finished.extend(f.result() for f in over if not f.cancelled())
        finally:
            if running:  # given up (close) or failed: what finishes later records itself
                for future in running:
                    future.add_done_callback(self._record_late)
        for d in finished:
            rid = d.attempt.message.reminder_id
            if d.outcome == "fallback":
                again.append(rid)
            else:
                results[rid] = d.outcome or "error"
        return again

    def _autocommit(self) -> contextlib.AbstractContextManager[Connection | None]:
        """A connection in autocommit for the one-statement steps (PostgreSQL), else none."""
        if not self._one_statement:
            return contextlib.nullcontext()
        return self.runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _step(
        self,
        session: Session,
        auto: Connection | None,
        queue: deque[Ready],
        busy: int,
        now: dt.datetime,
        results: dict[int, str],
        again: list[int],
    ) -> tuple[list[Attempt], list[Done]]:
        """One transaction: record every queued outcome and start attempts for the free slots
        (or, when stopping, give back the ones not started). Returns the attempts started and
        the outcomes recorded."""
        with self._claiming, self._recording:  # close() sees every attempt started or none
            start: list[Ready] = []
            back: list[int] = []
            if self.stopping.is_set():
                back = [r.claimed.id for r in queue]
                queue.clear()
            while queue and len(start) < self._max_sending - busy:
                r = queue.popleft()
                if self.pauses.paused(r.message.channel):
                    again.append(r.claimed.id)  # paused since: the next round picks another
                else:
                    start.append(r)
            done = self._take_outbox()
            if not (done or start or back):
                return [], []
            # Accepted sends and new attempts only: one statement writes all of it.
            alone = auto is not None and not back and all(d.receipt is not None for d in done)
            began = time.monotonic()
            for tries in range(1, CONFLICT_TRIES + 1):
                try:
                    if alone:
                        assert auto is not None
                        with auto.begin():  # no BEGIN is sent: the statement commits itself
                            attempts = self._write(session, done, start, now, results, auto)
                        break
                    with session.begin():
                        attempts = self._write(session, done, start, now, results)
                        if back:
                            deliveries.put_back(session, back, self.owner, at=now)
                    break
                except Exception as exc:
                    # Outcomes of calls that went out must not be lost to a lock conflict:
                    # that would leave them in doubt, and maybe sent twice.
                    if tries < CONFLICT_TRIES and db.is_conflict(exc):
                        log.warning("dispatch_conflict", owner=self.owner, tries=tries)
                        for d in done:
                            d.outcome = None
                        continue
                    for d in done:
                        d.outcome = "error"
                    raise
        self._step_seconds.observe(time.monotonic() - began)
        results.update(dict.fromkeys(back, "released"))
        return attempts, done

    def _write(
        self,
        session: Session,
        done: list[Done],
        start: list[Ready],
        now: dt.datetime,
        results: dict[int, str],
        alone: Connection | None = None,
    ) -> list[Attempt]:
        """The step's writes in ``session``'s transaction, or, given ``alone`` (a connection in
        autocommit, PostgreSQL), as one statement on it: accepted sends and new attempts only,
        which need no follow-up."""
        ids = {d.attempt.message.reminder_id for d in done} | {r.claimed.id for r in start}
        rows: list[dict[str, Any]] = [
            {
                "reminder_id": r.claimed.id,
                "channel": r.message.channel,
                "address": r.message.to,
                "public_id": r.message.delivery_id,
            }
            for r in start
        ]
        recording = self.outcomes.plan(session, done)
        if self._one_statement:
            step = deliveries.write_step(
                session if alone is None else alone,
                self.owner,
                recording.finished,
                recording.sent,
                rows,
                check=ids,
                now=now,
                wall=db.utcnow(),
            )
            held, started = step.held, step.started
            if step.settled and alone is not None:
                self.outcomes.settled(recording, step.settled)  # committed already
            elif step.settled:
                db.after_commit(session, partial(self.outcomes.settled, recording, step.settled))
        else:
            held = deliveries.held(session, ids, self.owner)
            events: list[dict[str, Any]] = []
            self.outcomes.write(session, recording, held, events)
            mine = [row for row in rows if row["reminder_id"] in held]
            new_ids = deliveries.start(session, mine)
            started = {row["reminder_id"]: i for row, i in zip(mine, new_ids, strict=True)}
            events.extend(_event(i, DeliveryStatus.SENDING, now) for i in started.values())
            deliveries.add_events(session, events)
        recording.follow_up(held)
        attempts = []
        for r in start:
            if (delivery_id := started.get(r.claimed.id)) is None:
                results[r.claimed.id] = "lost_claim"
            else:
                attempts.append(self._attempt(delivery_id, r, now))
        return attempts

    def _attempt(self, delivery_id: int, r: Ready, now: dt.datetime) -> Attempt:
        return Attempt(
            delivery_id=delivery_id,
            message=r.message,
            sender=self.runtime.senders[r.message.channel],
            due_at=r.claimed.due_at,
            expires_at=r.claimed.expires_at,
            attempts=r.claimed.attempts,
            zone=r.zone,
            patient_id=r.patient_id,
            now=now,
            send_by=r.send_by,
            since=r.since,
        )

    def _submit(self, attempt: Attempt) -> Future[Done]:
        future = self._pool.submit(partial(self._send, attempt))
        with self._submitted_lock:
            self._submitted[future] = attempt
        future.add_done_callback(self._finished)  # at once if it already has
        return future

    def _finished(self, future: Future[Done]) -> None:
        with self._submitted_lock:
            self._submitted.pop(future, None)

    def _cancel_waiting(self) -> None:
        """Stopping: attempts still waiting for a worker (``dispatch_ahead``) never start, and
        are recorded as not sent (their reminders go back to pending), even when every worker
        is stuck in a call."""
        with self._submitted_lock:
            submitted = list(self._submitted.items())
        unsent = [Done(attempt) for future, attempt in submitted if future.cancel()]
        if unsent:
            with self._outbox_lock:
                self._outbox.extend(unsent)

    def _send(self, attempt: Attempt) -> Done:
        """On a worker: the provider call, no transaction open. The outcome is queued."""
        try:
            done = self._call(attempt)
        except Exception:  # in the call or around it (the rate limiter): left to the lease
            log.exception("dispatch_error", reminder_id=attempt.message.reminder_id)
            done = Done(attempt, crashed=True, outcome="error")
        with self._outbox_lock:
            self._outbox.append(done)
        return done

    def _take_outbox(self) -> list[Done]:
        with self._outbox_lock:
            done = [d for d in self._outbox if not d.crashed]  # a crashed one: to its lease
            self._outbox.clear()
        return done

    def _record_late(self, _: Future[Done] | None = None) -> None:
        """Write queued outcomes when nobody else will: at close(), and for a call that ends
        after the dispatcher stopped waiting for it."""
        try:
            with self._recording:
                done = self._take_outbox()
                if not done:
                    return
                events: list[dict[str, Any]] = []
                with self.runtime.sessions() as session, session.begin():
                    ids = {d.attempt.message.reminder_id for d in done}
                    held = deliveries.held(session, ids, self.owner)
                    self.outcomes.record(session, done, held, events)
                    deliveries.add_events(session, events)
            self.outcomes.report(done)
        except Exception:
            log.exception("dispatch_error", owner=self.owner)

    def _call(self, attempt: Attempt) -> Done:
        message = attempt.message
        if self.pauses.paused(message.channel):
            # Paused by a call that ended while this one waited for a worker: the address may
            # be fine, so the next round tries the patient's next channel.
            paused = ChannelError(ErrorKind.MISCONFIGURED, PAUSED_MESSAGE, code="channel_paused")
            return Done(attempt, error=paused)
        if not self.stopping.is_set():
            self.limiters[message.channel].acquire(self.stopping, cost=_slots(message))
        if self.stopping.is_set():
            return Done(attempt)
        left = attempt.seconds_left()
        if left <= 0:
            # It waited (for the rate limit) until the window closed or the reminder expired:
            # it waits for the next window, or expires (Outcomes._too_late).
            late = ChannelError(ErrorKind.TRANSIENT, TOO_LATE_MESSAGE, code=TOO_LATE)
            log.info("send_too_late", reminder_id=message.reminder_id, channel=message.channel)
            return Done(attempt, error=late)
        message = dataclasses.replace(message, valid_for=left)
        began = time.monotonic()
        refusal: ChannelError | None = None
        try:
            receipt = attempt.sender.send(message)
        except ChannelError as exc:
            refusal = exc
        finally:  # a crash too, which goes on to _send: left to the lease
            self._call_seconds[message.channel].observe(time.monotonic() - began)
        if refusal is not None:
            self.outcomes.refused(attempt, refusal)
            return Done(attempt, error=refusal)
        return Done(attempt, receipt=receipt)


class _Batch:
    """Preparing one claimed batch inside one transaction."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        session: Session,
        claimed: list[Claimed],
        now: dt.datetime,
        since: float,  # time.monotonic() at ``now``
    ) -> None:
        self.d, self.session, self.now, self.since = dispatcher, session, now, since
        self.runtime = dispatcher.runtime
        self.results: dict[int, str] = {}
        self.treatments = deliveries.load_treatments(session, {c.treatment_id for c in claimed})
        live = {t.id for t in self.treatments.values() if t.deleted_at is None}
        self.superseded = deliveries.superseded(session, live)
        self.failed = deliveries.failed_channels(session, [c.id for c in claimed])
        self._staff: dict[tuple[str, str, str], TemplateSpec] | None = None
        self._steps = {c.step for c in claimed}
        self.ends: dict[tuple[RS, str], list[int]] = {}
        self.later: dict[tuple[dt.datetime, str | None], list[int]] = {}
        self.template_failures: list[tuple[int, str, str, str]] = []  # id, channel, to, error

    def prepare(self, c: Claimed) -> Ready | None:
        treatment = self.treatments[c.treatment_id]
        patient = treatment.patient
        if self._moot(c, treatment):
            return None
        failed = self.failed.get(c.id, set())
        candidates = [ch for ch in usable_channels(patient) if ch not in failed]
        senders, pauses = self.runtime.senders, self.d.pauses
        while True:
            if not candidates:
                if failed:
                    self._end(c, RS.FAILED, "all_channels_failed")
                else:
                    self._end(c, RS.CANCELLED, "no_channel")
                return None
            ready = [ch for ch in candidates if ch in senders and not pauses.paused(ch)]
            if not ready:
                self._wait_for_channel(c)
                return None
            channel = ready[0]
            address = patient.address(channel) or ""
            try:
                content = self._render(c, treatment, channel)
            except TemplateError as exc:
                log.error("template_failed", reminder_id=c.id, channel=channel, error=str(exc))
                self.template_failures.append((c.id, channel, address, str(exc)))
                failed = failed | {channel}
                candidates.remove(channel)
                continue
            ics = calendar.attachments_for(
                channel,
                treatment,
                self.runtime.protocols[treatment.protocol],
                content,
                now=self.now,
                public_url=self.runtime.settings.public_url,
            )
            message = OutboundMessage(channel, address, content, uuid.uuid4().hex, c.id, ics)
            send_by = self._send_by(c, patient)
            return Ready(c, message, patient.timezone, patient.id, send_by, self.since)

    def _send_by(self, c: Claimed, patient: Patient) -> dt.datetime:
        """Not to reach the patient after the send window's end or the reminder's expiry."""
        closes = self.runtime.timing.send_window.closes(self.now, ZoneInfo(patient.timezone))
        return min(closes, c.expires_at)

    def _moot(self, c: Claimed, treatment: Treatment) -> bool:
        """End a reminder that no longer makes sense; hold one outside the send window."""
        if self.now >= c.expires_at:
            self._end(c, RS.EXPIRED, "stale")
        elif treatment.deleted_at is not None:
            self._end(c, RS.CANCELLED, "deleted")
        elif treatment.id in self.superseded:
            self._end(c, RS.CANCELLED, "superseded")
        elif not treatment.patient.active:
            self._end(c, RS.CANCELLED, "inactive")
        else:
            zone = ZoneInfo(treatment.patient.timezone)
            allowed = self.runtime.timing.send_window.next_allowed(self.now, zone)
            if allowed <= self.now:
                return False
            if allowed >= c.expires_at:
                self._end(c, RS.EXPIRED, "send_window")
            else:
                self.later.setdefault((allowed, None), []).append(c.id)
                self.results[c.id] = "waiting_for_send_window"
        return True

    def _wait_for_channel(self, c: Claimed) -> None:
        at = self.now + NO_CHANNEL_RETRY
        if at >= c.expires_at:
            self._end(c, RS.EXPIRED, "no_channel_available")
        else:
            self.later.setdefault((at, NO_CHANNEL_ERROR), []).append(c.id)
            self.results[c.id] = "waiting_for_channel"

    def _end(self, c: Claimed, status: RS, reason: str) -> None:
        self.ends.setdefault((status, reason), []).append(c.id)
        self.results[c.id] = str(status)

    def _render(self, c: Claimed, treatment: Treatment, channel: Channel) -> Rendered:
        settings, patient = self.runtime.settings, treatment.patient
        protocol = self.runtime.protocols.get(treatment.protocol)
        if protocol is None:
            raise TemplateError("protocol", f"unknown protocol {treatment.protocol!r}")
        if self._staff is None:
            self._staff = deliveries.staff_templates(self.session, self._steps)
        spec = None
        for lang in language_chain(patient.language, settings.default_language):
            key = (c.step, str(channel), lang)
            spec = self._staff.get(key) or self.runtime.templates.get(key)
            if spec is not None:
                break
        if spec is None:
            raise TemplateError("template", f"no {channel} template for step {c.step}")
        ctx = template_store.context(patient, treatment, protocol, c.step, settings)
        content = render(spec, {**ctx, "language": spec.language})  # dates match the text
        if channel == Channel.WHATSAPP and not content.content_sid:
            raise TemplateError("content_sid", "no approved WhatsApp ContentSid")
        return content

    def write(self) -> None:
        """The batch's bulk statements: template failures, ends, reminders put back."""
        session, now = self.session, self.now
        if self.template_failures:
            rows = [
                {
                    "reminder_id": reminder_id,
                    "channel": channel,
                    "address": address,
                    "public_id": uuid.uuid4().hex,
                }
                for reminder_id, channel, address, _ in self.template_failures
            ]
            ids = deliveries.start(session, rows)
            failures = [
                {
                    "d_id": i,
                    "d_status": DeliveryStatus.FAILED,
                    "d_permanent": True,
                    "d_now": now,
                    "d_provider_id": None,
                    "d_error_code": "template",
                    "d_error_message": error[:500],
                    "d_details": None,
                }
                for i, (*_, error) in zip(ids, self.template_failures, strict=True)
            ]
            deliveries.finish_many(session, failures)
            events = [_event(i, DeliveryStatus.SENDING, now) for i in ids]
            events += [_event(i, DeliveryStatus.FAILED, now, "template") for i in ids]
            deliveries.add_events(session, events)
        for (status, reason), ids in self.ends.items():
            self.d.outcomes.end(session, ids, status, reason)
        for (at, error), ids in self.later.items():
            deliveries.put_back(session, ids, self.d.owner, at=at, error=error)


def _event(
    delivery_id: int, status: str, now: dt.datetime, error_code: str | None = None
) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "status": status,
        "source": "dispatch",
        "occurred_at": now,
        "error_code": error_code,
    }


def _slots(message: OutboundMessage) -> int:
    """How much of a sender's rate a message takes: Twilio counts an SMS by its segments."""
    if message.channel != Channel.SMS:
        return 1
    return max(segments.count(message.content.text).segments, 1)
