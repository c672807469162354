"""The console's data side: patient search, dashboard numbers, SMS counts, translations."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from reminders import stats
from reminders.models import Delivery, Reminder
from reminders.web.console import search
from reminders.web.console.i18n import CATALOGUES, HERE, LANGUAGES
from reminders.web.console.sms import analyse
from tests import factories

ROOT = Path(__file__).resolve().parent.parent


def _find(runtime, query: str) -> list[str]:
    with runtime.sessions() as session:
        found = search.search(session, query, "TR", offset=0, limit=20)
        return [p.external_id for p in found]


@pytest.fixture
def people(runtime) -> None:
    with runtime.sessions() as session, session.begin():
        factories.patient(
            session,
            external_id="A-1",
            given_name="Ayşe",
            family_name="Yılmaz",
            phone="+905431974001",
            email="ayse.yilmaz@example.com",
        )
        factories.patient(
            session,
            external_id="A-2",
            given_name="Çağla",
            family_name="Işık",
            phone="+905431974002",
            email="cagla@example.org",
        )
        factories.patient(
            session,
            external_id="B-10",
            given_name="John",
            family_name="Smith",
            phone="+447700900123",
            whatsapp="+447700900124",
            email="js@example.co.uk",
        )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("yıl", ["A-1"]),
        ("Yılmaz ayşe", ["A-1"]),
        ("çağ", ["A-2"]),
        ("ışı", ["A-2"]),
        ("smi", ["B-10"]),
        ("0543 197 40 02", ["A-2"]),
        ("+44 7700 900124", ["B-10"]),
        ("AYSE.YILMAZ@example.com", ["A-1"]),
        ("cagla@", ["A-2"]),
        ("A-", ["A-1", "A-2"]),
        ("B-10", ["B-10"]),
        ("100%_", []),
        ("", ["B-10", "A-2", "A-1"]),
    ],
)
def test_a_patient_is_found_by_name_phone_email_or_external_id(
    runtime, people, query: str, expected: list[str]
) -> None:
    assert _find(runtime, query) == expected


def test_a_search_uses_indexed_equality_or_ranges_not_a_contains_scan() -> None:
    sql = str(search.statement("0543 197 40 02", "TR").compile())
    assert "patients.phone = " in sql and "LIKE" not in sql
    email = str(search.statement("ayse@", "TR").compile())
    assert "patients.email >= " in email and "patients.email < " in email


def test_sends_are_counted_per_channel_per_clinic_day(runtime) -> None:
    zone = ZoneInfo("Europe/Istanbul")
    with runtime.sessions() as session, session.begin():
        p = factories.patient(session)
        t = factories.treatment(session, p, dt.date(2026, 1, 1))
        at = dt.datetime(2026, 3, 3, 22, 30, tzinfo=dt.UTC)  # 01:30 on the 4th in Istanbul
        r = Reminder(
            treatment_id=t.id,
            patient_id=p.id,
            protocol=t.protocol,
            step="due",
            status="sent",
            due_at=at,
            expires_at=at,
            next_attempt_at=at,
        )
        session.add(r)
        session.flush()
        for channel, status in [
            ("sms", "delivered"),
            ("sms", "failed"),
            ("sms", "sent"),
            ("email", "read"),
        ]:
            session.add(
                Delivery(
                    reminder_id=r.id, channel=channel, address="x", status=status, created_at=at
                )
            )
    with runtime.sessions() as session:
        days = stats.deliveries_by_day(
            session, since=at - dt.timedelta(days=1), until=at + dt.timedelta(days=1), zone=zone
        )
    assert [(d.day, d.channel, d.sent, d.delivered, d.failed) for d in days] == [
        (dt.date(2026, 3, 4), "email", 1, 1, 0),
        (dt.date(2026, 3, 4), "sms", 3, 1, 1),
    ]
    assert days[1].delivery_rate == pytest.approx(1 / 3)


def test_adherence_counts_each_cycle_by_the_month_its_window_opened(runtime) -> None:
    """chronic_migraine: window 84-120 days. Four cycles open in 2025-04 (from January
    treatments): on time, early, late, missed; one still open is not counted."""
    with runtime.sessions() as session, session.begin():
        for gap in (100, 60, 150, None):
            p = factories.patient(session)
            first = dt.date(2025, 1, 10)
            factories.treatment(session, p, first, needs_plan=False)
            if gap:
                factories.treatment(session, p, first + dt.timedelta(days=gap), needs_plan=False)
        waiting = factories.patient(session)
        factories.treatment(session, waiting, dt.date(2025, 11, 1), needs_plan=False)
    with runtime.sessions() as session:
        found = stats.adherence(
            session, runtime.protocols, first_month=dt.date(2025, 1, 1), today=dt.date(2026, 1, 15)
        )
    first = next(a for a in found if a.month == "2025-04")
    assert (first.on_time, first.early, first.late, first.missed) == (1, 1, 1, 1)
    assert first.rate == 0.25
    assert all(a.month != "2026-01" for a in found)  # the open window is not counted yet


@pytest.mark.parametrize(
    ("text", "encoding", "segments", "forcing"),
    [
        ("a" * 160, "GSM-7", 1, ()),
        ("a" * 161, "GSM-7", 2, ()),
        ("€" * 80, "GSM-7", 1, ()),
        ("ş" + "a" * 69, "UCS-2", 1, ("ş",)),
        ("Görüşmek üzere, ıslak ğ" + "a" * 60, "UCS-2", 2, ("ş", "ı", "ğ")),
    ],
)
def test_the_sms_counter_names_encoding_segments_and_the_culprits(
    text: str, encoding: str, segments: int, forcing: tuple[str, ...]
) -> None:
    info = analyse(text)
    assert (info.encoding, info.segments, info.forcing_ucs2) == (encoding, segments, forcing)


def test_every_console_string_has_a_turkish_translation() -> None:
    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "true"}}
    wanted = {
        m[2] if isinstance(m[2], str) else m[2][0]
        for m in extract_from_dir(str(HERE), method_map, options_map=options)
    }
    wanted |= {m[2] for m in extract_from_dir(str(ROOT / "reminders"), [("auth.py", "python")])}
    for language in set(LANGUAGES) - {"en"}:
        with (CATALOGUES / f"{language}.po").open("rb") as source:
            catalog = read_po(source)
        translated = {m.id for m in catalog if m.id and m.string}
        assert sorted(wanted - translated) == [], f"untranslated in {language}.po"
