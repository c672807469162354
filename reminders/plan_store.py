"""The statements of set-based planning: a batch of (patient, protocol) groups is read with a
few queries and written with a few, whatever its size.

:mod:`reminders.planner` decides in Python (with the pure :mod:`reminders.planning`) between
the reads and the writes. Lookups of many values go in chunks of at most
:data:`reminders.importing.bulk.CHUNK` values (SQLite's parameter limit); on PostgreSQL each
is one array parameter (:func:`reminders.importing.bulk.among`, or a join with ``unnest``
where the planner would otherwise scan a whole table: :func:`_keyed`). Functions take the
session and never commit: the caller owns the transaction. Writes go around the ORM, so
objects of the caller's session that they touch are brought up to date here.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple, cast

import psycopg
from sqlalchemy import (
    Executable,
    Integer,
    String,
    Table,
    bindparam,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Result
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import Select
from sqlalchemy.types import TypeEngine

from reminders.db import UTCDateTime, utcnow
from reminders.importing.bulk import among, chunks, copy_value, pg_array
from reminders.models import (
    Channel,
    Consent,
    Patient,
    Reminder,
    ReminderStatus,
    Treatment,
    channel_address,
    channel_order,
)

RS = ReminderStatus
Group = tuple[int, str]  # (patient id, protocol)
# Cancellations that a later plan may undo (the reason went away); staff and sent ones stay.
REVERSIBLE_REASONS = ("superseded", "inactive", "no_channel", "deleted", "replanned")
REMINDERS = cast(Table, Reminder.__table__)


class TreatmentRow(NamedTuple):
    id: int
    patient_id: int
    protocol: str
    administered_on: dt.date
    deleted_at: dt.datetime | None
    needs_plan: bool


class ReminderRow(NamedTuple):
    id: int
    treatment_id: int
    step: str
    status: str
    reason: str | None
    due_at: dt.datetime
    expires_at: dt.datetime

    @property
    def reopenable(self) -> bool:
        return self.status == RS.CANCELLED and self.reason in REVERSIBLE_REASONS


def groups_to_plan(session: Session, limit: int) -> list[Group]:
    """(patient, protocol) groups that have a treatment waiting to be planned."""
    rows = session.execute(
        select(Treatment.patient_id, Treatment.protocol)
        .where(Treatment.needs_plan)
        .group_by(Treatment.patient_id, Treatment.protocol)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows]


def treatments_of(session: Session, groups: Collection[Group]) -> list[TreatmentRow]:
    """Every treatment of these groups' patients under these groups' protocols, deleted ones
    included, in no order: a few more than the groups' own (a patient's other protocol of the
    batch), which :func:`by_group` leaves out."""
    codes = sorted({g[1] for g in groups})
    found: list[TreatmentRow] = []
    for chunk in chunks(sorted({g[0] for g in groups})):
        rows = session.execute(
            select(
                Treatment.id,
                Treatment.patient_id,
                Treatment.protocol,
                Treatment.administered_on,
                Treatment.deleted_at,
                Treatment.needs_plan,
            ).where(
                among(session, Treatment.patient_id, chunk),
                among(session, Treatment.protocol, codes),
            )
        )
        found.extend(map(TreatmentRow._make, rows))
    return found


def by_group(
    treatments: Iterable[TreatmentRow], groups: Collection[Group]
) -> dict[Group, list[TreatmentRow]]:
    """The treatments of each of ``groups``, latest first (date administered, then id); a
    group without any is left out."""
    wanted = set(groups)
    found: dict[Group, list[TreatmentRow]] = {}
    for treatment in treatments:
        group = (treatment.patient_id, treatment.protocol)
        if group in wanted:
            found.setdefault(group, []).append(treatment)
    latest_first = itemgetter(3, 0)  # administered_on, id
    for found_here in found.values():
        found_here.sort(key=latest_first, reverse=True)
    return found


@dataclass(frozen=True)
class ConsentView:
    usable: bool


@dataclass(slots=True)
class Contact:
    """What planning reads of a patient (:class:`reminders.models.Patient` answers the same:
    ``tests/test_planner.py`` checks), read as plain columns: ORM objects cost several times
    more, and the caller's changes are flushed before planning reads."""

    id: int
    timezone: str
    travel_lead_days: int
    active: bool
    channels: str
    email: str | None
    phone: str | None
    whatsapp: str | None
    consents: dict[str, ConsentView]

    @property
    def channel_order(self) -> list[Channel]:
        return list(channel_order(self.channels))

    def address(self, channel: Channel) -> str | None:
        return channel_address(channel, self.email, self.phone, self.whatsapp)

    def consent(self, channel: Channel) -> ConsentView | None:
        return self.consents.get(channel)


# A consent as planning sees it is usable or not: two shared (frozen) values, not an object a row.
_USABLE, _UNUSABLE = ConsentView(True), ConsentView(False)


def contacts_by_id(session: Session, ids: Iterable[int]) -> dict[int, Contact]:
    """The patients with their consents, as :class:`Contact` (two queries per chunk)."""
    found: dict[int, Contact] = {}
    for chunk in chunks(sorted(set(ids))):
        consents: dict[int, dict[str, ConsentView]] = {}
        for patient_id, channel, granted, opted_out_at in _keyed(
            session,
            select(Consent.patient_id, Consent.channel, Consent.granted, Consent.opted_out_at),
            Consent.patient_id,
            chunk,
        ):
            usable = _USABLE if granted and opted_out_at is None else _UNUSABLE
            consents.setdefault(patient_id, {})[channel] = usable
        rows = session.execute(
            select(
                Patient.id,
                Patient.timezone,
                Patient.travel_lead_days,
                Patient.active,
                Patient.channels,
                Patient.email,
                Patient.phone,
                Patient.whatsapp,
            ).where(among(session, Patient.id, chunk))
        )
        for row in rows:
            found[row[0]] = Contact(*row, consents=consents.get(row[0], {}))
    return found


def reminders_of(session: Session, groups: Collection[Group]) -> list[ReminderRow]:
    """Every reminder of the treatments :func:`treatments_of` finds for these groups, in no
    order. Found through the treatments: a reminder's own patient and protocol are those it
    was planned (or sent) for, and a sent one keeps them when its treatment moves."""
    codes = sorted({g[1] for g in groups})
    found: list[ReminderRow] = []
    query = (
        select(
            Reminder.id,
            Reminder.treatment_id,
            Reminder.step,
            Reminder.status,
            Reminder.reason,
            Reminder.due_at,
            Reminder.expires_at,
        )
        .join(Treatment, Treatment.id == Reminder.treatment_id)
        .where(among(session, Treatment.protocol, codes))
    )
    for chunk in chunks(sorted({g[0] for g in groups})):
        found.extend(map(ReminderRow._make, _keyed(session, query, Treatment.patient_id, chunk)))
    return found


def _keyed(
    session: Session,
    query: Select[*tuple[Any, ...]],
    column: QueryableAttribute[Any],
    values: Sequence[Any],
) -> Result[*tuple[Any, ...]]:
    """``query`` for the rows whose ``column`` is among ``values``. On PostgreSQL a join with
    ``unnest(array)``: the planner counts on a few values there and probes the index per
    value, where ``= ANY(array)`` may make it scan the whole table below a few million rows
    (the cost would follow the table's size, not the batch's)."""
    if session.get_bind().dialect.name != "postgresql":
        return session.execute(query.where(among(session, column, values)))
    given = func.unnest(pg_array(column, values)).table_valued("value").render_derived()
    return session.execute(query.join(given, column == given.c.value))


def insert_reminders(
    session: Session, rows: Sequence[dict[str, Any]], *, encoded: str | None = None
) -> Counter[str]:
    """Insert these pending reminders (:func:`reminders.importing.bulk.reminder_row`), skipping
    any (treatment, step) that exists already (a concurrent planner got there first); returns
    the rows inserted by protocol. On PostgreSQL one statement of arrays, whatever the number
    of rows: a multi-row VALUES would be new text, parsed again, for every size. ``encoded``:
    the rows as :func:`copy_text` gives them, made in advance (by another thread)."""
    inserted: Counter[str] = Counter()
    if not rows:
        return inserted
    table = REMINDERS
    if session.get_bind().dialect.name == "postgresql":
        if len(rows) >= COPY_ROWS:
            return _copy_insert(session, copy_text(rows) if encoded is None else encoded)
        params = {name: [row[name] for row in rows] for name in _UNNESTED}
        result = session.execute(_unnest_insert(), {**params, "now": utcnow()})
    else:
        statement = sqlite_insert(table).on_conflict_do_nothing().returning(table.c.protocol)
        result = session.execute(statement, list(rows))
    inserted.update(result.scalars())
    return inserted


_UNNESTED: dict[str, TypeEngine[Any]] = {
    "treatment_id": Integer(),
    "patient_id": Integer(),
    "protocol": String(),
    "step": String(),
    "due_at": UTCDateTime(),
    "expires_at": UTCDateTime(),
}


# From this many rows on, PostgreSQL gets them by COPY into a scratch table, then one
# INSERT ... SELECT: array parameters cost the driver about 7 us a value in Python (a third
# of an import's planning time). The COPY text is made by :func:`copy_text`, which the
# planner calls on its deciding thread: the connection's thread only sends it.
COPY_ROWS = 1000
_STAGING = "reminders_planned"
_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (treatment_id integer, patient_id integer,"
    " protocol varchar, step varchar, due_at timestamptz, expires_at timestamptz)"
    " ON COMMIT DELETE ROWS"
)
_FROM_STAGING = text(
    "WITH added AS (INSERT INTO reminders (treatment_id, patient_id, protocol, step, status,"
    " due_at, expires_at, next_attempt_at, attempts, created_at, updated_at)"
    " SELECT treatment_id, patient_id, protocol, step, :pending, due_at, expires_at, due_at, 0,"
    " :now, :now FROM reminders_planned ON CONFLICT DO NOTHING RETURNING protocol)"
    " SELECT protocol, count(*) FROM added GROUP BY protocol"
).bindparams(bindparam("now", type_=UTCDateTime()))


def copy_text(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`insert_reminders` in COPY's text format (:func:`copy_value`), in the
    staging table's column order."""
    out = []
    for r in rows:
        treatment_id, patient_id = int(r["treatment_id"]), int(r["patient_id"])
        due, expires = _copy_cached(r["due_at"]), _copy_cached(r["expires_at"])
        protocol, step = _copy_cached(r["protocol"]), _copy_cached(r["step"])
        out.append(f"{treatment_id}\t{patient_id}\t{protocol}\t{step}\t{due}\t{expires}\n")
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _copy_cached(value: str | dt.datetime) -> str:
    """Protocol codes, step names and due and expiry times: a few hundred distinct ones
    (times fall on a few hours of a few hundred days), remembered. A datetime's text takes
    1.4 us; two a reminder, 670,000 reminders in an import of a million treatments."""
    return copy_value(value)


def _copy_insert(session: Session, encoded: str) -> Counter[str]:
    """:func:`insert_reminders` for many rows on PostgreSQL: COPY into a temporary table of
    this connection (emptied at commit), then the same conflict-skipping INSERT."""
    raw = session.connection().connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    names = ", ".join(_UNNESTED)
    with raw.cursor() as cursor:
        cursor.execute(_STAGE)
        cursor.execute(f"TRUNCATE {_STAGING}")
        with cursor.copy(f"COPY {_STAGING} ({names}) FROM STDIN") as copy:
            copy.write(encoded)  # in the connection's encoding
    counts = session.execute(_FROM_STAGING, {"pending": RS.PENDING.value, "now": utcnow()})
    return Counter({protocol: int(count) for protocol, count in counts})


def _unnest_insert() -> Executable:
    """``INSERT INTO reminders ... SELECT ... FROM unnest(arrays) ON CONFLICT DO NOTHING
    RETURNING protocol``: new pending reminders from one array per column."""
    table = REMINDERS
    given = (
        func.unnest(*(bindparam(name, type_=ARRAY(kind)) for name, kind in _UNNESTED.items()))
        .table_valued(*_UNNESTED)
        .render_derived()
    )
    now = bindparam("now", type_=UTCDateTime())
    values = {
        "treatment_id": given.c.treatment_id,
        "patient_id": given.c.patient_id,
        "protocol": given.c.protocol,
        "step": given.c.step,
        "status": literal(RS.PENDING.value),
        "due_at": given.c.due_at,
        "expires_at": given.c.expires_at,
        "next_attempt_at": given.c.due_at,
        "attempts": literal(0),
        "created_at": now,
        "updated_at": now,
    }
    return (
        pg_insert(table)
        .from_select(list(values), select(*values.values()))
        .on_conflict_do_nothing()
        .returning(table.c.protocol)
    )


def cancel(session: Session, reason: str, reminder_ids: Sequence[int]) -> int:
    """Cancel these reminders with ``reason`` if they are still pending; returns how many."""
    if not reminder_ids:
        return 0
    cancelled = 0
    for chunk in chunks(reminder_ids):
        result = session.execute(
            update(Reminder)
            .where(among(session, Reminder.id, chunk), Reminder.status == RS.PENDING)
            .values(status=RS.CANCELLED, reason=reason)
            .execution_options(synchronize_session=False)
        )
        cancelled += int(getattr(result, "rowcount", 0) or 0)
    _forget(session, reminder_ids)
    return cancelled


def reopen(session: Session, moves: Sequence[dict[str, Any]]) -> None:
    """Make reminders pending at new times (``rid``; ``was`` and ``was_reason``: the status and
    reason they were read with; ``due``, ``expires``). One that changed since it was read (a
    dispatcher claimed it, staff cancelled it) is left alone."""
    if not moves:
        return
    table = REMINDERS
    statement = (
        update(table)
        .where(
            table.c.id == bindparam("rid"),
            table.c.status == bindparam("was"),
            table.c.reason.is_not_distinct_from(bindparam("was_reason")),
        )
        .values(
            status=RS.PENDING,
            reason=None,
            due_at=bindparam("due"),
            expires_at=bindparam("expires"),
            next_attempt_at=bindparam("due"),
        )
    )
    session.execute(statement, list(moves))
    _forget(session, [m["rid"] for m in moves])


def clear_needs_plan(session: Session, treatment_ids: Sequence[int]) -> None:
    """These treatments are planned (only the ones read: one flagged since waits its turn)."""
    if not treatment_ids:
        return
    for chunk in chunks(treatment_ids):
        session.execute(
            update(Treatment)
            .where(among(session, Treatment.id, chunk), Treatment.needs_plan)
            .values(needs_plan=False)
            .execution_options(synchronize_session=False)
        )
    held = _held(session, Treatment)
    for treatment_id in treatment_ids if held else ():
        if (treatment := held.get(treatment_id)) is not None:
            set_committed_value(treatment, "needs_plan", False)
            session.expire(treatment, ["updated_at"])


def _forget(session: Session, reminder_ids: Iterable[int]) -> None:
    """Reminder objects the caller's session holds reload after a write around the ORM."""
    held = _held(session, Reminder)
    for reminder_id in reminder_ids if held else ():
        if (reminder := held.get(reminder_id)) is not None:
            session.expire(reminder)


def _held(session: Session, model: type[Any]) -> dict[int, Any]:
    """The objects of ``model`` the session holds, by id (a look at each key, not a query)."""
    held: dict[int, Any] = {}
    for state in session.identity_map.all_states():
        if state.class_ is model and state.identity is not None:
            held[state.identity[0]] = state.obj()
    return held
