"""Bulk work for big batches: lookups by many values in few statements, and the rows and
dates the set-based planner (:mod:`reminders.planner`) writes."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import QueryableAttribute, Session

from reminders.models import Patient, ReminderStatus
from reminders.planning import PlannedReminder, step_date, window_for
from reminders.protocols import Protocol

CHUNK = 5000  # values per lookup statement (SQLite allows 32766 parameters)
# An import that writes at least this many rows refreshes the planner statistics of what it
# wrote (see :func:`analyze`).
ANALYZE_ROWS = 10_000
T = TypeVar("T")
Group = tuple[int, str]  # (patient id, protocol)


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def among(
    session: Session, column: QueryableAttribute[Any], values: Sequence[Any]
) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``= ANY(array)`` with one parameter, so a lookup of
    thousands of values stays a short statement (the driver parses every statement's text)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))


def analyze(session: Session, *tables: str) -> None:
    """Fresh PostgreSQL planner statistics for ``tables``, which an import has just filled:
    without them a first import's lookups are planned for the empty tables the statistics
    still describe (1M treatments after 250k new patients: 57.5 s without, 46.3 s with).
    Inside the import's transaction, whose rows ANALYZE counts; autovacuum would get there
    only after the commit. SQLite plans without such statistics."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ANALYZE " + ", ".join(tables)))


def patient_ids(session: Session, external_ids: Iterable[str]) -> dict[str, int]:
    """Stored patients' ids by external id (unknown ones are left out)."""
    found: dict[str, int] = {}
    for chunk in chunks(sorted(set(external_ids))):
        rows = session.execute(
            select(Patient.external_id, Patient.id).where(
                among(session, Patient.external_id, chunk)
            )
        )
        found.update((row[0], row[1]) for row in rows)
    return found


def reminder_row(
    treatment_id: int, patient_id: int, protocol: str, planned: PlannedReminder
) -> dict[str, Any]:
    return {
        "treatment_id": treatment_id,
        "patient_id": patient_id,
        "protocol": protocol,
        "step": planned.step,
        "status": ReminderStatus.PENDING,
        "due_at": planned.due_at,
        "expires_at": planned.expires_at,
        "next_attempt_at": planned.due_at,
        "attempts": 0,
    }


@functools.lru_cache(maxsize=4096)
def last_step(protocol: Protocol, administered_on: dt.date) -> dt.date:
    """The date of the cycle's last step (no travel lead), remembered by value like
    :func:`reminders.planning.schedule`: planning asks it of every group, with a few thousand
    distinct answers."""
    window = window_for(protocol, administered_on)
    return max(step_date(step, window, 0) for step in protocol.steps)
