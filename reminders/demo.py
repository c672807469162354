"""``reminders demo``: sample patients whose windows fall around today, on the console."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from reminders import consents
from reminders.models import Patient, Treatment
from reminders.planning import SendWindow


@dataclass(frozen=True)
class Sample:
    key: str
    given: str
    family: str
    language: str
    zones: tuple[str, ...]  # the first zone that is inside the send window now is used
    channels: str
    protocol: str
    step_today: str  # which step falls on the patient's today
    lead: int = 0


SAMPLES = (
    Sample(
        "1",
        "Ayşe",
        "Yılmaz",
        "tr",
        ("Europe/Istanbul", "Asia/Tokyo", "America/New_York"),
        "sms|email",
        "chronic_migraine",
        "due",
    ),
    Sample(
        "2",
        "Hans",
        "Becker",
        "de",
        ("Europe/Berlin", "Asia/Singapore", "America/Chicago"),
        "email|sms",
        "cervical_dystonia",
        "upcoming",
        lead=0,
    ),
    Sample(
        "3",
        "Emily",
        "Clark",
        "en",
        ("America/New_York", "Europe/London", "Asia/Tokyo"),
        "email",
        "upper_limb_spasticity",
        "last_call",
    ),
    Sample(
        "4",
        "Yuki",
        "Tanaka",
        "ja",
        ("Asia/Tokyo", "Europe/Istanbul", "America/Los_Angeles"),
        "whatsapp|email",
        "tmj_bruxism",
        "due",
    ),
    Sample(
        "5",
        "Mehmet",
        "Demir",
        "tr",
        ("Europe/Istanbul", "America/Sao_Paulo", "Asia/Dubai"),
        "whatsapp|sms",
        "bladder_dysfunction",
        "upcoming",
        lead=7,
    ),
    Sample(
        "6",
        "Olga",
        "Ivanova",
        "ru",
        ("Europe/Moscow", "America/Denver", "Australia/Sydney"),
        "sms",
        "myofascial_pain",
        "due",
    ),
)
# Later in the cycle: planned, not due yet, so the console shows the whole timeline.
FUTURE = (("7", "Sofia", "Rossi", "it", "Europe/Rome", "email|sms", "chronic_migraine", 30),)

STEP_DAY = {"upcoming": 70, "due": 84, "last_call": 113}  # day of the 84/90/120 protocols


def _administered(sample: Sample, today: dt.date, min_days: int, max_days: int) -> dt.date:
    offsets = {
        "upcoming": min_days - 14 - sample.lead,
        "due": min_days - sample.lead,
        "last_call": max_days - 7,
    }
    return today - dt.timedelta(days=offsets[sample.step_today])


def _pick_zone(zones: tuple[str, ...], window: SendWindow, now: dt.datetime) -> str:
    return next((z for z in zones if window.contains(now, ZoneInfo(z))), zones[0])


def seed(
    session: Session, protocols: dict[str, tuple[int, int]], window: SendWindow, *, now: dt.datetime
) -> int:
    """Insert the sample patients and treatments once; returns how many were added."""
    if session.scalar(select(Patient.id).where(Patient.external_id == "demo-1")):
        return 0
    added = 0
    for s in SAMPLES:
        zone = _pick_zone(s.zones, window, now)
        today = now.astimezone(ZoneInfo(zone)).date()
        administered = _administered(s, today, *protocols[s.protocol])
        _add(
            session,
            s.key,
            s.given,
            s.family,
            s.language,
            zone,
            s.channels,
            s.lead,
            s.protocol,
            administered,
            now,
        )
        added += 1
    for key, given, family, lang, zone, channels, protocol, days_ago in FUTURE:
        today = now.astimezone(ZoneInfo(zone)).date()
        _add(
            session,
            key,
            given,
            family,
            lang,
            zone,
            channels,
            0,
            protocol,
            today - dt.timedelta(days=days_ago),
            now,
        )
        added += 1
    return added


def _add(
    session: Session,
    key: str,
    given: str,
    family: str,
    language: str,
    zone: str,
    channels: str,
    lead: int,
    protocol: str,
    administered: dt.date,
    now: dt.datetime,
) -> None:
    patient = Patient(
        external_id=f"demo-{key}",
        given_name=given,
        family_name=family,
        email=f"{given.lower()}.{key}@example.com",
        phone=f"+90555000000{key}",
        whatsapp=f"+90555000000{key}",
        language=language,
        timezone=zone,
        channels=channels,
        travel_lead_days=lead,
        active=True,
    )
    session.add(patient)
    session.flush()
    for channel in channels.split("|"):
        consents.grant(session, patient, channel, source="demo", now=now)
    session.add(
        Treatment(
            external_id=f"demo-t{key}",
            patient_id=patient.id,
            protocol=protocol,
            administered_on=administered,
            product="demo",
            units=100,
            location="Demo clinic",
        )
    )
