"""Consent and opt-out changes, with when and through what they happened."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from reminders.models import Consent, Patient


def _row(session: Session, patient: Patient, channel: str) -> Consent:
    row = session.scalar(
        select(Consent).where(Consent.patient_id == patient.id, Consent.channel == channel)
    )
    if row is None:
        row = Consent(patient_id=patient.id, channel=channel, granted=False)
        session.add(row)
        patient.consents.append(row)
    return row


def grant(
    session: Session, patient: Patient, channel: str, *, source: str, now: dt.datetime
) -> None:
    row = _row(session, patient, channel)
    if not row.granted:
        row.granted, row.granted_at, row.granted_source = True, now, source


def withdraw(
    session: Session, patient: Patient, channel: str, *, source: str, now: dt.datetime
) -> None:
    """Consent no longer given (e.g. a CSV now says ``no``); not an opt-out."""
    row = _row(session, patient, channel)
    if row.granted:
        row.granted, row.granted_at, row.granted_source = False, now, source


def opt_out(
    session: Session,
    patient: Patient,
    channel: str,
    *,
    source: str,
    now: dt.datetime,
    reason: str = "",
) -> bool:
    """Stop a channel for every later reminder. Returns False if it was already stopped."""
    row = _row(session, patient, channel)
    if row.opted_out_at is not None:
        return False
    row.opted_out_at, row.opt_out_source, row.opt_out_reason = now, source, reason[:500] or None
    return True


def opt_in(
    session: Session, patient: Patient, channel: str, *, source: str, now: dt.datetime
) -> bool:
    """Undo an opt-out (an SMS ``START``). Returns False if there was none."""
    row = _row(session, patient, channel)
    if row.opted_out_at is None:
        return False
    row.opted_out_at = row.opt_out_source = row.opt_out_reason = None
    row.granted, row.granted_at, row.granted_source = True, now, source
    return True
