"""Statements that move one reminder or delivery: claims, lease recovery, the in-doubt rule,
provider feedback. Planning's statements are in :mod:`reminders.plan_store`.

Functions take the session and never commit: the caller owns the transaction. Claiming is one
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING id`` on PostgreSQL; on
SQLite the same single statement runs under the database's one write lock (``BEGIN IMMEDIATE``).
Every change to a claimed reminder checks the claim owner, so a dispatcher that lost its lease
cannot overwrite the work of the one that took over. The dispatcher's bulk statements (a
claimed batch read and its moot reminders ended together, attempts started and outcomes
written many at a time) are in :mod:`reminders.deliveries`, under the same rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.functions import FunctionElement

from reminders.models import (
    Delivery,
    DeliveryEvent,
    DeliveryStatus,
    Reminder,
    ReminderStatus,
    WebhookEvent,
)

RS = ReminderStatus


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


class Likely(FunctionElement[bool]):
    """A condition most rows meet: SQLite's ``likely(...)``, the bare condition elsewhere.
    Untyped, so that SQLite's dialect does not append ``= 1`` as it does to booleans."""

    inherit_cache = True


@compiles(Likely)
def _bare(element: Likely, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(Likely, "sqlite")
def _likely(element: Likely, compiler: SQLCompiler, **kw: Any) -> str:
    return f"likely({compiler.process(element.clauses, **kw)})"


def in_statuses(statuses: Sequence[str]) -> ColumnElement[bool]:
    """``status IN (...)`` written out as literals. For pending and claimed that is the partial
    index ``ix_reminders_upcoming``'s own predicate: PostgreSQL and SQLite both prove it only
    then. Without statistics SQLite takes it for a narrow condition, probes
    ``(status, due_at, id)`` for each status and sorts; ``likely()`` tells it otherwise."""
    return Likely(Reminder.status.in_([literal(str(s), literal_execute=True) for s in statuses]))


class Unindexed(FunctionElement[str]):
    """A column SQLite must not look up by index here (``+column``); the bare column elsewhere."""

    inherit_cache = True


@compiles(Unindexed)
def _column(element: Unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(Unindexed, "sqlite")
def _unindexed(element: Unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return f"+{compiler.process(element.clauses, **kw)}"


UPCOMING = (RS.PENDING, RS.CLAIMED)


def of_patient(patient_id: int) -> ColumnElement[bool]:
    """A patient's reminders: the unclaimed ones on ``ix_reminders_patient`` (its PostgreSQL
    predicate written out, as a literal, so that the planner proves it), the claimed ones, a
    few at any time, on ``ix_reminders_status_due`` (on SQLite the index holds them too). Not
    through the patient's treatments: a reminder sent before its treatment moved to another
    patient stays with the one it was sent to."""
    claimed = literal(str(RS.CLAIMED), literal_execute=True)
    return or_(
        and_(Reminder.patient_id == patient_id, Reminder.status != claimed),
        and_(Reminder.status == claimed, Reminder.patient_id == patient_id),
    )


def waiting(*conditions: ColumnElement[bool]) -> list[ColumnElement[bool]]:
    """Pending reminders, on ``ix_reminders_upcoming`` in ``next_attempt_at, id`` order: its
    predicate, then ``status = 'pending'``, which SQLite would otherwise look up in
    ``(status, due_at, id)`` and then sort every pending reminder."""
    pending = Unindexed(Reminder.status) == literal(str(RS.PENDING), literal_execute=True)
    return [in_statuses(UPCOMING), pending, *conditions]


def claim_due(
    session: Session, owner: str, *, now: dt.datetime, limit: int, lease: dt.timedelta
) -> list[int]:
    """Claim up to ``limit`` due reminders for ``owner`` until ``now + lease``; oldest first.

    Call it in a transaction of its own: on PostgreSQL that transaction commits without waiting
    for its WAL to reach the disk (``synchronous_commit`` off, for this transaction only). A
    claim lost to a server crash just leaves its reminders pending: the dispatcher goes on only
    with the reminders :func:`reminders.deliveries.load_claimed` still finds claimed by it, and
    the commit of their attempts, which waits for the disk before any provider is called,
    writes every earlier commit's WAL first."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NO_FLUSH_WAIT)
    params = {"c_now": now, "c_limit": limit, "c_owner": owner, "c_lease": now + lease}
    return sorted(session.scalars(_CLAIM, params).all())


def _claim_statement() -> ReturningUpdate[int]:
    due = (
        select(Reminder.id)
        .where(*waiting(Reminder.next_attempt_at <= bindparam("c_now")))
        .order_by(Reminder.next_attempt_at, Reminder.id)
        .limit(bindparam("c_limit", type_=Integer))
        .with_for_update(skip_locked=True)
    )
    return (
        update(Reminder)
        .where(Reminder.id.in_(due.scalar_subquery()))
        .values(
            status=RS.CLAIMED, claimed_by=bindparam("c_owner"), lease_until=bindparam("c_lease")
        )
        .returning(Reminder.id)
        # The claim's own transaction holds no reminders to bring up to date: no ORM pass.
        .execution_options(synchronize_session=False)
    )


# Built once: building it and its cache key for every claim cost about as much as its round trip.
_CLAIM = _claim_statement()
_NO_FLUSH_WAIT = text("SET LOCAL synchronous_commit TO OFF")


def _claimed(reminder_id: int, owner: str) -> Any:
    return and_(
        Reminder.id == reminder_id, Reminder.status == RS.CLAIMED, Reminder.claimed_by == owner
    )


def _unclaim(**values: Any) -> dict[str, Any]:
    return {"claimed_by": None, "lease_until": None, **values}


def reschedule(
    session: Session,
    reminder_id: int,
    owner: str,
    *,
    at: dt.datetime,
    count_attempt: bool,
    error: str | None = None,
) -> bool:
    """Put a claimed reminder back in the queue for ``at`` (a retry, or the next send window)."""
    values = _unclaim(status=RS.PENDING, next_attempt_at=at)
    if count_attempt:
        values["attempts"] = Reminder.attempts + 1
    if error is not None:
        values["last_error"] = error[:500]
    result = session.execute(update(Reminder).where(_claimed(reminder_id, owner)).values(**values))
    return bool(getattr(result, "rowcount", 0))


def release(
    session: Session, owner: str, *, now: dt.datetime, grace: dt.timedelta
) -> tuple[int, int]:
    """Give back every reminder ``owner`` holds (shutdown): unsent ones to pending, ones with a
    provider call in flight to in doubt, as lease recovery would. Returns (released, in_doubt)."""
    return release_stale(session, now=now, grace=grace, owner=owner)


def release_stale(
    session: Session, *, now: dt.datetime, grace: dt.timedelta, owner: str | None = None
) -> tuple[int, int]:
    """Recover reminders whose claim lease ran out (their dispatcher died or hung), or every
    claim of ``owner`` when given.

    One with a delivery still ``sending`` may have reached the provider: it becomes *in doubt*
    and waits ``grace`` for a provider callback to settle it. The rest go back to pending.
    Returns (released, in_doubt).
    """
    stale = select(Reminder.id).where(Reminder.status == RS.CLAIMED)
    if owner is None:
        stale = stale.where(Reminder.lease_until < now)
    else:
        stale = stale.where(Reminder.claimed_by == owner)
    stale_ids = list(session.scalars(stale.with_for_update(skip_locked=True)))
    if not stale_ids:
        return 0, 0
    doubtful = set(
        session.scalars(
            update(Delivery)
            .where(Delivery.reminder_id.in_(stale_ids), Delivery.status == DeliveryStatus.SENDING)
            .values(status=DeliveryStatus.IN_DOUBT)
            .returning(Delivery.reminder_id)
        )
    )
    doubtful_deliveries = _deliveries_of(session, doubtful, DeliveryStatus.IN_DOUBT)
    add_events(session, doubtful_deliveries, "housekeeping", now, DeliveryStatus.IN_DOUBT)
    if doubtful:
        session.execute(
            update(Reminder)
            .where(Reminder.id.in_(doubtful))
            .values(**_unclaim(status=RS.IN_DOUBT, next_attempt_at=now + grace))
        )
    plain = [i for i in stale_ids if i not in doubtful]
    if plain:
        session.execute(
            update(Reminder).where(Reminder.id.in_(plain)).values(**_unclaim(status=RS.PENDING))
        )
    return len(plain), len(doubtful)


def _deliveries_of(session: Session, reminder_ids: Iterable[int], status: str) -> list[int]:
    ids = list(reminder_ids)
    if not ids:
        return []
    return list(
        session.scalars(
            select(Delivery.id).where(Delivery.reminder_id.in_(ids), Delivery.status == status)
        )
    )


def resolve_in_doubt(session: Session, *, now: dt.datetime) -> int:
    """The in-doubt rule, after the grace period with no provider word: the attempt counts as
    not delivered (``abandoned``) and the reminder goes back to pending to be sent again.
    At-least-once beats silently losing a reminder; a duplicate can happen only for a send
    that was in flight when its dispatcher died."""
    due = list(
        session.scalars(
            select(Reminder.id)
            .where(Reminder.status == RS.IN_DOUBT, Reminder.next_attempt_at <= now)
            .with_for_update(skip_locked=True)
        )
    )
    if not due:
        return 0
    abandoned = _deliveries_of(session, due, DeliveryStatus.IN_DOUBT)
    session.execute(
        update(Delivery).where(Delivery.id.in_(abandoned)).values(status=DeliveryStatus.ABANDONED)
    )
    add_events(session, abandoned, "housekeeping", now, DeliveryStatus.ABANDONED)
    session.execute(
        update(Reminder)
        .where(Reminder.id.in_(due))
        .values(status=RS.PENDING, next_attempt_at=now, reason=None)
    )
    return len(due)


def settle_in_doubt(
    session: Session, delivery: Delivery, *, accepted: bool, now: dt.datetime
) -> None:
    """A provider callback names an in-doubt delivery: the reminder was sent (or was not)."""
    if accepted:
        session.execute(
            update(Reminder)
            .where(Reminder.id == delivery.reminder_id, Reminder.status == RS.IN_DOUBT)
            .values(status=RS.SENT, channel=delivery.channel, sent_at=now, reason=None)
        )
    else:
        session.execute(
            update(Reminder)
            .where(Reminder.id == delivery.reminder_id, Reminder.status == RS.IN_DOUBT)
            .values(status=RS.PENDING, next_attempt_at=now)
        )


def start_delivery(
    session: Session, reminder_id: int, *, channel: str, address: str, now: dt.datetime
) -> Delivery:
    """The attempt row, written (and committed by the caller) before the provider is called."""
    delivery = Delivery(
        reminder_id=reminder_id, channel=channel, address=address, status=DeliveryStatus.SENDING
    )
    session.add(delivery)
    session.flush()
    add_events(session, [delivery.id], "dispatch", now, DeliveryStatus.SENDING)
    return delivery


def add_events(
    session: Session,
    delivery_ids: Iterable[int],
    source: str,
    now: dt.datetime,
    status: str | None = None,
    error_code: str | None = None,
) -> None:
    rows = [
        {
            "delivery_id": i,
            "status": status,
            "source": source,
            "occurred_at": now,
            "error_code": error_code,
        }
        for i in delivery_ids
    ]
    if rows and status is not None:
        session.execute(_insert(session)(DeliveryEvent), rows)


def due_depth(session: Session, now: dt.datetime) -> int:
    """How many reminders are due and not yet sent (a gauge for ops)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Reminder)
            .where(*waiting(Reminder.next_attempt_at <= now))
        )
        or 0
    )


# Provider feedback (webhooks): :mod:`reminders.feedback` decides, these statements move.


def find_delivery(
    session: Session, *, public_id: str | None, provider_ids: Iterable[str], channels: Iterable[str]
) -> Delivery | None:
    """The delivery a provider callback names: by our unguessable id, else by the provider's
    message id; only among ``channels``. Locked, and its reminder before it: the order dispatch
    (:func:`reminders.deliveries.held`) and housekeeping take them in, so a callback that comes
    while its send's outcome is being written waits for that commit instead of deadlocking."""
    base = select(Delivery.id, Delivery.reminder_id).where(Delivery.channel.in_(list(channels)))
    ids = [i for i in provider_ids if i]
    for where in (
        Delivery.public_id == public_id if public_id else None,
        Delivery.provider_message_id.in_(ids) if ids else None,
    ):
        if where is None:
            continue
        found = session.execute(base.where(where).order_by(Delivery.id).limit(1)).first()
        if found is not None:
            session.execute(
                select(Reminder.id).where(Reminder.id == found.reminder_id).with_for_update()
            )
            locked = select(Delivery).where(Delivery.id == found.id).with_for_update()
            return session.scalars(locked.execution_options(populate_existing=True)).one()
    return None


def latest_delivery_id(session: Session, reminder_id: int) -> int | None:
    latest = select(func.max(Delivery.id)).where(Delivery.reminder_id == reminder_id)
    return session.scalar(latest)


def advance_delivery(
    session: Session,
    delivery: Delivery,
    *,
    status: str,
    from_statuses: Iterable[str],
    source: str,
    now: dt.datetime,
    provider_id: str | None = None,
    **values: Any,
) -> bool:
    """Move a delivery to ``status`` if it is in one of ``from_statuses`` (so repeated and
    reordered callbacks never move it back), recording the event; keep the provider's id on a
    delivery that has none (its sender died before recording it). ``values``: error columns."""
    if provider_id and not delivery.provider_message_id:
        session.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.provider_message_id.is_(None))
            .values(provider_message_id=provider_id[:128])
        )
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.status.in_(list(from_statuses)))
        .values(status=status, updated_at=now, **values)
    )
    moved = bool(getattr(result, "rowcount", 0))
    if moved:
        add_events(session, [delivery.id], source, now, status, values.get("error_code"))
    return moved


def confirm_sent(
    session: Session,
    reminder_id: int,
    *,
    from_statuses: Iterable[str],
    channel: str,
    now: dt.datetime,
) -> bool:
    """A provider says the reminder's attempt went out: it is sent, whoever held it."""
    result = session.execute(
        update(Reminder)
        .where(Reminder.id == reminder_id, Reminder.status.in_(list(from_statuses)))
        .values(**_unclaim(status=RS.SENT, channel=channel, sent_at=now, reason=None))
    )
    return bool(getattr(result, "rowcount", 0))


def reopen(
    session: Session,
    reminder_id: int,
    *,
    from_statuses: Iterable[str],
    at: dt.datetime,
    count_attempt: bool,
    error: str,
) -> bool:
    """A provider reports a late failure: the reminder is due again at ``at`` (a retry, or a
    fallback that the dispatcher resolves to the next channel)."""
    values = _unclaim(
        status=RS.PENDING, next_attempt_at=at, sent_at=None, channel=None, last_error=error[:500]
    )
    if count_attempt:
        values["attempts"] = Reminder.attempts + 1
    result = session.execute(
        update(Reminder)
        .where(Reminder.id == reminder_id, Reminder.status.in_(list(from_statuses)))
        .values(**values)
    )
    return bool(getattr(result, "rowcount", 0))


def conclude(
    session: Session,
    reminder_id: int,
    *,
    from_statuses: Iterable[str],
    status: RS,
    reason: str | None,
    error: str,
) -> bool:
    """End a reminder after a late failure (failed or expired), or only note the error
    (``status`` sent: it was accepted, and it is too late to try again)."""
    values = _unclaim(status=status, last_error=error[:500])
    if reason is not None:
        values["reason"] = reason
    result = session.execute(
        update(Reminder)
        .where(Reminder.id == reminder_id, Reminder.status.in_(list(from_statuses)))
        .values(**values)
    )
    return bool(getattr(result, "rowcount", 0))


def first_seen(session: Session, source: str, event_id: str, now: dt.datetime) -> bool:
    """Record a provider event id; False when it was already processed (a repeat)."""
    stmt = (
        _insert(session)(WebhookEvent)
        .values(source=source, event_id=event_id[:128], received_at=now)
        .on_conflict_do_nothing()
        .returning(WebhookEvent.id)
    )
    return session.execute(stmt).first() is not None


def in_doubt_depth(session: Session) -> int:
    """How many reminders wait for a provider's word after a crash (a gauge for ops)."""
    count = select(func.count()).select_from(Reminder).where(Reminder.status == RS.IN_DOUBT)
    return int(session.scalar(count) or 0)
