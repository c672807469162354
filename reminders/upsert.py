"""Storing records: upsert patients and treatments by ``external_id``, planning in the same
transaction.

Functions take the session and never commit: the caller owns the transaction, so an import, a
sync run or an API call lands whole or not at all. A record equal to the stored row writes
nothing, so a repeated import or sync is free. A change that matters for planning (addresses,
channels, consents, zone, travel lead, active) re-plans the patient's treatments; a corrected
treatment (another date, protocol or patient) takes back its unsent reminders and plans again;
a deleted one cancels its unsent reminders.

Work goes in chunks with one lookup query per chunk, not one per row, and every (patient,
protocol) group a chunk touched is planned by one call of the set-based planner
(:func:`reminders.planner.plan_groups`). The CSV import writes with :func:`write_treatments`
and plans the groups it touched once, at the end, however many chunks touched them.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from reminders import consents, planner
from reminders.db import utcnow
from reminders.importing.bulk import among, chunks, copy_value, patient_ids
from reminders.models import Channel, Consent, Patient, Reminder, ReminderStatus, Treatment
from reminders.records import PatientRecord, TreatmentRecord
from reminders.runtime import Runtime

# Patient fields that change which reminders go out, when, or whether at all.
PLANNING_FIELDS = frozenset(
    {"email", "phone", "whatsapp", "timezone", "channels", "travel_lead_days", "active"}
)
# Treatment fields whose change makes the planned reminders wrong.
CORRECTION_FIELDS = frozenset({"patient_id", "protocol", "administered_on"})


class Outcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    MISSING = "missing"  # asked to delete something that is not there


@dataclass
class Counts:
    """How many records each outcome had."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    missing: int = 0

    def add(self, outcomes: Iterable[Outcome]) -> Counts:
        for outcome, n in Counter(outcomes).items():
            setattr(self, outcome.value, getattr(self, outcome.value) + n)
        return self

    @property
    def changed(self) -> int:
        return self.created + self.updated + self.deleted

    def __str__(self) -> str:
        parts = [
            f"{self.created} created",
            f"{self.updated} updated",
            f"{self.unchanged} unchanged",
        ]
        parts += [f"{n} {name}" for name, n in (("deleted", self.deleted),) if n]
        return ", ".join(parts)


Group = tuple[int, str]  # (patient id, protocol)


class UnknownPatientError(LookupError):
    """Treatments name patients that are not stored."""

    def __init__(self, external_ids: Sequence[str]) -> None:
        super().__init__(f"no patient with external_id {', '.join(map(repr, external_ids))}")
        self.external_ids = list(external_ids)


def _no_repeats(records: Sequence[PatientRecord] | Sequence[TreatmentRecord]) -> None:
    if len({r.external_id for r in records}) != len(records):
        raise ValueError("an external_id repeats within one batch")


# Patients


def upsert_patients(
    session: Session,
    runtime: Runtime,
    records: Sequence[PatientRecord],
    *,
    source: str,
    now: dt.datetime,
) -> list[Outcome]:
    """Create or update patients; consent changes are recorded as coming from ``source``."""
    _no_repeats(records)
    outcomes: list[Outcome] = []
    for chunk in chunks(records):
        stored = _stored_patients(session, [r.external_id for r in chunk])
        _insert_patients(session, [r for r in chunk if r.external_id not in stored], source, now)
        changed = [
            stored[r.external_id].id
            for r in chunk
            if r.external_id in stored and not stored[r.external_id].same_as(r)
        ]
        rows = _patient_rows(session, changed)
        replan: list[int] = []
        for record in chunk:
            found = stored.get(record.external_id)
            outcome = Outcome.CREATED
            if found is not None and found.id not in rows:
                outcome = Outcome.UNCHANGED
            elif found is not None:
                row = rows[found.id]
                outcome, affects_plan = _update_patient(session, row, record, source, now)
                replan += [row.id] if affects_plan else []
            outcomes.append(outcome)
        _replan_patients(session, runtime, replan, now)
    return outcomes


def _patient_rows(session: Session, ids: list[int]) -> dict[int, Patient]:
    """The ORM rows (consents loaded) of the patients a chunk changes, with one query."""
    if not ids:
        return {}
    return {
        p.id: p for p in session.scalars(select(Patient).where(among(session, Patient.id, ids)))
    }


@dataclass(frozen=True)
class _Stored:
    """A stored patient's values as plain data: comparing needs no ORM objects."""

    id: int
    values: dict[str, Any]
    granted: dict[str, bool]

    def same_as(self, record: PatientRecord) -> bool:
        wanted = record.consents.items()
        same_consents = all(self.granted.get(c, False) == v for c, v in wanted)
        return same_consents and self.values == _patient_values(record)


def _stored_patients(session: Session, external_ids: list[str]) -> dict[str, _Stored]:
    columns = [getattr(Patient, name) for name in PATIENT_VALUES]
    rows = session.execute(
        select(Patient.id, Patient.external_id, *columns).where(
            among(session, Patient.external_id, external_ids)
        )
    ).all()
    granted: dict[int, dict[str, bool]] = {row[0]: {} for row in rows}
    for patient_id, channel, given in session.execute(
        select(Consent.patient_id, Consent.channel, Consent.granted).where(
            among(session, Consent.patient_id, list(granted))
        )
    ):
        granted[patient_id][channel] = given
    return {
        row[1]: _Stored(row[0], dict(zip(PATIENT_VALUES, row[2:], strict=True)), granted[row[0]])
        for row in rows
    }


PATIENT_VALUES = (
    "given_name",
    "family_name",
    "email",
    "phone",
    "whatsapp",
    "language",
    "timezone",
    "channels",
    "travel_lead_days",
    "active",
)


def _patient_values(record: PatientRecord) -> dict[str, Any]:
    return {
        "given_name": record.given_name,
        "family_name": record.family_name,
        "email": record.email,
        "phone": record.phone,
        "whatsapp": record.whatsapp,
        "language": record.language,
        "timezone": record.timezone,
        "channels": "|".join(record.channels),
        "travel_lead_days": record.travel_lead_days,
        "active": record.active,
    }


def _insert_patients(
    session: Session, records: Sequence[PatientRecord], source: str, now: dt.datetime
) -> None:
    # A new patient's consents are written with the patient in one bulk statement each: the
    # same rows consents.grant would write, without a lookup per patient and channel.
    if not records:
        return
    rows = [{"external_id": r.external_id, **_patient_values(r)} for r in records]
    session.execute(insert(Patient), rows)
    ids = patient_ids(session, (r.external_id for r in records))
    granted = [
        {"patient_id": ids[r.external_id], "channel": channel, "granted": True}
        | {"granted_at": now, "granted_source": source}
        for r in records
        for channel, given in r.consents.items()
        if given
    ]
    if granted:
        session.execute(insert(Consent), granted)


def _update_patient(
    session: Session, row: Patient, record: PatientRecord, source: str, now: dt.datetime
) -> tuple[Outcome, bool]:
    values = _patient_values(record)
    changed = {k for k, v in values.items() if getattr(row, k) != v}
    for key in changed:
        setattr(row, key, values[key])
    consent_changed = _apply_consents(session, row, record, source, now)
    if not changed and not consent_changed:
        return Outcome.UNCHANGED, False
    return Outcome.UPDATED, consent_changed or bool(changed & PLANNING_FIELDS)


def _apply_consents(
    session: Session, row: Patient, record: PatientRecord, source: str, now: dt.datetime
) -> bool:
    changed = False
    for channel, wanted in record.consents.items():
        current = row.consent(Channel(channel))
        if wanted == bool(current and current.granted):
            continue
        change = consents.grant if wanted else consents.withdraw
        change(session, row, channel, source=source, now=now)
        changed = True
    return changed


def _replan_patients(
    session: Session, runtime: Runtime, patient_ids: list[int], now: dt.datetime
) -> None:
    if not patient_ids:
        return
    session.flush()  # the patients' changes, before the statements below
    session.execute(  # what the planner's mark_patient_changed does, for all at once
        update(Treatment)
        .where(among(session, Treatment.patient_id, patient_ids))
        .values(needs_plan=True)
        .execution_options(synchronize_session=False)
    )
    groups = session.execute(
        select(Treatment.patient_id, Treatment.protocol)
        .where(among(session, Treatment.patient_id, patient_ids), Treatment.needs_plan)
        .distinct()
    )
    plan_groups(session, runtime, {(g[0], g[1]) for g in groups}, now)


def plan_groups(
    session: Session,
    runtime: Runtime,
    groups: Collection[Group],
    now: dt.datetime,
    progress: planner.Progress | None = None,
    reader: Session | None = None,
) -> int:
    """Plan these (patient, protocol) groups in the caller's transaction: one call of the
    set-based planner, which reads and writes a batch of groups with a few statements
    (``reader``: see :func:`reminders.planner.plan_groups`). Returns the reminder rows
    written."""
    if not groups:
        return 0
    return planner.plan_groups(session, runtime, groups, now=now, progress=progress, reader=reader)


# Treatments


def upsert_treatments(
    session: Session,
    runtime: Runtime,
    records: Sequence[TreatmentRecord],
    *,
    source: str,
    now: dt.datetime,
) -> list[Outcome]:
    """Create or update treatments and plan the groups they changed; ``source`` (``api``,
    ``sync:<name>``) is recorded on the ones written.

    Raises :class:`UnknownPatientError` when a record names a patient that is not stored.
    """
    _no_repeats(records)
    owners = patient_ids(session, (r.patient_external_id for r in records))
    missing = sorted({r.patient_external_id for r in records} - set(owners))
    if missing:
        raise UnknownPatientError(missing)
    outcomes: list[Outcome] = []
    for chunk in chunks(records):
        groups: set[Group] = set()
        outcomes += write_treatments(session, runtime, chunk, owners, now, groups, source=source)
        plan_groups(session, runtime, groups, now)
    return outcomes


def write_treatments(
    session: Session,
    runtime: Runtime,
    chunk: Sequence[TreatmentRecord],
    owners: dict[str, int],
    now: dt.datetime,
    to_plan: set[Group],
    *,
    source: str,
    encoded: Mapping[str, tuple[str, str]] | None = None,
) -> list[Outcome]:
    """Store a chunk of treatments (distinct external ids, patients in ``owners``) without
    planning them: the groups to plan are added to ``to_plan``, and the caller must plan them
    in this transaction with :func:`plan_groups` (new treatments are stored without the
    ``needs_plan`` flag, so nothing else would). A few statements per chunk: the lookup, one
    insert for the new ones, one query for the rows of the changed ones. ``encoded``: the
    records' COPY text by external id (:func:`copy_parts`), made in advance by another
    thread; the ones missing are made here."""
    stored = _stored_treatments(session, [r.external_id for r in chunk])
    new: list[TreatmentRecord] = []
    changed: dict[str, dict[str, Any]] = {}
    outcomes = []
    for record in chunk:
        patient_id = owners[record.patient_external_id]
        found = stored.get(record.external_id)
        if found is None:  # new: an import's common case, with the least work
            new.append(record)
            to_plan.add((patient_id, record.protocol))
            outcomes.append(Outcome.CREATED)
            continue
        values = (
            patient_id,
            record.protocol,
            record.administered_on,
            record.product,
            record.units,
            record.location,
        )
        if found == (values, None):  # the same, and not deleted
            outcomes.append(Outcome.UNCHANGED)
        else:
            changed[record.external_id] = dict(zip(TREATMENT_VALUES, values, strict=True))
            outcomes.append(Outcome.UPDATED)  # or UNCHANGED, settled below
    _insert_treatments(session, runtime, new, owners, source, encoded or {})
    if changed:
        rows = session.scalars(
            select(Treatment).where(among(session, Treatment.external_id, list(changed)))
        )
        same = {
            row.external_id
            for row in rows
            if _update_treatment(session, row, changed[row.external_id], to_plan, source)
            is Outcome.UNCHANGED
        }
        if same:
            outcomes = [
                Outcome.UNCHANGED if o is Outcome.UPDATED and r.external_id in same else o
                for o, r in zip(outcomes, chunk, strict=True)
            ]
    return outcomes


def _insert_treatments(
    session: Session,
    runtime: Runtime,
    records: list[TreatmentRecord],
    owners: Mapping[str, int],
    source: str,
    encoded: Mapping[str, tuple[str, str]],
) -> None:
    """One statement for a chunk's new treatments (``records``, their patients' ids in
    ``owners``): on PostgreSQL a COPY, which costs the driver a fraction of what a many-row
    INSERT does; elsewhere an executemany."""
    if not records:
        return
    stamp = utcnow()
    raw = session.connection().connection.driver_connection
    if not isinstance(raw, psycopg.Connection):  # SQLite (or another driver)
        rows = [_new_row(r, owners, source, runtime, stamp) for r in records]
        session.execute(insert(Treatment), rows)
        return
    stamps = f"{copy_value(stamp)}\t{copy_value(stamp)}\n"
    text = []
    for record in records:
        head, tail = encoded.get(record.external_id) or copy_parts(record, source, runtime)
        text.append(f"{head}\t{owners[record.patient_external_id]:d}\t{tail}\t{stamps}")
    columns = ", ".join(NEW_TREATMENT)
    with raw.cursor() as cursor, cursor.copy(f"COPY treatments ({columns}) FROM STDIN") as copy:
        copy.write("".join(text))


def _new_row(
    record: TreatmentRecord,
    owners: Mapping[str, int],
    source: str,
    runtime: Runtime,
    stamp: dt.datetime,
) -> dict[str, Any]:
    """A new treatment's row (:data:`NEW_TREATMENT`), for an executemany."""
    owner = owners[record.patient_external_id]
    values = (record.external_id, owner, *_after_owner(record, source, runtime), stamp, stamp)
    return dict(zip(NEW_TREATMENT, values, strict=True))


def copy_parts(record: TreatmentRecord, source: str, runtime: Runtime) -> tuple[str, str]:
    """A new treatment's COPY text (:data:`NEW_TREATMENT`) around its patient's id (known
    once the patients are looked up) and less the timestamps (known once it is written)."""
    tail = _after_owner(record, source, runtime)
    return copy_value(record.external_id), "\t".join(map(copy_value, tail))


def _after_owner(record: TreatmentRecord, source: str, runtime: Runtime) -> tuple[Any, ...]:
    """A new treatment's values of :data:`NEW_TREATMENT` between its patient's id and the
    timestamps."""
    return (
        record.protocol,
        record.administered_on,
        record.product,
        record.units,
        record.location,
        source,
        _flagged(record, runtime),
    )


def _flagged(record: TreatmentRecord, runtime: Runtime) -> bool:
    """``needs_plan`` of a new treatment. Not flagged: the caller plans its group in this
    transaction (at once, or at the end of an import), and a flag would cost an update of every
    new row. Under a protocol no longer configured it waits, flagged, and the planner logs it."""
    return record.protocol not in runtime.protocols


def _stored_treatments(
    session: Session, external_ids: list[str]
) -> dict[str, tuple[tuple[Any, ...], dt.datetime | None]]:
    """Stored treatments' values (in the order of TREATMENT_VALUES) and deletion time as plain
    data: comparing needs no ORM."""
    columns = [getattr(Treatment, name) for name in TREATMENT_VALUES]
    rows = session.execute(
        select(Treatment.external_id, Treatment.deleted_at, *columns).where(
            among(session, Treatment.external_id, external_ids)
        )
    )
    return {r[0]: (tuple(r[2:]), r[1]) for r in rows}


TREATMENT_VALUES = ("patient_id", "protocol", "administered_on", "product", "units", "location")
# The columns a COPY of new treatments writes, in order.
NEW_TREATMENT = (
    "external_id",
    *TREATMENT_VALUES,
    "source",
    "needs_plan",
    "created_at",
    "updated_at",
)


def _update_treatment(
    session: Session,
    row: Treatment,
    values: dict[str, Any],
    groups: set[tuple[int, str]],
    source: str,
) -> Outcome:
    changed = {k for k, v in values.items() if getattr(row, k) != v}
    revived = row.deleted_at is not None
    if not changed and not revived:
        return Outcome.UNCHANGED
    if revived or changed & CORRECTION_FIELDS:
        # Both groups re-plan: the old one lost this treatment, the new one gained it.
        groups.update({(row.patient_id, row.protocol), (values["patient_id"], values["protocol"])})
        _take_back(session, row, values)
        row.needs_plan = True
    for key in changed:
        setattr(row, key, values[key])
    row.deleted_at = None
    row.source = source
    return Outcome.UPDATED


def _take_back(session: Session, row: Treatment, values: dict[str, Any]) -> None:
    """A treatment moved to another patient or protocol takes its unsent reminders along (the
    planner then moves or cancels them as the new plan says); sent ones stay as history."""
    if (row.patient_id, row.protocol) == (values["patient_id"], values["protocol"]):
        return  # a new date: the planner moves or cancels the unsent ones itself
    session.execute(
        update(Reminder)
        .where(
            Reminder.treatment_id == row.id,
            Reminder.status.in_([ReminderStatus.PENDING, ReminderStatus.CANCELLED]),
        )
        .values(patient_id=values["patient_id"], protocol=values["protocol"])
    )


def delete_treatments(
    session: Session, runtime: Runtime, external_ids: Sequence[str], *, now: dt.datetime
) -> list[Outcome]:
    """Mark treatments deleted and cancel their unsent reminders (the group is re-planned,
    so an earlier treatment of the same protocol takes over again)."""
    outcomes: list[Outcome] = []
    for chunk in chunks(external_ids):
        stored = {
            t.external_id: t
            for t in session.scalars(
                select(Treatment).where(among(session, Treatment.external_id, chunk))
            )
        }
        groups: set[tuple[int, str]] = set()
        for external_id in chunk:
            row = stored.get(external_id)
            outcomes.append(_delete_one(row, groups, now))
        plan_groups(session, runtime, groups, now)
    return outcomes


def _delete_one(row: Treatment | None, groups: set[tuple[int, str]], now: dt.datetime) -> Outcome:
    if row is None:
        return Outcome.MISSING
    if row.deleted_at is not None:
        return Outcome.UNCHANGED
    row.deleted_at, row.needs_plan = now, True
    groups.add((row.patient_id, row.protocol))
    return Outcome.DELETED
