"""Bulk work for big batches: lookups by many values, and planning brand-new groups at once.

A first import is mostly treatments of (patient, protocol) groups that have nothing stored
yet; :func:`plan_fresh` hands them to the set-based planner
(:func:`reminders.planner.plan_groups`), which costs a few statements per batch of groups.
``tests/test_import_csv.py`` checks that the result equals the planner's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import QueryableAttribute, Session

from reminders.models import Patient, ReminderStatus, Treatment
from reminders.planning import PlannedReminder, step_date, window_for
from reminders.protocols import Protocol
from reminders.runtime import Runtime

CHUNK = 5000  # values per lookup statement (SQLite allows 32766 parameters)
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


def fresh_groups(session: Session, new: list[dict[str, Any]]) -> set[Group]:
    """The (patient, protocol) groups of new treatments that have no stored treatment yet."""
    groups = {(v["patient_id"], v["protocol"]) for v in new}
    if not groups:
        return set()
    stored = session.execute(
        select(Treatment.patient_id, Treatment.protocol)
        .where(among(session, Treatment.patient_id, sorted({g[0] for g in groups})))
        .distinct()
    )
    return groups - {(r[0], r[1]) for r in stored}


def latest_of(new: list[dict[str, Any]], groups: set[Group]) -> dict[Group, dict[str, Any]]:
    """Each group's latest new treatment, in the planner's order (date, then insertion)."""
    latest: dict[Group, dict[str, Any]] = {}
    for values in new:
        group = (values["patient_id"], values["protocol"])
        if (
            group in groups
            and values["administered_on"] >= latest.get(group, values)["administered_on"]
        ):
            latest[group] = values
    return latest


def plan_fresh(
    session: Session, runtime: Runtime, latest: dict[Group, dict[str, Any]], now: dt.datetime
) -> None:
    """Plan brand-new groups (``latest``: each group's latest new treatment) in bulk. The
    set-based planner (:func:`reminders.planner.plan_groups`) plans them with a few statements
    per batch, a history (every step past) loading no patient; this stays for callers that
    know their groups are new. ``tests/test_import_csv.py`` checks the result equals the
    planner's."""
    from reminders.planner import plan_groups  # the planner uses this module's lookups

    plan_groups(session, runtime, latest, now=now)


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


def treatment_ids(session: Session, external_ids: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in chunks(sorted(set(external_ids))):
        rows = session.execute(
            select(Treatment.external_id, Treatment.id).where(
                among(session, Treatment.external_id, chunk)
            )
        )
        found.update((row[0], row[1]) for row in rows)
    return found


def last_step(protocol: Protocol, administered_on: dt.date) -> dt.date:
    window = window_for(protocol, administered_on)
    return max(step_date(step, window, 0) for step in protocol.steps)
