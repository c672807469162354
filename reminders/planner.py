"""Planning against the database: turns changed treatments into reminder rows.

Only treatments flagged ``needs_plan`` are looked at, so the cost follows the changes, not the
size of the table. For each (patient, protocol) the latest treatment plans its cycle and every
earlier one loses its unsent reminders (``superseded``).

Planning is set-based: a batch of groups is read with a few queries (their treatments, their
patients with consents, their reminders; :mod:`reminders.plan_store`), decided in Python with
the pure planner (:mod:`reminders.planning`), and written with a few statements (one insert
for the new rows, one update per cancellation reason, one for the rows moved or reopened, one
clearing ``needs_plan``), however many groups the batch holds.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from reminders import plan_store, protocol_store
from reminders.importing.bulk import last_step, reminder_row
from reminders.logs import get_logger
from reminders.models import ReminderStatus, Treatment
from reminders.plan_store import Contact, Group, ReminderRow, TreatmentRow
from reminders.planning import plan, schedule, usable_channels
from reminders.protocols import Protocol
from reminders.runtime import Runtime

log = get_logger(__name__)

BATCH = 2000  # groups read and written together by plan_groups
Progress = Callable[[int], None]
RS = ReminderStatus


@dataclass
class Writes:
    """What a batch of groups is to write, decided before anything is written."""

    cancel: dict[str, list[int]] = field(default_factory=dict)  # reason -> reminder ids
    reopen: list[dict[str, Any]] = field(default_factory=list)  # see plan_store.reopen
    insert: list[dict[str, Any]] = field(default_factory=list)  # new reminder rows
    planned: Counter[str] = field(default_factory=Counter)  # moved or replanned, by protocol

    def cancel_pending(self, reason: str, rows: Iterable[ReminderRow]) -> None:
        self.cancel_ids(reason, [r.id for r in rows if r.status == RS.PENDING])

    def cancel_ids(self, reason: str, ids: list[int]) -> None:
        if ids:
            self.cancel.setdefault(reason, []).extend(ids)


def plan_group(
    session: Session, runtime: Runtime, patient_id: int, protocol: str, *, now: dt.datetime
) -> int:
    """Plan the cycle of one patient under one protocol; returns rows written."""
    return plan_groups(session, runtime, [(patient_id, protocol)], now=now)


def plan_groups(
    session: Session,
    runtime: Runtime,
    groups: Iterable[tuple[int, str]],
    *,
    now: dt.datetime,
    progress: Progress | None = None,
    reader: Session | None = None,
) -> int:
    """Plan these (patient, protocol) groups in the caller's transaction; returns rows written.

    Groups go in batches of :data:`BATCH`, each read with a few queries that need nothing but
    its groups, and written with a few statements. With several batches on PostgreSQL the
    connection's work runs on a helper thread, one statement at a time: the previous batch's
    writes, then the next batch's reads, while this batch is put together and decided in
    Python (the server works while Python does). SQLite does its work in this process, so
    there it all runs in turn. ``progress`` is told how many groups each written batch held.

    ``reader``: a session on another connection, for a caller whose transaction changed no
    patient or consent (a treatments import): the patients are read there as committed, by
    the deciding thread, while this session's connection writes and reads the rest."""
    session.flush()  # the writes below go around the ORM: the caller's changes first
    ordered = sorted(set(groups))
    batches = [ordered[i : i + BATCH] for i in range(0, len(ordered), BATCH)]
    if not batches:
        return 0
    postgres = session.get_bind().dialect.name == "postgresql"
    overlap = len(batches) > 1 and postgres
    written = 0
    contacts = reader is None  # read with the rest, on the connection's thread
    fetched: _Fetched | None = _fetch(session, runtime, batches[0], now, contacts)
    decided: _Batch | None = None  # decided, not yet written
    # No thread starts until something is submitted: one batch, or SQLite, runs inline.
    with ThreadPoolExecutor(1, thread_name_prefix="plan-db") as pool:
        for index in range(len(batches)):
            current = fetched
            following = batches[index + 1] if index + 1 < len(batches) else None
            if overlap:
                job = pool.submit(
                    _write_then_fetch, session, runtime, decided, following, now, progress, contacts
                )
                try:
                    batch = _assemble(runtime, current, now, reader)
                    decided = _decide_batch(runtime, batch, now, postgres)
                finally:  # also when deciding failed: never leave the connection mid-statement
                    done, fetched = job.result()
            else:
                done, fetched = _write_then_fetch(
                    session, runtime, decided, following, now, progress, contacts
                )
                batch = _assemble(runtime, current, now, reader)
                decided = _decide_batch(runtime, batch, now, postgres)
            written += done
    assert decided is not None
    return written + _write(session, runtime, decided, progress)


@dataclass
class _Fetched:
    """A batch's rows as read, before anything is made of them."""

    groups: list[Group]
    treatments: list[TreatmentRow]  # of the groups' patients under the groups' protocols
    reminders: list[ReminderRow]  # of those treatments
    patients: dict[int, Contact] | None  # the patients planning needs (_needed); None: not read


@dataclass
class _Batch:
    """A batch of groups as read, then as decided."""

    groups: list[Group]
    treatments: dict[Group, list[TreatmentRow]]
    reminders: dict[int, list[ReminderRow]]
    pending: dict[int, list[int]]
    patients: dict[int, Contact]
    writes: Writes = field(default_factory=Writes)
    encoded: str | None = None  # writes.insert as COPY text, made where it was decided

    @property
    def flagged(self) -> list[int]:
        return [t.id for found in self.treatments.values() for t in found if t.needs_plan]


def _write_then_fetch(
    session: Session,
    runtime: Runtime,
    decided: _Batch | None,
    following: list[Group] | None,
    now: dt.datetime,
    progress: Progress | None,
    contacts: bool,
) -> tuple[int, _Fetched | None]:
    """The connection's work between two decisions: write one batch, read the next."""
    written = _write(session, runtime, decided, progress) if decided is not None else 0
    if following is None:
        return written, None
    return written, _fetch(session, runtime, following, now, contacts)


def _fetch(
    session: Session, runtime: Runtime, groups: list[Group], now: dt.datetime, contacts: bool
) -> _Fetched:
    """Every row a batch needs, by queries that need nothing but the groups (so they can run
    while the previous batch is being decided); :func:`_assemble` makes the batch of them.
    Without ``contacts``, the patients are left to :func:`_assemble`."""
    treatments = plan_store.treatments_of(session, groups)
    reminders = plan_store.reminders_of(session, groups)
    if not contacts:
        return _Fetched(groups, treatments, reminders, None)
    needed = _needed(runtime, groups, treatments, reminders, now)
    return _Fetched(groups, treatments, reminders, plan_store.contacts_by_id(session, needed))


def _needed(
    runtime: Runtime,
    groups: list[Group],
    treatments: list[TreatmentRow],
    reminders: list[ReminderRow],
    now: dt.datetime,
) -> set[int]:
    """The patients planning must read: where a group's latest treatment may have steps ahead
    or has unsent reminders to move or cancel. A history of past cycles loads no patient."""
    wanted = set(groups)
    # Each group's latest live treatment, as _latest finds it in by_group's order (date
    # administered, then id): spelled out here because this runs on the connection's thread,
    # before any grouping or sorting, and needs nothing else of the batch.
    latest: dict[Group, TreatmentRow] = {}
    for t in treatments:
        group = (t.patient_id, t.protocol)
        if t.deleted_at is None and group in wanted:
            known = latest.get(group)
            if known is None or (t.administered_on, t.id) > (known.administered_on, known.id):
                latest[group] = t
    horizon = now.astimezone(dt.UTC).date() - dt.timedelta(days=2)  # any zone's today, less
    needed: set[int] = set()
    for (patient_id, code), t in latest.items():
        protocol = runtime.protocols.get(code)
        if protocol is not None and last_step(protocol, t.administered_on) >= horizon:
            needed.add(patient_id)
    pending_on = {r.treatment_id for r in reminders if r.status == RS.PENDING}
    needed.update(t.patient_id for t in latest.values() if t.id in pending_on)
    return needed


def _assemble(
    runtime: Runtime, fetched: _Fetched | None, now: dt.datetime, reader: Session | None
) -> _Batch:
    """The batch as the decisions need it: each group's treatments latest first, every
    reminder of each group's latest treatment, the pending ones' ids of the others, and the
    patients (read here, through ``reader``, when the fetch left them)."""
    assert fetched is not None
    patients = fetched.patients
    if patients is None:
        assert reader is not None
        needed = _needed(runtime, fetched.groups, fetched.treatments, fetched.reminders, now)
        patients = plan_store.contacts_by_id(reader, needed)
    treatments = plan_store.by_group(fetched.treatments, fetched.groups)
    latest_ids = {t.id for t in map(_latest, treatments.values()) if t is not None}
    others = {t.id for found in treatments.values() for t in found} - latest_ids
    reminders: dict[int, list[ReminderRow]] = {}
    pending: dict[int, list[int]] = {}
    for r in fetched.reminders:
        if r.treatment_id in latest_ids:
            reminders.setdefault(r.treatment_id, []).append(r)
        elif r.treatment_id in others and r.status == RS.PENDING:
            pending.setdefault(r.treatment_id, []).append(r.id)
    return _Batch(fetched.groups, treatments, reminders, pending, patients)


def _decide_batch(runtime: Runtime, batch: _Batch, now: dt.datetime, postgres: bool) -> _Batch:
    """Decide every group of the batch; on PostgreSQL a COPY's text is made here too, so the
    connection's thread (:func:`_write`) only sends it."""
    for group in batch.groups:
        if group in batch.treatments:
            patient = batch.patients.get(group[0])
            _decide(
                runtime,
                batch.treatments[group],
                batch.reminders,
                batch.pending,
                patient,
                batch.writes,
                now=now,
            )
    if postgres and len(batch.writes.insert) >= plan_store.COPY_ROWS:
        batch.encoded = plan_store.copy_text(batch.writes.insert)
    return batch


def _write(
    session: Session, runtime: Runtime, batch: _Batch, progress: Progress | None = None
) -> int:
    writes = batch.writes
    written = 0
    for reason, ids in writes.cancel.items():
        written += plan_store.cancel(session, reason, ids)
    plan_store.reopen(session, writes.reopen)
    written += len(writes.reopen)
    inserted = plan_store.insert_reminders(session, writes.insert, encoded=batch.encoded)
    written += sum(inserted.values())
    plan_store.clear_needs_plan(session, batch.flagged)
    for code, count in (writes.planned + inserted).items():
        runtime.metrics.planned.labels(code).inc(count)
    if progress:
        progress(len(batch.groups))
    return written


def _latest(treatments: list[TreatmentRow]) -> TreatmentRow | None:
    return next((t for t in treatments if t.deleted_at is None), None)


def _decide(
    runtime: Runtime,
    treatments: list[TreatmentRow],
    reminders: dict[int, list[ReminderRow]],
    pending: dict[int, list[int]],
    patient: Contact | None,
    writes: Writes,
    *,
    now: dt.datetime,
) -> None:
    """What one group's plan changes; ``treatments`` latest first, ``reminders`` (all) of the
    latest, ``pending`` (ids) of the others."""
    live = [t for t in treatments if t.deleted_at is None]
    for t in treatments:
        if t.deleted_at is not None:
            writes.cancel_ids("deleted", pending.get(t.id, []))
    for t in live[1:]:
        writes.cancel_ids("superseded", pending.get(t.id, []))
    if not live:
        return
    latest = live[0]
    rows = reminders.get(latest.id, [])
    protocol = runtime.protocols.get(latest.protocol)
    if protocol is None:
        log.warning("unknown_protocol", treatment_id=latest.id, protocol=latest.protocol)
        return
    if patient is None:  # nothing ahead and nothing unsent (see _plan_batch)
        return
    if not patient.active:
        writes.cancel_pending("inactive", rows)
        return
    if not usable_channels(patient):
        writes.cancel_pending("no_channel", rows)
        return
    _plan_latest(runtime, latest, rows, patient, protocol, writes, now=now)


def _plan_latest(
    runtime: Runtime,
    latest: TreatmentRow,
    rows: list[ReminderRow],
    patient: Contact,
    protocol: Protocol,
    writes: Writes,
    *,
    now: dt.datetime,
) -> None:
    """Insert the steps ahead that are not there yet, move or reopen the ones that are, and
    cancel pending ones the cycle no longer has at those times."""
    # A step a staff edit removed from the protocol is not sent any more.
    names = {s.name for s in protocol.steps}
    writes.cancel_pending("protocol_changed", (r for r in rows if r.step not in names))
    existing = {r.step: r for r in rows}
    touched: set[int] = set()
    for p in plan(latest.administered_on, protocol, patient, runtime.timing, now=now):
        row = existing.get(p.step)
        if row is None:
            writes.insert.append(reminder_row(latest.id, latest.patient_id, latest.protocol, p))
        elif row.reopenable or (
            row.status == RS.PENDING and (row.due_at, row.expires_at) != (p.due_at, p.expires_at)
        ):
            writes.reopen.append(
                {
                    "rid": row.id,
                    "was": row.status,
                    "was_reason": row.reason,
                    "due": p.due_at,
                    "expires": p.expires_at,
                }
            )
            touched.add(row.id)
    # Pending steps the current schedule does not have at those times: the date was
    # corrected, the zone or lead changed, or the step coincides with the next one now.
    unmoved = [
        r for r in rows if r.status == RS.PENDING and r.step in names and r.id not in touched
    ]
    outdated = []
    if unmoved:  # a new cycle has none: no second schedule
        cycle = {
            (p.step, p.due_at, p.expires_at)
            for p in schedule(latest.administered_on, protocol, patient, runtime.timing)
        }
        outdated = [r for r in unmoved if (r.step, r.due_at, r.expires_at) not in cycle]
    writes.cancel_pending("replanned", outdated)
    moved = len(touched) + len(outdated)
    if moved:
        writes.planned[protocol.code] += moved


def plan_pending(
    runtime: Runtime,
    *,
    now: dt.datetime,
    batch: int = 500,
    stop: threading.Event | None = None,
) -> int:
    """Plan every group with a changed treatment, a batch per transaction, until ``stop`` is
    set (the rest waits for the next pass). Returns groups."""
    done = 0
    with runtime.sessions() as session:
        protocol_store.refresh(session, runtime)  # staff edits from any replica
    while stop is None or not stop.is_set():
        with runtime.sessions() as session, session.begin():
            groups = plan_store.groups_to_plan(session, batch)
            plan_groups(session, runtime, groups, now=now)
        done += len(groups)
        if len(groups) < batch:
            break
    return done


def mark_patient_changed(session: Session, patient_id: int) -> None:
    """A patient's consents, zone or lead changed: re-plan their treatments."""
    session.execute(
        update(Treatment).where(Treatment.patient_id == patient_id).values(needs_plan=True)
    )
