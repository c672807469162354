"""Numbers for the staff dashboard: sends and delivery rate by channel, and adherence.

Both are aggregated in the database (the tables can be large) and only the small grouped result
comes back to Python. Sends are grouped by UTC hour in SQL and folded into clinic-local days
here, so days follow the clinic's clock through DST on both backends.

Adherence: for consecutive treatments of a patient under a protocol, did the next one come
inside the window of the previous one ([administered + min, administered + max])? A cycle is
``on_time``, ``early``, ``late``, or ``missed`` (no next treatment and the window has closed);
one whose window is still open with no next treatment is not counted yet. Cycles are grouped
by protocol and by the month their window opened.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, case, cast, func, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from reminders.models import Delivery, DeliveryStatus, Reminder, ReminderStatus, Treatment
from reminders.protocols import Protocol

DS = DeliveryStatus
DELIVERED = (DS.DELIVERED, DS.READ)
FAILED = (DS.FAILED, DS.UNDELIVERED, DS.ABANDONED)
OUTCOMES = ("on_time", "early", "late", "missed")


@dataclass
class ChannelDay:
    """Delivery attempts on one channel on one clinic-local day."""

    day: dt.date
    channel: str
    sent: int = 0
    delivered: int = 0
    failed: int = 0

    @property
    def delivery_rate(self) -> float | None:
        return self.delivered / self.sent if self.sent else None


@dataclass
class AdherenceMonth:
    protocol: str
    month: str  # YYYY-MM in which the windows opened
    on_time: int = 0
    early: int = 0
    late: int = 0
    missed: int = 0

    @property
    def settled(self) -> int:
        return self.on_time + self.early + self.late + self.missed

    @property
    def rate(self) -> float | None:
        return self.on_time / self.settled if self.settled else None


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _hour(session: Session, column: Any) -> Any:
    if _dialect(session) == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24")
    return func.strftime("%Y-%m-%d %H", column)


def deliveries_by_day(
    session: Session, *, since: dt.datetime, until: dt.datetime, zone: ZoneInfo
) -> list[ChannelDay]:
    """Attempts, delivered and failed per channel per local day in [since, until)."""
    kind = case(
        (Delivery.status.in_(DELIVERED), "delivered"),
        (Delivery.status.in_(FAILED), "failed"),
        else_="other",
    )
    hour = _hour(session, Delivery.created_at)
    rows = session.execute(
        select(hour, Delivery.channel, kind, func.count())
        .where(Delivery.created_at >= since, Delivery.created_at < until)
        .group_by(hour, Delivery.channel, kind)
    )
    days: dict[tuple[dt.date, str], ChannelDay] = {}
    for stamp, channel, outcome, count in rows:
        moment = dt.datetime.strptime(stamp, "%Y-%m-%d %H").replace(tzinfo=dt.UTC)
        day = moment.astimezone(zone).date()
        entry = days.setdefault((day, channel), ChannelDay(day, channel))
        entry.sent += count
        if outcome in ("delivered", "failed"):
            setattr(entry, outcome, getattr(entry, outcome) + count)
    return sorted(days.values(), key=lambda d: (d.day, d.channel))


def _by_protocol(protocols: Mapping[str, Protocol], attribute: str) -> ColumnElement[Any]:
    whens = [(Treatment.protocol == code, getattr(p, attribute)) for code, p in protocols.items()]
    return case(*whens, else_=0)


def _plus_days(session: Session, day: Any, days: Any) -> Any:
    if _dialect(session) == "postgresql":
        return cast(day + days, Date)
    return func.date(day, func.printf("+%d days", days))


def _month(session: Session, day: Any) -> Any:
    if _dialect(session) == "postgresql":
        return func.to_char(day, "YYYY-MM")
    return func.strftime("%Y-%m", day)


def adherence(
    session: Session,
    protocols: Mapping[str, Protocol],
    *,
    first_month: dt.date,
    today: dt.date,
) -> list[AdherenceMonth]:
    """Cycles whose window opened between ``first_month`` (its 1st) and ``today``."""
    if not protocols:
        return []
    start = first_month.replace(day=1)
    earliest = start - dt.timedelta(days=max(p.min_interval_days for p in protocols.values()))
    following = func.lead(Treatment.administered_on).over(
        partition_by=(Treatment.patient_id, Treatment.protocol),
        order_by=(Treatment.administered_on, Treatment.id),
    )
    cycles = (
        select(
            Treatment.protocol.label("protocol"),
            _plus_days(
                session, Treatment.administered_on, _by_protocol(protocols, "min_interval_days")
            ).label("opens"),
            _plus_days(
                session, Treatment.administered_on, _by_protocol(protocols, "max_interval_days")
            ).label("closes"),
            following.label("next_on"),
        )
        .where(
            Treatment.deleted_at.is_(None),
            Treatment.protocol.in_(list(protocols)),
            Treatment.administered_on >= earliest,
        )
        .subquery()
    )
    today_ = literal(today, Date)
    outcome = case(
        (cycles.c.next_on.is_(None) & (cycles.c.closes >= today_), "open"),
        (cycles.c.next_on.is_(None), "missed"),
        (cycles.c.next_on < cycles.c.opens, "early"),
        (cycles.c.next_on > cycles.c.closes, "late"),
        else_="on_time",
    )
    month = _month(session, cycles.c.opens)
    rows = session.execute(
        select(cycles.c.protocol, month, outcome, func.count())
        .where(cycles.c.opens >= literal(start, Date), cycles.c.opens <= today_)
        .group_by(cycles.c.protocol, month, outcome)
    )
    found: dict[tuple[str, str], AdherenceMonth] = {}
    for protocol, month_, result, count in rows:
        if result in OUTCOMES:
            entry = found.setdefault((protocol, month_), AdherenceMonth(protocol, month_))
            setattr(entry, result, getattr(entry, result) + count)
    return sorted(found.values(), key=lambda a: (a.protocol, a.month))


def months_between(first: dt.date, last: dt.date) -> list[str]:
    """``YYYY-MM`` for every month from ``first`` to ``last``, inclusive."""
    months, year, month = [], first.year, first.month
    while (year, month) <= (last.year, last.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def reminder_counts(session: Session) -> dict[str, int]:
    """Reminders by status right now (for the dashboard tiles)."""
    rows = session.execute(
        select(Reminder.status, func.count())
        .where(Reminder.status.in_([s.value for s in ReminderStatus if s != ReminderStatus.SENT]))
        .group_by(Reminder.status)
    )
    counts: defaultdict[str, int] = defaultdict(int)
    for status, count in rows:
        counts[status] = count
    return dict(counts)
