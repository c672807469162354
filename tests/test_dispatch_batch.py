"""Dispatch around the claimed batch: one transaction prepares the batch, outcomes are written
with group commit, and deliveries ``sending`` stay within a bound of the calls in flight.

The per-reminder behaviour (each moot case, fallback, retries, in doubt, shutdown) is pinned by
``test_dispatch.py`` and the fault tests; here: a batch mixing all of them, the bounds on
calls in flight and deliveries left ``sending`` (what a crash could leave in doubt), with and
without attempts written ahead, those waiting for a worker when their channel pauses, the
statements a batch costs, and the paused-channel gauge going back to 0.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import event, func, select, text, update
from structlog.testing import capture_logs

from reminders import db, queries
from reminders import deliveries as store
from reminders.channels import ChannelError, ErrorKind, OutboundMessage, Receipt
from reminders.channels.recording import RecordingSender
from reminders.dispatch import Dispatcher
from reminders.models import Delivery, Patient, Reminder, Treatment
from reminders.outcomes import ChannelPauses
from reminders.retry import RetryPolicy
from reminders.runtime import Runtime
from tests import factories
from tests.test_dispatch import LEASE, deliveries, due, fail, housekeeping
from tests.test_dispatch import reminder as row

Senders = dict[str, RecordingSender]


def tuned(rt: Runtime, **settings: Any) -> Runtime:
    return dataclasses.replace(rt, settings=rt.settings.model_copy(update=settings))


@pytest.fixture
def make_dispatcher(runtime: Runtime) -> Iterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def make(rt: Runtime | None = None, **settings: Any) -> Dispatcher:
        rt = tuned(rt or runtime, **{"sms_rate": 1000.0, "email_rate": 1000.0, **settings})
        made.append(Dispatcher(rt, "d1", RetryPolicy(base_seconds=30, max_attempts=3)))
        return made[-1]

    yield make
    for d in made:
        d.close(timeout=1)


def treatment_of(rt: Runtime, rid: int) -> Treatment:
    with rt.sessions() as s:
        return s.get_one(Treatment, s.get_one(Reminder, rid).treatment_id)


def test_one_batch_ends_every_moot_kind_in_bulk_falls_back_and_sends_the_rest(
    runtime, make_dispatcher, senders, now
):
    plain = [due(runtime, now) for _ in range(3)]
    stale = due(runtime, now - dt.timedelta(days=8))  # expired a day ago
    deleted = due(runtime, now)
    superseded = due(runtime, now)
    inactive = due(runtime, now, active=False)
    no_channel = due(runtime, now, consent=[])
    email_only = due(runtime, now, channels="whatsapp|email", whatsapp="+905431970001")
    bounced = due(runtime, now, channels="sms|email", phone="+905430000000")
    gone, replaced = treatment_of(runtime, deleted), treatment_of(runtime, superseded)
    with runtime.sessions() as s, s.begin():
        s.execute(update(Treatment).where(Treatment.id == gone.id).values(deleted_at=now))
        patient = s.get_one(Patient, replaced.patient_id)
        factories.treatment(s, patient, dt.date(2026, 2, 1), needs_plan=False)
    senders["sms"].script = lambda m: (
        ChannelError(ErrorKind.PERMANENT, "unknown number", code="21211")
        if m.to == "+905430000000"
        else None
    )
    outcomes = make_dispatcher().run_once(now=now)
    assert outcomes == {"sent": 5, "cancelled": 4, "expired": 1}
    reasons = {rid: (row(runtime, rid).status, row(runtime, rid).reason) for rid in plain}
    assert set(reasons.values()) == {("sent", None)}
    assert (row(runtime, stale).status, row(runtime, stale).reason) == ("expired", "stale")
    for rid, reason in (
        (deleted, "deleted"),
        (superseded, "superseded"),
        (inactive, "inactive"),
        (no_channel, "no_channel"),
    ):
        assert (row(runtime, rid).status, row(runtime, rid).reason) == ("cancelled", reason)
    assert (row(runtime, email_only).status, row(runtime, email_only).channel) == ("sent", "email")
    assert (row(runtime, bounced).status, row(runtime, bounced).channel) == ("sent", "email")
    assert all(row(runtime, rid).claimed_by is None for rid in [*plain, stale, bounced])


def sending_at_each_call(
    runtime: Runtime, senders: Senders, dispatcher: Dispatcher, now: dt.datetime, count: int
) -> tuple[list[int], list[int]]:
    """Sends ``count`` due SMS; returns, at each provider call, the calls running and the
    committed ``sending`` rows."""
    ids = [due(runtime, now) for _ in range(count)]
    rows: list[int] = []
    calls: list[int] = []
    lock = threading.Lock()
    running = 0

    def provider(_message: OutboundMessage) -> None:
        nonlocal running
        with lock:
            running += 1
            calls.append(running)
        try:
            with runtime.sessions() as s:
                sending = s.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.status == "sending")
                )
            with lock:
                rows.append(int(sending or 0))
            time.sleep(0.002)  # the other workers' calls overlap this one
        finally:
            with lock:
                running -= 1

    senders["sms"].script = provider
    assert dispatcher.run_once(now=now) == {"sent": count}
    assert sorted(m.reminder_id for m in senders["sms"].sent) == ids
    assert len(rows) == count
    return calls, rows


def test_no_more_deliveries_are_sending_at_once_than_the_dispatch_concurrency(
    runtime, make_dispatcher, senders, now
):
    """What a crash could leave in doubt: at every provider call, the committed ``sending``
    rows are at most the calls that can be in flight."""
    dispatcher = make_dispatcher(dispatch_concurrency=3, dispatch_batch_size=20)
    calls, rows = sending_at_each_call(runtime, senders, dispatcher, now, 30)
    assert max(calls) <= 3 and max(rows) <= 3


def test_attempts_written_ahead_wait_for_a_worker_within_their_bound(
    runtime, make_dispatcher, senders, now
):
    """With ``dispatch_ahead``: still at most ``dispatch_concurrency`` calls at once (only those
    can have reached the provider when a crash comes), and at most ``1 + dispatch_ahead`` times
    as many rows ``sending`` (the others wait for a worker)."""
    dispatcher = make_dispatcher(dispatch_concurrency=3, dispatch_ahead=3, dispatch_batch_size=40)
    calls, rows = sending_at_each_call(runtime, senders, dispatcher, now, 60)
    assert max(calls) <= 3
    assert 3 < max(rows) <= 12  # attempts did wait for a worker


def test_attempts_waiting_for_a_worker_when_their_channel_pauses_try_the_next_channel(
    runtime, make_dispatcher, senders, now
):
    """A misconfiguration error pauses the channel; the attempts already written for it that
    were waiting for a worker are not sent there (no more requests with a bad key) but go to
    the patient's next channel in the same pass."""
    first, *waiting = [due(runtime, now) for _ in range(4)]  # SMS, then email
    senders["sms"].script = fail(ErrorKind.MISCONFIGURED, "20003")
    dispatcher = make_dispatcher(dispatch_concurrency=1, dispatch_ahead=3)
    assert dispatcher.run_once(now=now) == {"sent": 4}
    assert [m.reminder_id for m in senders["sms"].attempts] == [first]
    assert deliveries(runtime, first) == [
        ("sms", "failed", False, "20003"),
        ("email", "accepted", False, None),
    ]
    for rid in waiting:
        assert deliveries(runtime, rid) == [
            ("sms", "failed", False, "channel_paused"),
            ("email", "accepted", False, None),
        ]
        assert row(runtime, rid).status == "sent"


class Stuck:
    """A sender script that holds every call until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._calls = threading.Semaphore(0)

    def __call__(self, _message: OutboundMessage) -> None:
        self._calls.release()
        self.release.wait(10)

    def entered(self, calls: int) -> bool:
        """Whether ``calls`` more calls have begun (waiting up to 5 s for each)."""
        return all(self._calls.acquire(timeout=5) for _ in range(calls))


def test_closing_while_every_worker_is_stuck_gives_back_the_attempts_written_ahead(
    runtime, make_dispatcher, senders, now
):
    """Attempts waiting for a worker when the dispatcher stops never reached the provider:
    they go back to pending at once (delivery ``failed``, ``shutdown``), not to the in-doubt
    rule; only the call in flight is left in doubt."""
    first, *waiting = [due(runtime, now) for _ in range(4)]
    senders["sms"].script = stuck = Stuck()
    dispatcher = make_dispatcher(dispatch_concurrency=1, dispatch_ahead=3)
    worker = threading.Thread(target=dispatcher.run_once, kwargs={"now": now})
    worker.start()
    try:
        assert stuck.entered(1)
        dispatcher.close(timeout=0.2)
        assert (row(runtime, first).status, row(runtime, first).claimed_by) == ("in_doubt", None)
        assert deliveries(runtime, first) == [("sms", "in_doubt", False, None)]
        for rid in waiting:
            assert (row(runtime, rid).status, row(runtime, rid).claimed_by) == ("pending", None)
            assert deliveries(runtime, rid) == [("sms", "failed", False, "shutdown")]
    finally:
        stuck.release.set()
        worker.join(5)
    assert [m.reminder_id for m in senders["sms"].attempts] == [first]


def claimed_by_d1(rt: Runtime) -> int:
    with rt.sessions() as s:
        return s.scalar(select(func.count()).where(Reminder.claimed_by == "d1")) or 0


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_next_batch_is_claimed_and_prepared_while_one_is_sent(
    runtime, make_dispatcher, senders, now
):
    """Once a full batch has started all its calls, the next is claimed and prepared on
    another thread, so the workers do not wait for it between batches; never earlier (its
    claims would wait out the whole batch), and no more than two batches are claimed."""
    rids = [due(runtime, now) for _ in range(7)]
    first_two, the_rest = threading.Event(), threading.Event()
    calls = threading.Semaphore(0)

    def stuck(_message: OutboundMessage) -> None:
        calls.release()
        (first_two if len(senders["sms"].attempts) <= 2 else the_rest).wait(10)

    senders["sms"].script = stuck
    dispatcher = make_dispatcher(dispatch_concurrency=2, dispatch_batch_size=3)
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(dispatcher.run_once(now=now)))
    worker.start()
    try:
        assert calls.acquire(timeout=5) and calls.acquire(timeout=5)
        time.sleep(0.1)
        assert claimed_by_d1(runtime) == 3  # the batch's third attempt has not started
        first_two.set()
        assert calls.acquire(timeout=5)  # the third has: the next batch is claimed
        assert wait_for(lambda: claimed_by_d1(runtime) == 1 + 3)
        time.sleep(0.1)
        assert claimed_by_d1(runtime) == 1 + 3  # not a third batch
    finally:
        first_two.set()
        the_rest.set()
        worker.join(10)
    assert done == [{"sent": 7}]
    assert sorted(m.reminder_id for m in senders["sms"].attempts) == rids
    assert all(row(runtime, rid).status == "sent" for rid in rids)


def test_closing_while_the_next_batch_waits_gives_its_claims_back(
    runtime, make_dispatcher, senders, now
):
    """The batch prepared ahead never reached a worker: at close() its reminders go back to
    pending with no attempt, like the rest of the batch not started."""
    sending = [due(runtime, now) for _ in range(2)]
    ahead = [due(runtime, now) for _ in range(2)]
    senders["sms"].script = stuck = Stuck()
    dispatcher = make_dispatcher(dispatch_concurrency=2, dispatch_batch_size=2)
    worker = threading.Thread(target=dispatcher.run_once, kwargs={"now": now})
    worker.start()
    try:
        assert stuck.entered(2)
        assert wait_for(lambda: claimed_by_d1(runtime) == 4)
        dispatcher.close(timeout=0.2)
        assert [row(runtime, rid).status for rid in sending] == ["in_doubt", "in_doubt"]
        for rid in ahead:
            assert (row(runtime, rid).status, row(runtime, rid).claimed_by) == ("pending", None)
            assert deliveries(runtime, rid) == []
    finally:
        stuck.release.set()
        worker.join(10)
    assert not worker.is_alive()
    assert sorted(m.reminder_id for m in senders["sms"].attempts) == sending


class Breaks:
    """A rate limiter that fails once, outside any provider call (a bug, say)."""

    def __init__(self) -> None:
        self.broken = False

    def acquire(self, stop: threading.Event | None = None, cost: int = 1) -> float:
        if not self.broken:
            self.broken = True
            raise RuntimeError("limiter broke")
        return 0.0

    def hold_until(self, monotonic_at: float) -> None:
        pass


@pytest.mark.parametrize("where", ["in the call", "around the call"])
def test_an_unexpected_error_in_or_around_one_call_leaves_that_reminder_to_its_lease(
    runtime, make_dispatcher, senders, now, where
):
    """The worker records the attempt as crashed (its reminder waits for its lease, as after
    a crash: the request may have gone out) and the batch goes on: the other reminders are
    sent, not left to their leases with it. A call that crashed is still timed."""
    ids = [due(runtime, now) for _ in range(5)]
    dispatcher = make_dispatcher(dispatch_concurrency=2)
    if where == "in the call":
        crashed: list[int] = []

        def crash_once(message: OutboundMessage) -> None:
            if not crashed:
                crashed.append(message.reminder_id)
                raise RuntimeError("the SDK broke")

        senders["sms"].script = crash_once
    else:
        dispatcher.limiters["sms"] = Breaks()
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(dispatcher.run_once(now=now)))
    with capture_logs() as logs:
        worker.start()
        worker.join(10)
    assert done == [{"sent": 4, "error": 1}]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["dispatch_error"]
    (broken,) = [rid for rid in ids if row(runtime, rid).status != "sent"]
    assert (row(runtime, broken).status, row(runtime, broken).claimed_by) == ("claimed", "d1")
    assert deliveries(runtime, broken) == [("sms", "sending", False, None)]
    calls = runtime.metrics.registry.get_sample_value(
        "reminders_provider_call_seconds_count", {"channel": "sms"}
    )
    assert calls == (5 if where == "in the call" else 4)
    assert len(senders["sms"].sent) == 4


def test_a_batch_costs_a_few_statements_per_reminder_not_a_transaction_each(
    runtime, make_dispatcher, now
):
    for _ in range(40):
        due(runtime, now)
    counts = {"statements": 0, "commits": 0}

    def statement(*_: Any) -> None:
        counts["statements"] += 1

    def commit(*_: Any) -> None:
        counts["commits"] += 1

    event.listen(runtime.engine, "before_cursor_execute", statement)
    event.listen(runtime.engine, "commit", commit)
    try:
        dispatcher = make_dispatcher(dispatch_batch_size=40)
        assert dispatcher.run_once(now=now) == {"sent": 40}
    finally:
        event.remove(runtime.engine, "before_cursor_execute", statement)
        event.remove(runtime.engine, "commit", commit)
    # One reminder at a time took 11 statements and 2 commits each (440 and 80 here). Now: the
    # claim and the preparation (a handful, once), one delivery insert per send, and per group of
    # outcomes committed together BEGIN, a check, two updates and the events (6 statements); plus
    # slot reservations (blocks of up to 64 slots, reserved again once their slots go stale;
    # the bound allows one per 16 sends). How many outcomes end together depends on
    # thread timing, so the bounds are the worst case: every outcome committed alone (measured
    # 186-221 statements and 33-40 commits over runs on SQLite).
    blocks = -(-40 // 16)
    assert counts["statements"] <= 12 + 40 * (1 + 5) + 3 * blocks
    assert counts["commits"] <= 3 + 40 + blocks


def test_the_paused_gauge_goes_back_to_0_once_the_pause_is_over(
    runtime, make_dispatcher, senders, now
):
    due(runtime, now, channels="sms")
    senders["sms"].script = lambda _m: ChannelError(
        ErrorKind.MISCONFIGURED, "bad key", code="20003"
    )
    dispatcher = make_dispatcher()
    dispatcher.run_once(now=now)

    def gauge() -> float | None:
        return runtime.metrics.registry.get_sample_value(
            "reminders_channel_paused", {"channel": "sms"}
        )

    assert dispatcher.pauses.paused("sms") and gauge() == 1
    dispatcher.pauses.seconds = 0.0
    dispatcher.pauses.pause("sms")  # a pause that is over at once
    assert not dispatcher.pauses.paused("sms")
    assert gauge() == 0


def test_channel_pauses_report_start_and_end_once() -> None:
    heard: list[tuple[str, bool]] = []
    pauses = ChannelPauses(seconds=0.0, on_change=lambda c, p: heard.append((c, p)))
    assert not pauses.paused("sms")
    pauses.pause("sms")
    assert not pauses.paused("sms") and not pauses.paused("sms")
    assert heard == [("sms", True), ("sms", False)]


def test_an_outcome_write_that_postgresql_breaks_for_a_deadlock_is_written_again(
    runtime, make_dispatcher, senders, now
):
    """Each side of a lock cycle can be the one PostgreSQL kills. When it is the dispatcher's
    outcome write, the sends it recorded went out: the write is run again, not left to the
    lease (in doubt, perhaps sent twice). The other side here takes the delivery, then the
    reminder: the order status callbacks used before they were fixed to match dispatch."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("row locks and deadlock detection: PostgreSQL")
    rid = due(runtime, now)
    locked, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other_side() -> None:
        try:
            with runtime.engine.connect() as conn, conn.begin():
                # The dispatcher, waiting first, detects the cycle after 1 s: it is the one killed.
                conn.execute(text("SET LOCAL deadlock_timeout = '20s'"))
                conn.execute(
                    select(Delivery.id).where(Delivery.reminder_id == rid).with_for_update()
                )
                locked.set()
                waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                deadline = time.monotonic() + 10
                while conn.scalar(waiting) == 0:  # the dispatcher waits on the delivery
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                conn.execute(select(Reminder.id).where(Reminder.id == rid).with_for_update())
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def provider(_message: OutboundMessage) -> None:
        threading.Thread(target=other_side, daemon=True).start()
        assert locked.wait(10)

    senders["sms"].script = provider
    with capture_logs() as logs:
        assert make_dispatcher().run_once(now=now) == {"sent": 1}
    assert done.wait(10) and errors == []
    assert (row(runtime, rid).status, row(runtime, rid).claimed_by) == ("sent", None)
    with runtime.sessions() as s:
        assert s.scalars(select(Delivery.status).where(Delivery.reminder_id == rid)).all() == [
            "accepted"
        ]
    assert [e["tries"] for e in logs if e["event"] == "dispatch_conflict"] == [1]
    assert not [e for e in logs if e["event"] == "dispatch_error"]


def test_a_step_run_again_after_a_conflict_counts_its_metrics_and_log_lines_once(
    runtime, make_dispatcher, senders, now
):
    """The metric and log line of a reschedule (and of an ending) follow the commit: the first
    run of a step that PostgreSQL rolls back for a conflict leaves no trace of them. Here the
    conflict is a trigger that fails the second insert of delivery events (the one recording
    the provider's refusal) with deadlock_detected, once."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("conflicts that are run again: PostgreSQL")
    rid = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.TRANSIENT, "20429")
    fault = [
        "CREATE SEQUENCE fault_once",
        "CREATE FUNCTION fault_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF nextval('fault_once') = 2 THEN"
        " RAISE EXCEPTION 'injected' USING ERRCODE = '40P01'; END IF; RETURN NULL; END $$",
        "CREATE TRIGGER fault_once BEFORE INSERT ON delivery_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION fault_once()",
    ]
    with runtime.engine.begin() as conn:
        for statement in fault:
            conn.execute(text(statement))
    try:
        with capture_logs() as logs:
            assert make_dispatcher().run_once(now=now) == {"retry": 1}
    finally:
        with runtime.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER fault_once ON delivery_events"))
            conn.execute(text("DROP FUNCTION fault_once()"))
            conn.execute(text("DROP SEQUENCE fault_once"))
    assert [e["tries"] for e in logs if e["event"] == "dispatch_conflict"] == [1]
    retried = runtime.metrics.registry.get_sample_value(
        "reminders_retried_total", {"channel": "sms"}
    )
    assert retried == 1
    assert (row(runtime, rid).status, row(runtime, rid).attempts) == ("pending", 1)


def test_preparing_a_batch_reads_with_one_statement_text_whatever_its_size(runtime, now) -> None:
    """A batch's reads take its ids as one array on PostgreSQL (``= ANY``): the same text for
    3 ids as for 300, which the driver parses once and the server can prepare; SQLite gets
    them as an ``IN`` list. Either way, the same rows."""
    rids = [due(runtime, now) for _ in range(5)]
    with runtime.sessions() as session, session.begin():
        queries.claim_due(session, "d1", now=now, limit=5, lease=LEASE)
    texts: list[str] = []

    def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        texts.append(sql)

    event.listen(runtime.engine, "before_cursor_execute", statement)
    try:
        found = []
        for ids in (rids[:1], rids[1:4], [*rids, *range(10**6, 10**6 + 300)], []):
            with runtime.sessions() as session:
                found.append([c.id for c in store.load_claimed(session, ids, "d1")])
                treatments = [c.treatment_id for c in store.load_claimed(session, ids, "d1")]
                assert set(store.load_treatments(session, treatments)) == set(treatments)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", statement)
    assert found == [rids[:1], rids[1:4], rids, []]
    if runtime.engine.dialect.name == "postgresql":
        claimed = {t for t in texts if "FROM reminders" in t}
        assert len(claimed) == 1 and "= ANY (" in claimed.pop()
    else:
        assert any("IN (" in t for t in texts)


def test_effects_after_commit_run_once_on_commit_and_never_after_a_rollback(runtime) -> None:
    ran: list[str] = []
    with runtime.sessions() as session:
        with session.begin():
            db.after_commit(session, lambda: ran.append("rolled back"))
            session.rollback()
        with session.begin():
            db.after_commit(session, lambda: ran.append("committed"))
            assert ran == []
        with session.begin():
            pass
    assert ran == ["committed"]


# A scenario per phone number's last digit: what the SMS provider answers.
SCENARIOS: dict[str, ChannelError | None] = {
    "0": None,  # accepted
    "1": ChannelError(ErrorKind.TRANSIENT, "try later", code="20429"),  # retried later
    # email instead; what a provider says is kept as it is, quotes and all
    "2": ChannelError(ErrorKind.PERMANENT, 'unknown "number" \\ ü\nsee ½', code="21211"),
    "3": ChannelError(ErrorKind.IN_DOUBT, "no answer", code="timeout"),  # left in doubt
    "4": ChannelError(ErrorKind.OPTED_OUT, "replied STOP", code="21610"),  # opt-out, email
    "5": ChannelError(ErrorKind.TRANSIENT, "busy"),  # no code: the kind is recorded
}


def written(runtime: Runtime, rids: list[int]) -> list[dict[str, Any]]:
    """Every column the dispatch wrote for ``rids`` (in order): the reminder, its deliveries
    and their events, with what differs from run to run (ids, addresses, the provider's ids,
    clock times) reduced to whether it is set."""
    varying = {"id", "reminder_id", "treatment_id", "patient_id", "delivery_id", "public_id"}
    varying |= {"address", "provider_message_id", "next_attempt_at"}

    def plain(row: Any) -> dict[str, Any]:
        values = dict(row._mapping)
        return {
            k: (v is not None) if k in varying or isinstance(v, dt.datetime) else v
            for k, v in values.items()
        }

    out = []
    with runtime.engine.connect() as conn:
        for rid in rids:
            reminder = conn.execute(text("SELECT * FROM reminders WHERE id = :r"), {"r": rid}).one()
            ds = conn.execute(
                text("SELECT * FROM deliveries WHERE reminder_id = :r ORDER BY id"), {"r": rid}
            ).all()
            events = conn.execute(
                text(
                    "SELECT e.* FROM delivery_events e JOIN deliveries d ON d.id = e.delivery_id"
                    " WHERE d.reminder_id = :r ORDER BY e.id"
                ),
                {"r": rid},
            ).all()
            out.append(
                {
                    "reminder": plain(reminder),
                    "deliveries": [plain(d) for d in ds],
                    "events": [plain(e) for e in events],
                }
            )
    return out


def test_on_postgresql_the_one_statement_step_writes_what_the_four_statements_write(
    runtime, make_dispatcher, senders, now
):
    """PostgreSQL writes a step's outcomes, sends and attempts in one statement; SQLite in
    four. The same batch (every kind of outcome) through both must leave the same columns."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the one-statement step: PostgreSQL")
    runtime.senders["sms"] = DetailedSender("sms", lambda m: SCENARIOS[m.to[-1]])
    runs = []
    for group, one_statement in (("1", True), ("2", False)):
        rids = [
            due(runtime, now, channels="sms|email", phone=f"+9054310{group}00{digit}")
            for digit in sorted(SCENARIOS)
        ]
        dispatcher = make_dispatcher(dispatch_concurrency=2)
        assert dispatcher._one_statement  # on PostgreSQL
        dispatcher._one_statement = one_statement
        outcomes = dispatcher.run_once(now=now)
        assert outcomes == {"sent": 3, "retry": 2, "in_doubt": 1}
        runs.append(written(runtime, rids))
    assert runs[0] == runs[1]
    assert [len(r["deliveries"]) for r in runs[0]] == [1, 1, 2, 1, 2, 1]
    assert runs[0][5]["deliveries"][0]["error_code"] == "transient"
    failed, accepted = runs[0][2]["deliveries"][0], runs[0][0]["deliveries"][0]
    assert failed["error_message"] == 'unknown "number" \\ ü\nsee ½'
    assert accepted["details"] == DetailedSender.DETAILS


class DetailedSender(RecordingSender):
    """Receipts with details, as the real channels give (segments, encodings, ...)."""

    DETAILS: ClassVar[dict[str, Any]] = {
        "segments": 2,
        "encoding": "UCS-2",
        "note": 'ş "quoted" \\',
        "none": None,
    }

    def send(self, message: OutboundMessage) -> Receipt:
        return dataclasses.replace(super().send(message), details=dict(self.DETAILS))


@pytest.mark.parametrize("one_statement", [True, False], ids=["one-statement", "statements"])
def test_claims_lost_during_a_call_are_found_by_the_step_that_records_it(
    runtime, make_dispatcher, senders, now, one_statement
):
    """Another replica recovers this dispatcher's leases while a call is in flight. The step
    that records the call finds both claims gone: the accepted send settles its (now in-doubt)
    reminder as sent, and the next reminder's attempt is not started (no delivery row, no
    call): it is back in the queue for whoever claims it."""
    if one_statement and runtime.engine.dialect.name != "postgresql":
        pytest.skip("the one-statement step: PostgreSQL")
    first, second = due(runtime, now), due(runtime, now)
    late = now + LEASE + dt.timedelta(seconds=1)
    recovered: list[tuple[int, int, int]] = []

    def lease_recovered_mid_call(_message: OutboundMessage) -> None:
        if not recovered:
            recovered.append(housekeeping(runtime, late))

    senders["sms"].script = lease_recovered_mid_call
    dispatcher = make_dispatcher(dispatch_concurrency=1)  # the second waits for the first
    dispatcher._one_statement = one_statement
    with capture_logs() as logs:
        assert dispatcher.run_once(now=now) == {"sent": 1, "lost_claim": 1}
    assert recovered == [(1, 1, 0)]  # one released, one (the call in flight) in doubt
    settled = [e for e in logs if e["event"] == "claim_lost_settled"]
    with runtime.sessions() as s:
        first_delivery = s.scalars(select(Delivery.id).where(Delivery.reminder_id == first)).one()
    assert [(e["delivery_id"], e["accepted"]) for e in settled] == [(first_delivery, True)]
    assert (row(runtime, first).status, row(runtime, first).claimed_by) == ("sent", None)
    assert deliveries(runtime, first) == [("sms", "accepted", False, None)]
    assert (row(runtime, second).status, row(runtime, second).claimed_by) == ("pending", None)
    assert deliveries(runtime, second) == []
    assert len(senders["sms"].attempts) == 1
    assert dispatcher.run_once(now=late) == {"sent": 1}  # the second, claimed again
    assert [m.reminder_id for m in senders["sms"].sent] == [first, second]


def test_a_send_accepted_after_its_claim_was_lost_settles_it_in_a_step_that_also_gives_back(
    runtime, make_dispatcher, senders, now
):
    """The same lost claims, but the dispatcher is stopping by the time the call ends: the step
    that records it also gives the waiting attempt back, so it is a transaction rather than the
    one statement on its own (PostgreSQL), and the settled line waits for its commit."""
    first, second = due(runtime, now), due(runtime, now)
    late = now + LEASE + dt.timedelta(seconds=1)
    dispatcher = make_dispatcher(dispatch_concurrency=1)

    def lease_recovered_then_stopping(_message: OutboundMessage) -> None:
        if not dispatcher.stopping.is_set():
            housekeeping(runtime, late)
            dispatcher.stopping.set()

    senders["sms"].script = lease_recovered_then_stopping
    with capture_logs() as logs:
        assert dispatcher.run_once(now=now) == {"sent": 1, "released": 1}
    assert row(runtime, first).status == "sent"
    assert deliveries(runtime, first) == [("sms", "accepted", False, None)]
    assert (row(runtime, second).status, deliveries(runtime, second)) == ("pending", [])
    settled = [e["accepted"] for e in logs if e["event"] == "claim_lost_settled"]
    assert settled == [True]
