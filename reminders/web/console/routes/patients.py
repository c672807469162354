"""Patients: search, the patient page, recording a consent or an opt-out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from reminders import consents
from reminders.models import (
    AuditEntry,
    Channel,
    Delivery,
    DeliveryEvent,
    Patient,
    Reminder,
    Reply,
    Treatment,
)
from reminders.planner import mark_patient_changed
from reminders.planning import step_date, window_for
from reminders.queries import of_patient
from reminders.web.console import charts, search
from reminders.web.console.base import (
    ConsoleRoute,
    NotFound,
    Page,
    Pager,
    Paging,
    Problem,
    StaffForm,
    StaffPage,
)
from reminders.web.console.i18n import N_

router = APIRouter(route_class=ConsoleRoute)
CHANNELS = [c.value for c in Channel]


@router.get("/patients", name="console_patients")
def find(current: StaffPage, results: Paging, q: str = "") -> Response:
    country = current.runtime.settings.clinic_country
    with current.runtime.sessions() as session:
        results.fill(
            search.search(session, q[:200], country, offset=results.offset, limit=results.fetch)
        )
    return current.render("patients.html", {"q": q, "results": results})


def _patient(session: Session, patient_id: int) -> Patient:
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise NotFound(N_("There is no such patient."))
    return patient


@router.get("/patients/{patient_id}", name="console_patient")
def detail(
    patient_id: int,
    current: StaffPage,
    reminders: Paging,
) -> Response:
    with current.runtime.sessions() as session:
        patient = _patient(session, patient_id)
        context = _history(session, patient, reminders)
        context["timelines"] = _timelines(current, context["treatments"], reminders.rows)
    context.update(
        patient=patient, channels=CHANNELS, done=current.request.query_params.get("done")
    )
    return current.render("patient.html", context)


def _history(session: Session, patient: Patient, reminders: Pager) -> dict[str, Any]:
    treatments = list(
        session.scalars(
            select(Treatment)
            .where(Treatment.patient_id == patient.id)
            .order_by(Treatment.administered_on.desc(), Treatment.id.desc())
            .limit(100)
        )
    )
    reminders.fill(
        list(
            session.scalars(
                select(Reminder)
                .where(of_patient(patient.id))
                .order_by(Reminder.due_at.desc(), Reminder.id.desc())
                .offset(reminders.offset)
                .limit(reminders.fetch)
            )
        )
    )
    deliveries = _deliveries(session, [r.id for r in reminders.rows])
    replies = session.scalars(
        select(Reply)
        .where(Reply.patient_id == patient.id)
        .order_by(Reply.received_at.desc())
        .limit(50)
    ).all()
    audit = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.subject == f"patient:{patient.id}")
        .order_by(AuditEntry.occurred_at.desc(), AuditEntry.id.desc())
        .limit(50)
    ).all()
    return {
        "treatments": treatments,
        "reminders": reminders,
        "deliveries": deliveries,
        "replies": list(replies),
        "audit": list(audit),
    }


def _deliveries(session: Session, reminder_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each reminder's attempts, each with its status history."""
    if not reminder_ids:
        return {}
    rows = session.scalars(
        select(Delivery).where(Delivery.reminder_id.in_(reminder_ids)).order_by(Delivery.id)
    ).all()
    events: dict[int, list[DeliveryEvent]] = {}
    for event in session.scalars(
        select(DeliveryEvent)
        .where(DeliveryEvent.delivery_id.in_([d.id for d in rows]))
        .order_by(DeliveryEvent.occurred_at, DeliveryEvent.id)
    ):
        events.setdefault(event.delivery_id, []).append(event)
    found: dict[int, list[dict[str, Any]]] = {}
    for d in rows:
        found.setdefault(d.reminder_id, []).append({"row": d, "events": events.get(d.id, [])})
    return found


def _timelines(current: Page, treatments: list[Treatment], reminders: list[Reminder]) -> list[Any]:
    """One picture per protocol: the latest treatment's window, its steps and their status."""
    latest: dict[str, Treatment] = {}
    for t in treatments:
        if t.deleted_at is None:
            latest.setdefault(t.protocol, t)
    status = {(r.treatment_id, r.step): r.status for r in reminders}
    env = current.state.templates[current.language].env
    names = (current.gettext("opens"), current.gettext("target"), current.gettext("closes"))
    today = current.now().astimezone(current.runtime.settings.clinic_zone).date()
    pictures = []
    for code, treatment in sorted(latest.items()):
        protocol = current.runtime.protocols.get(code)
        if protocol is None:
            continue
        window = window_for(protocol, treatment.administered_on)
        marks = [
            charts.Mark(treatment.administered_on, current.gettext("treatment")),
            charts.Mark(today, current.gettext("today"), "#9333ea"),
        ]
        for step in protocol.steps:
            state = status.get((treatment.id, step.name))
            day = step_date(step, window, treatment.patient.travel_lead_days)
            label = f"{step.name} ({current.gettext(state)})" if state else step.name
            marks.append(charts.Mark(day, label, charts.STATUS_COLOURS.get(state or "", "#9ca3af")))
        title = current.gettext("Timeline of %(code)s", code=code)
        pictures.append(
            (
                code,
                charts.timeline(
                    treatment.administered_on,
                    (window.open, window.target, window.close),
                    marks,
                    title=title,
                    names=names,
                    day_label=env.filters["day"],
                ),
            )
        )
    return pictures


@router.post("/patients/{patient_id}/consent", name="console_patient_consent")
def record(
    patient_id: int,
    current: StaffPage,
    form: StaffForm,
) -> Response:
    channel, action = str(form.get("channel") or ""), str(form.get("action") or "")
    reason = str(form.get("reason") or "").strip()[:500]
    if channel not in CHANNELS or action not in ("consent", "opt_out"):
        raise Problem(N_("Choose a channel and what to record."))
    if action == "opt_out" and not reason:
        raise Problem(N_("An opt-out needs a reason."))
    assert current.viewer is not None
    now, actor = current.now(), current.viewer.email
    with current.runtime.sessions() as session, session.begin():
        patient = _patient(session, patient_id)
        if action == "opt_out":
            consents.opt_out(session, patient, channel, source="staff", now=now, reason=reason)
        elif not consents.opt_in(session, patient, channel, source="staff", now=now):
            consents.grant(session, patient, channel, source="staff", now=now)
        mark_patient_changed(session, patient.id)
        session.add(
            AuditEntry(
                actor=actor,
                action=f"{action}.{channel}",
                subject=f"patient:{patient.id}",
                detail=reason or None,
                occurred_at=now,
            )
        )
    return current.redirect("console_patient", {"done": action}, patient_id=patient_id)
