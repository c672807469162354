"""The outbox: reminders by state, a staff retry or cancel, and tomorrow's forecast.

Retry and cancel are single conditional UPDATEs (the reminder must still be in a state that
allows it), so a dispatcher that claims the row at the same moment wins cleanly and the staff
member is told. They belong with the other reminder moves in ``reminders.queries``; they live
here until that module takes them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from reminders.models import AuditEntry, Patient, Reminder, ReminderStatus
from reminders.planning import at_local

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


def statement(filters: Filters, zone: ZoneInfo) -> Select[Reminder, str, str, str]:
    stmt = (
        select(Reminder, Patient.given_name, Patient.family_name, Patient.external_id)
        .join(Patient, Patient.id == Reminder.patient_id)
        .where(Reminder.status.in_(VIEWS.get(filters.view, VIEWS["upcoming"])))
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
    if filters.view == "upcoming":
        return stmt.order_by(Reminder.next_attempt_at, Reminder.id)
    return stmt.order_by(Reminder.due_at.desc(), Reminder.id.desc())


def rows(
    session: Session, filters: Filters, zone: ZoneInfo, *, offset: int, limit: int
) -> list[Any]:
    return list(session.execute(statement(filters, zone).offset(offset).limit(limit)).all())


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
        .where(
            Reminder.status == RS.PENDING,
            Reminder.next_attempt_at >= start,
            Reminder.next_attempt_at < end,
        )
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
        .where(
            Reminder.status == RS.PENDING,
            Reminder.next_attempt_at >= start,
            Reminder.next_attempt_at < end,
        )
        .order_by(Reminder.next_attempt_at, Reminder.id)
        .offset(offset)
        .limit(limit)
    )
    return [(r, p) for r, p in session.execute(stmt)]
