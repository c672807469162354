"""Sample data for the console tests: patients with treatments, reminders, deliveries."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from reminders import auth
from reminders.models import Delivery, DeliveryEvent, Reminder
from reminders.planner import plan_pending
from reminders.runtime import Runtime
from tests import factories

PASSWORD = "correct horse battery"


def users(session: Session) -> None:
    auth.create_user(session, "admin@example.com", PASSWORD, "admin")
    auth.create_user(session, "staff@example.com", PASSWORD, "staff")


def clinic(runtime: Runtime, now: dt.datetime) -> None:
    """A few patients whose windows fall around ``now``, planned, plus sends and history."""
    today = now.date()
    with runtime.sessions() as session, session.begin():
        users(session)
        ayse = factories.patient(
            session,
            external_id="P-1001",
            given_name="Ayşe",
            family_name="Yılmaz",
            phone="+905431974001",
            email="ayse@example.com",
        )
        factories.treatment(session, ayse, today - dt.timedelta(days=80))
        for i, (given, family) in enumerate(
            [("Mehmet", "Çelik"), ("John", "Smith"), ("Elif", "Kaya"), ("Hans", "Müller")]
        ):
            p = factories.patient(
                session, external_id=f"P-20{i:02d}", given_name=given, family_name=family
            )
            factories.treatment(session, p, today - dt.timedelta(days=75 + 3 * i))
    plan_pending(runtime, now=now)
    with runtime.sessions() as session, session.begin():
        history(session, now)
        sends(session, now)


def history(session: Session, now: dt.datetime) -> None:
    """Earlier cycles for adherence: on time, late, early and missed returns."""
    today = now.date()
    gaps = [90, 130, 88, 70, 100, 95]
    for i, gap in enumerate(gaps * 3):
        p = factories.patient(
            session, external_id=f"H-{i:03d}", given_name="Hasta", family_name=f"Geçmiş {i}"
        )
        first = today - dt.timedelta(days=400 - 9 * i)
        factories.treatment(session, p, first, needs_plan=False)
        if i % 7 != 3:
            factories.treatment(session, p, first + dt.timedelta(days=gap), needs_plan=False)


def sends(session: Session, now: dt.datetime) -> None:
    """Deliveries over the last four weeks on every channel, most of them delivered."""
    patient = factories.patient(session, external_id="S-1", given_name="Sena", family_name="Demir")
    treatment = factories.treatment(
        session, patient, now.date() - dt.timedelta(days=200), needs_plan=False
    )
    for day in range(28):
        at = now - dt.timedelta(days=day, hours=2)
        reminder = Reminder(
            treatment_id=treatment.id,
            patient_id=patient.id,
            protocol=treatment.protocol,
            step=f"past_{day}",
            status="sent",
            due_at=at,
            expires_at=at + dt.timedelta(days=1),
            next_attempt_at=at,
            sent_at=at,
            channel="sms",
        )
        session.add(reminder)
        session.flush()
        for n, channel in enumerate(("sms", "email", "whatsapp")):
            for k in range(2 + (day + n) % 4):
                status = "failed" if (k + day) % 9 == 0 else "delivered"
                d = Delivery(
                    reminder_id=reminder.id,
                    channel=channel,
                    address="x",
                    status=status,
                    created_at=at,
                    updated_at=at,
                )
                session.add(d)
                session.flush()
                session.add(
                    DeliveryEvent(delivery_id=d.id, status=status, source="test", occurred_at=at)
                )
