"""The outbox: reminders by state, a staff retry or cancel, and tomorrow's forecast.

A view is read a page at a time by keyset, never by OFFSET and never with a total count: the
upcoming view in send order ``(next_attempt_at, id)`` over the partial index
``ix_reminders_upcoming``, every other view newest due first ``(due_at desc, id desc)`` over
``ix_reminders_status_due (status, due_at, id)``. A page link carries the sort key of the row it
continues from (``after=`` for the next page, ``before=`` for the previous one), so each page
reads about a page of rows however deep it is and however many millions the view holds.

Retry and cancel are single conditional UPDATEs (the reminder must still be in a state that
allows it), so a dispatcher that claims the row at the same moment wins cleanly and the staff
member is told. They belong with the other reminder moves in ``reminders.queries``; they live
here until that module takes them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from reminders.models import AuditEntry, Patient, Reminder, ReminderStatus
from reminders.planning import at_local
from reminders.queries import in_statuses, waiting

RS = ReminderStatus
VIEWS: dict[str, tuple[RS, ...]] = {
    "upcoming": (RS.PENDING, RS.CLAIMED),
    "sent": (RS.SENT,),
    "failed": (RS.FAILED,),
    "in_doubt": (RS.IN_DOUBT,),
    "expired": (RS.EXPIRED,),
    "cancelled": (RS.CANCELLED,),
}
RETRYABLE = (RS.FAILED, RS.EXPIRED, RS.CANCELLED)
CANCELLABLE = (RS.PENDING, RS.IN_DOUBT)
PAGE_SIZE = 50
_CURSOR_MAX = 64  # characters: "2026-03-04T07:00:00.123456Z,2147483647" is 38
_MAX_ID = 2**31 - 1  # ids are INTEGER: PostgreSQL refuses a larger number to compare them with


@dataclass(frozen=True)
class Filters:
    view: str = "upcoming"
    channel: str = ""
    protocol: str = ""
    step: str = ""
    since: dt.date | None = None  # clinic-local due dates
    until: dt.date | None = None

    def query(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "channel": self.channel,
            "protocol": self.protocol,
            "step": self.step,
            "since": self.since,
            "until": self.until,
        }


@dataclass(frozen=True)
class Cursor:
    """The sort key of one row of a view: when (next attempt or due) and the reminder id."""

    at: dt.datetime
    id: int

    def __str__(self) -> str:
        return f"{self.at.astimezone(dt.UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')},{self.id}"

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        """``<ISO instant with its offset>,<id>``, as :meth:`__str__` writes it; ValueError
        for anything else."""
        when, comma, number = raw.strip().rpartition(",")
        if not (comma and raw.isascii() and number.isdigit()) or len(raw) > _CURSOR_MAX:
            raise ValueError(raw)
        at = dt.datetime.fromisoformat(when)
        if at.tzinfo is None or not 0 < int(number) <= _MAX_ID:
            raise ValueError(raw)
        try:
            return cls(at.astimezone(dt.UTC), int(number))
        except OverflowError:  # an offset that takes year 1 out of range
            raise ValueError(raw) from None


@dataclass
class Window:
    """One page of a view, with the cursors of the pages either side (None: no such page)."""

    rows: list[Any] = field(default_factory=list)
    previous: Cursor | None = None  # link with before=previous
    next: Cursor | None = None  # link with after=next
    first: bool = True  # the view's first page


def _key(view: str) -> tuple[InstrumentedAttribute[dt.datetime], bool]:
    """The view's sort column and whether it runs newest first (then ``id`` in the same way)."""
    return (Reminder.next_attempt_at, False) if view == "upcoming" else (Reminder.due_at, True)


def _in_view(view: str) -> ColumnElement[bool]:
    statuses = VIEWS[view]
    if len(statuses) == 1:
        return Reminder.status == statuses[0]
    return in_statuses(statuses)


def statement(filters: Filters, zone: ZoneInfo) -> Select[Reminder, str, str, str]:
    """The view's rows with their patients' names, filtered, in no particular order."""
    view = filters.view if filters.view in VIEWS else "upcoming"
    stmt = (
        select(Reminder, Patient.given_name, Patient.family_name, Patient.external_id)
        .join(Patient, Patient.id == Reminder.patient_id)
        .where(_in_view(view))
    )
    if filters.channel:
        stmt = stmt.where(Reminder.channel == filters.channel)
    if filters.protocol:
        stmt = stmt.where(Reminder.protocol == filters.protocol)
    if filters.step:
        stmt = stmt.where(Reminder.step == filters.step)
    if filters.since:
        stmt = stmt.where(Reminder.due_at >= at_local(filters.since, dt.time(0), zone))
    if filters.until:
        end = at_local(filters.until + dt.timedelta(days=1), dt.time(0), zone)
        stmt = stmt.where(Reminder.due_at < end)
    return stmt


def _slice(
    stmt: Select[Reminder, str, str, str],
    view: str,
    *,
    past: Cursor | None,
    backwards: bool,
    limit: int,
) -> Select[Reminder, str, str, str]:
    """``limit`` rows of the view beyond ``past`` in its display order (or, ``backwards``,
    before it, nearest first). The extra range term on the sort column alone lets both
    planners start the index scan at the cursor; the OR settles ties on the instant by id."""
    column, newest_first = _key(view)
    descending = newest_first != backwards
    if past is not None:
        if descending:
            stmt = stmt.where(
                column <= past.at,
                or_(column < past.at, and_(column == past.at, Reminder.id < past.id)),
            )
        else:
            stmt = stmt.where(
                column >= past.at,
                or_(column > past.at, and_(column == past.at, Reminder.id > past.id)),
            )
    if descending:
        stmt = stmt.order_by(column.desc(), Reminder.id.desc())
    else:
        stmt = stmt.order_by(column, Reminder.id)
    return stmt.limit(limit)


def cursor_of(view: str, reminder: Reminder) -> Cursor:
    column, _ = _key(view)
    return Cursor(getattr(reminder, column.key), reminder.id)


def page(
    session: Session,
    filters: Filters,
    zone: ZoneInfo,
    *,
    after: Cursor | None = None,
    before: Cursor | None = None,
    size: int = PAGE_SIZE,
) -> Window:
    """A page of the view: the first, the one after ``after`` or the one before ``before``.
    One query of ``size + 1`` rows (the extra row only tells whether more follow); going back
    past the start takes a second one, to show the first page whole."""
    view = filters.view if filters.view in VIEWS else "upcoming"
    stmt = statement(filters, zone)
    if before is not None:
        back = _slice(stmt, view, past=before, backwards=True, limit=size + 1)
        found = list(session.execute(back).all())
        if len(found) > size:
            rows = found[:size][::-1]
            return Window(
                rows, cursor_of(view, rows[0][0]), cursor_of(view, rows[-1][0]), first=False
            )
        after = None  # nothing further back: this is the first page
    found = list(session.execute(_slice(stmt, view, past=after, backwards=False, limit=size + 1)))
    rows = found[:size]
    window = Window(rows, first=after is None)
    if after is not None and rows:
        window.previous = cursor_of(view, rows[0][0])
    if len(found) > size:
        window.next = cursor_of(view, rows[-1][0])
    return window


def _audit(session: Session, actor: str, action: str, reminder_id: int, now: dt.datetime) -> None:
    session.add(
        AuditEntry(actor=actor, action=action, subject=f"reminder:{reminder_id}", occurred_at=now)
    )


def retry(session: Session, reminder_id: int, *, actor: str, now: dt.datetime) -> bool:
    """Put a failed, expired or cancelled reminder back in the queue now, with a fresh
    attempt budget. A sent one never goes again. False if it is not in such a state, or its
    step has passed (it would only expire again)."""
    result = session.execute(
        update(Reminder)
        .where(
            Reminder.id == reminder_id,
            Reminder.status.in_(RETRYABLE),
            Reminder.expires_at > now,
        )
        .values(
            status=RS.PENDING,
            reason=None,
            next_attempt_at=now,
            attempts=0,
            claimed_by=None,
            lease_until=None,
        )
    )
    done = bool(getattr(result, "rowcount", 0))
    if done:
        _audit(session, actor, "reminder.retry", reminder_id, now)
    return done


def cancel(session: Session, reminder_id: int, *, actor: str, now: dt.datetime) -> bool:
    """Cancel a pending or in-doubt reminder (reason ``staff``); False if it is in another state
    (a claimed one is being sent at this moment)."""
    result = session.execute(
        update(Reminder)
        .where(Reminder.id == reminder_id, Reminder.status.in_(CANCELLABLE))
        .values(status=RS.CANCELLED, reason="staff", claimed_by=None, lease_until=None)
    )
    done = bool(getattr(result, "rowcount", 0))
    if done:
        _audit(session, actor, "reminder.cancel", reminder_id, now)
    return done


def tomorrow(now: dt.datetime, zone: ZoneInfo) -> tuple[dt.date, dt.datetime, dt.datetime]:
    """Tomorrow's clinic-local date and its start and end as UTC instants."""
    day = now.astimezone(zone).date() + dt.timedelta(days=1)
    return (
        day,
        at_local(day, dt.time(0), zone),
        at_local(day + dt.timedelta(days=1), dt.time(0), zone),
    )


def forecast_counts(
    session: Session, start: dt.datetime, end: dt.datetime
) -> list[tuple[str, str, int]]:
    """Pending reminders due in [start, end): (protocol, step, count)."""
    stmt = (
        select(Reminder.protocol, Reminder.step, func.count())
        .where(*waiting(Reminder.next_attempt_at >= start, Reminder.next_attempt_at < end))
        .group_by(Reminder.protocol, Reminder.step)
        .order_by(Reminder.protocol, Reminder.step)
    )
    return [(p, s, n) for p, s, n in session.execute(stmt)]


def forecast_rows(
    session: Session, start: dt.datetime, end: dt.datetime, *, offset: int, limit: int
) -> list[tuple[Reminder, Patient]]:
    stmt = (
        select(Reminder, Patient)
        .join(Patient, Patient.id == Reminder.patient_id)
        .where(*waiting(Reminder.next_attempt_at >= start, Reminder.next_attempt_at < end))
        .order_by(Reminder.next_attempt_at, Reminder.id)
        .offset(offset)
        .limit(limit)
    )
    return [(r, p) for r, p in session.execute(stmt)]
