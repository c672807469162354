"""Planning against the database: turns changed treatments into reminder rows.

Only treatments flagged ``needs_plan`` are looked at, so the cost follows the changes, not the
size of the table. For each (patient, protocol) the latest treatment plans its cycle and every
earlier one loses its unsent reminders (``superseded``).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from reminders import protocol_store, queries
from reminders.logs import get_logger
from reminders.models import Patient, Treatment
from reminders.planning import plan, schedule, usable_channels
from reminders.runtime import Runtime

log = get_logger(__name__)


def plan_group(
    session: Session, runtime: Runtime, patient_id: int, protocol: str, *, now: dt.datetime
) -> int:
    """Plan the cycle of one patient under one protocol; returns rows written."""
    treatments = list(
        session.scalars(
            select(Treatment)
            .where(Treatment.patient_id == patient_id, Treatment.protocol == protocol)
            .order_by(Treatment.administered_on.desc(), Treatment.id.desc())
        )
    )
    live = [t for t in treatments if t.deleted_at is None]
    deleted = [t.id for t in treatments if t.deleted_at is not None]
    written = queries.cancel_open(session, "deleted", treatment_ids=deleted)
    if live:
        written += queries.cancel_open(
            session, "superseded", treatment_ids=[t.id for t in live[1:]]
        )
        written += _plan_latest(session, runtime, live[0], now=now)
    session.execute(
        update(Treatment)
        .where(Treatment.id.in_([t.id for t in treatments]), Treatment.needs_plan)
        .values(needs_plan=False)
    )
    return written


def _plan_latest(
    session: Session, runtime: Runtime, treatment: Treatment, *, now: dt.datetime
) -> int:
    protocol = runtime.protocols.get(treatment.protocol)
    patient: Patient = treatment.patient
    if protocol is None:
        log.warning("unknown_protocol", treatment_id=treatment.id, protocol=treatment.protocol)
        return 0
    if not patient.active:
        return queries.cancel_open(session, "inactive", treatment_ids=[treatment.id])
    if not usable_channels(patient):
        return queries.cancel_open(session, "no_channel", treatment_ids=[treatment.id])
    # A step a staff edit removed from the protocol is not sent any more.
    dropped = queries.cancel_open(
        session,
        "protocol_changed",
        treatment_ids=[treatment.id],
        steps_not=[s.name for s in protocol.steps],
    )
    planned = plan(treatment.administered_on, protocol, patient, runtime.timing, now=now)
    written = queries.plan(session, treatment, planned)
    cycle = schedule(treatment.administered_on, protocol, patient, runtime.timing)
    written += queries.cancel_outdated(session, treatment.id, cycle)
    if written:
        runtime.metrics.planned.labels(protocol.code).inc(written)
    return written + dropped


def plan_groups(
    session: Session,
    runtime: Runtime,
    groups: Iterable[tuple[int, str]],
    *,
    now: dt.datetime,
) -> int:
    """Plan these (patient, protocol) groups in the caller's transaction; returns rows written."""
    return sum(
        plan_group(session, runtime, patient_id, protocol, now=now)
        for patient_id, protocol in sorted(set(groups))
    )


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
            groups = queries.treatments_to_plan(session, batch)
            for patient_id, protocol in groups:
                plan_group(session, runtime, patient_id, protocol, now=now)
        done += len(groups)
        if len(groups) < batch:
            break
    return done


def mark_patient_changed(session: Session, patient_id: int) -> None:
    """A patient's consents, zone or lead changed: re-plan their treatments."""
    session.execute(
        update(Treatment).where(Treatment.patient_id == patient_id).values(needs_plan=True)
    )
