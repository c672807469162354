"""Bulk work for big batches: lookups by many values in few statements, and the rows and
dates the set-based planner (:mod:`reminders.planner`) writes."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Text, any_, bindparam, cast, func, select, text
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
        return column == any_(pg_array(column, values))
    return column.in_(list(values))


_SEPARATOR = "\x1f"  # a control character: no checked text holds one


def pg_array(column: QueryableAttribute[Any], values: Sequence[Any]) -> ColumnElement[Any]:
    """``values`` as one PostgreSQL array parameter for ``column``. Integers, and non-empty
    text without the separator, go as one string that the server splits: the driver dumps an
    array's elements one by one in Python (1.5-2 ms for 2,000, on the connection's thread,
    twice per chunk of an import), where joining them takes a tenth of that."""
    if values and all(type(v) is int for v in values):
        joined = ",".join(map(str, values))
        split = func.string_to_array(bindparam(None, joined, type_=Text), ",")
        return cast(split, ARRAY(column.type))
    if values and all(type(v) is str and v and _SEPARATOR not in v for v in values):
        joined = _SEPARATOR.join(values)
        split = func.string_to_array(bindparam(None, joined, type_=Text), _SEPARATOR)
        return cast(split, ARRAY(Text))  # text, never cut to the column's length
    return bindparam(None, list(values), type_=ARRAY(column.type))


def copy_value(value: object) -> str:
    """One value in PostgreSQL COPY's text format: NULL as ``\\N``; text with backslash, tab,
    newline and carriage return escaped; booleans as ``t``/``f``; dates and aware datetimes
    in ISO 8601 (with their offset: the session's time zone plays no part). COPY text made
    here, by a thread that is not the connection's, leaves that thread only to send it."""
    if type(value) is str:  # the exact types first: 8 values a row of an import
        return copy_text(value)
    kind = type(value)
    if kind is dt.date or kind is Decimal or kind is int:
        return str(value)
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return copy_text(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.isoformat()
    if isinstance(value, int | Decimal | dt.date):
        return str(value)
    raise TypeError(f"no COPY text for {type(value).__name__}")


def copy_text(value: str) -> str:
    """Text in COPY's text format: backslash, tab, newline and carriage return escaped. Most
    text has none of them (checked text has no control characters), and is returned as is."""
    if "\\" not in value and value.isprintable():  # no tab, newline or carriage return
        return value
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


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
