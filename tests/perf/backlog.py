"""Due reminders for the dispatch benchmarks (figures 4, 5 and 6), written in bulk.

Each reminder has its own patient (an SMS number, consent given, in a fixed-offset zone where it
is about noon now, so the send window is open wherever the benchmark runs) and its own
treatment, administered 84 days ago, so the ``due`` step's template has a real window to show.
Reminder ``i`` is due at ``instants[i % len(instants)]``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from tests.perf import sqlgen
from tests.perf.databases import bulk_load, reset_sequences


def midday_zone(now: dt.datetime) -> str:
    """A fixed-offset zone where ``now`` is about noon (inside any sensible send window)."""
    offset = 12 - now.astimezone(dt.UTC).hour  # -11 .. +12 hours
    return f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-3 is three hours ahead of UTC


def phone(i: int) -> str:
    """Reminder ``i``'s patient's number (E.164, unique per reminder)."""
    return f"+90533{i:07d}"


def load_backlog(url: str, count: int, instants: Sequence[dt.datetime], now: dt.datetime) -> str:
    """``count`` pending ``due`` reminders, one per patient; returns the patients' zone."""
    zone = midday_zone(now)
    today = now.astimezone(ZoneInfo(zone)).date()
    with bulk_load(url, ["patients", "consents", "treatments", "reminders"]) as conn:
        sqlgen.fill(conn, sqlgen.INSTANTS, [{"idx": i, "at": t} for i, t in enumerate(instants)])
        sqlgen.fill(conn, sqlgen.DAYS, [{"idx": 0, "day": today - dt.timedelta(days=84)}])
        _rows(conn, count, len(instants), zone, now)
        reset_sequences(conn, ["patients", "treatments"])
        sqlgen.drop_lookups(conn)
    return zone


def _rows(conn: Connection, count: int, spread: int, zone: str, now: dt.datetime) -> None:
    prefix, source = sqlgen.numbers(conn, count)
    pad7, pad8 = sqlgen.pad(conn, "g.i", 7), sqlgen.pad(conn, "g.i", 8)
    sqlgen.run(
        conn,
        "INSERT INTO patients (id, external_id, given_name, family_name, email, phone, language,"
        " timezone, channels, travel_lead_days, active, created_at, updated_at) "
        f"{prefix}SELECT g.i, 'B' || {pad8}, 'Ayşe', 'Yılmaz', 'b' || {pad8} || '@example.com',"
        f" '+90533' || {pad7}, 'en', :zone, 'sms', 0, :yes, :now, :now FROM {source}",
        zone=zone,
        yes=True,
        now=now,
    )
    sqlgen.run(
        conn,
        "INSERT INTO consents (patient_id, channel, granted, granted_at, granted_source) "
        f"{prefix}SELECT g.i, 'sms', :yes, :now, 'import' FROM {source}",
        yes=True,
        now=now,
    )
    sqlgen.run(
        conn,
        "INSERT INTO treatments (id, external_id, patient_id, protocol, administered_on, product,"
        " units, location, needs_plan, created_at, updated_at) "
        f"{prefix}SELECT g.i, 'BT' || {pad8}, g.i, 'chronic_migraine', d.day,"
        " 'onabotulinumtoxinA', 155, 'Istanbul', :no, :now, :now "
        f"FROM {source} JOIN perf_days d ON d.idx = 0",
        no=False,
        now=now,
    )
    sqlgen.run(
        conn,
        "INSERT INTO reminders (treatment_id, patient_id, protocol, step, status, due_at,"
        " expires_at, next_attempt_at, attempts, created_at, updated_at) "
        f"{prefix}SELECT g.i, g.i, 'chronic_migraine', 'due', 'pending', t.at, :later, t.at, 0,"
        f" :now, :now FROM {source} JOIN perf_instants t ON t.idx = g.i % {spread}",
        later=now + dt.timedelta(days=30),
        now=now,
    )
