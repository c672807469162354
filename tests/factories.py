"""Plain factory functions for test data."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from sqlalchemy.orm import Session

from reminders import consents
from reminders.models import Patient, Treatment

_ids = itertools.count(1)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def patient(session: Session, **fields: Any) -> Patient:
    n = next(_ids)
    values: dict[str, Any] = {
        "external_id": f"p{n}",
        "given_name": "Ayşe",
        "family_name": "Yılmaz",
        "email": f"ayse{n}@example.com",
        "phone": f"+90543197{n:04d}",
        "whatsapp": None,
        "language": "en",
        "timezone": "Europe/Istanbul",
        "channels": "sms|email",
        "travel_lead_days": 0,
        "active": True,
    }
    values.update(fields)
    grant = values.pop("consent", None)
    row = Patient(**values)
    session.add(row)
    session.flush()
    for channel in grant if grant is not None else row.channels.split("|"):
        consents.grant(session, row, channel, source="test", now=T0)
    session.flush()
    return row


def treatment(
    session: Session, patient: Patient, administered_on: dt.date, **fields: Any
) -> Treatment:
    n = next(_ids)
    values: dict[str, Any] = {
        "external_id": f"t{n}",
        "patient_id": patient.id,
        "protocol": "chronic_migraine",
        "administered_on": administered_on,
        "product": "onabotulinumtoxinA",
        "units": 155,
        "location": "Istanbul",
        "needs_plan": True,
    }
    values.update(fields)
    row = Treatment(**values)
    session.add(row)
    session.flush()
    return row
