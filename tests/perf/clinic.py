"""The big synthetic clinic of figures 2, 3 and 7, written straight into the migrated tables.

- ``patients`` people on file; the first ``treated`` of them are in treatment and have granted
  SMS and email. Names repeat the way real ones do (50 given x 100 family names, Turkish
  letters included), so a name search finds a few hundred people, as it would in a clinic.
- each treated patient has ``per_patient`` treatments of one protocol, 91 days apart, the latest
  within the last 91 days: a steady state, nothing waits to be planned.
- each treatment has the reminders the real planner gives it (due and expiry instants come from
  :func:`reminders.planning.schedule`): the latest treatment's future steps are ``pending``,
  earlier steps are mostly ``sent``, some ``expired`` or ``cancelled`` (superseded).
- :func:`add_history` grows the clinic backwards (older treatments, all settled) until the
  reminders table holds the size the claim benchmark asks for.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection

from reminders.planning import Timing, schedule
from reminders.protocols import Protocol
from tests.perf import sqlgen
from tests.perf.databases import bulk_load, reset_sequences
from tests.perf.names import FAMILY, GIVEN

ZONES = ("Europe/Istanbul",) * 4 + ("Europe/Berlin", "Europe/London", "Asia/Dubai")
LEADS = (0, 14)  # every tenth patient travels and gets two more weeks of notice
INTERVAL = 91  # days between a patient's treatments
SPREAD = INTERVAL  # the latest treatment is within this many days


@dataclass
class Clinic:
    url: str
    now: dt.datetime
    patients: int
    treated: int
    per_patient: int
    generations: int = 0  # treatments per treated patient, history included

    @property
    def today(self) -> dt.date:
        return self.now.date()

    @property
    def base_treatments(self) -> int:
        return self.treated * self.per_patient


@dataclass
class _Someone:
    timezone: str
    travel_lead_days: int


def build_clinic(
    url: str,
    *,
    patients: int,
    treated: int,
    per_patient: int,
    now: dt.datetime,
    protocols: dict[str, Protocol],
    timing: Timing,
    history: int = 3,
) -> Clinic:
    """The clinic at steady state; the lookup tables stay, ready for ``history`` generations
    of older treatments (:func:`add_history`)."""
    clinic = Clinic(url, now, patients, min(treated, patients), per_patient, per_patient)
    with bulk_load(url, ["patients", "consents", "treatments", "reminders"]) as conn:
        _lookups(conn, clinic, per_patient + history, protocols, timing)
        _patients(conn, clinic)
        consents(conn, clinic.treated, now)
        base = clinic.base_treatments
        p = f"((g.i - 1) / {per_patient} + 1)"
        gen = f"({per_patient} - 1 - (g.i - 1) % {per_patient})"
        _treatments(conn, clinic, base, first_id=1, patient=p, generation=gen)
        _analyze(conn, "patients", "treatments")
        _reminders(conn, clinic, 1, base)
        reset_sequences(conn, ["patients", "treatments"])
    return clinic


def add_history(
    clinic: Clinic, reminders: int, protocols: dict[str, Protocol], timing: Timing
) -> int:
    """Add older, settled treatments until the reminders table has at least ``reminders``
    rows; returns how many treatments were added."""
    with bulk_load(clinic.url, ["treatments", "reminders"]) as conn:
        have = int(sqlgen.scalar(conn, "SELECT count(*) FROM reminders"))
        fewest = min(len(p.steps) for p in protocols.values())
        extra = max(0, -(-(reminders - have) // fewest))
        if extra:
            first = int(sqlgen.scalar(conn, "SELECT max(id) FROM treatments")) + 1
            clinic.generations = clinic.per_patient + -(-extra // clinic.treated)
            days = int(sqlgen.scalar(conn, "SELECT count(*) FROM perf_days"))
            if days < SPREAD + INTERVAL * clinic.generations:
                _lookups(conn, clinic, clinic.generations, protocols, timing)
            p = f"((g.i - 1) % {clinic.treated} + 1)"
            gen = f"({clinic.per_patient} + (g.i - 1) / {clinic.treated})"
            _treatments(conn, clinic, extra, first_id=first, patient=p, generation=gen)
            _analyze(conn, "treatments")
            _reminders(conn, clinic, first, first + extra - 1)
            reset_sequences(conn, ["treatments"])
            sqlgen.drop_lookups(conn)
    return extra


def _analyze(conn: Connection, *tables: str) -> None:
    # Fresh statistics (PostgreSQL counts this transaction's own rows), or the big join below
    # is planned for empty tables: a nested loop over millions of rows.
    for table in tables:
        conn.exec_driver_sql(f"ANALYZE {table}")


def _lookups(
    conn: Connection,
    clinic: Clinic,
    generations: int,
    protocols: dict[str, Protocol],
    timing: Timing,
) -> None:
    codes = sorted(protocols)
    sqlgen.fill(conn, sqlgen.NAMES, name_rows())
    sqlgen.fill(conn, sqlgen.ZONES, [{"idx": i, "zone": z} for i, z in enumerate(ZONES)])
    sqlgen.fill(conn, sqlgen.PROTOCOLS, [{"idx": i, "code": c} for i, c in enumerate(codes)])
    offsets = range(SPREAD + INTERVAL * generations)
    days = [clinic.today - dt.timedelta(days=o) for o in offsets]
    sqlgen.fill(conn, sqlgen.DAYS, [{"idx": o, "day": d} for o, d in enumerate(days)])
    cases = _cases(clinic.treated, generations, days, [protocols[c] for c in codes])
    sqlgen.fill(conn, sqlgen.SCHEDULE, _schedule(cases, timing))


Case = tuple[Protocol, dt.date, str, int]  # what a schedule depends on: protocol, day, zone, lead


def _cases(
    treated: int, generations: int, days: list[dt.date], protocols: list[Protocol]
) -> set[Case]:
    """Every (protocol, administered_on, zone, lead) the SQL of :func:`_patients` and
    :func:`_treatments` gives some treatment (the same arithmetic on the patient number)."""
    cases = set()
    for p in range(1, treated + 1):
        lead = LEADS[1] if p % 10 == 0 else LEADS[0]
        protocol, zone = protocols[p % len(protocols)], ZONES[p % len(ZONES)]
        for generation in range(generations):
            day = days[(p * 37) % SPREAD + generation * INTERVAL]
            cases.add((protocol, day, zone, lead))
    return cases


def name_rows() -> list[dict[str, object]]:
    given = [{"kind": "given", "idx": i, "name": n} for i, n in enumerate(GIVEN)]
    return given + [{"kind": "family", "idx": i, "name": n} for i, n in enumerate(FAMILY)]


def _schedule(cases: set[Case], timing: Timing) -> list[dict[str, object]]:
    """The planner's due and expiry instants of every step, for each case."""
    rows = []
    for protocol, day, zone, lead in sorted(cases, key=lambda c: (c[0].code, c[1], c[2], c[3])):
        for planned in schedule(day, protocol, _Someone(zone, lead), timing):
            rows.append(
                {
                    "protocol": protocol.code,
                    "day": day,
                    "zone": zone,
                    "lead": lead,
                    "step": planned.step,
                    "due_at": planned.due_at,
                    "expires_at": planned.expires_at,
                }
            )
    return rows


def _patients(conn: Connection, clinic: Clinic) -> None:
    prefix, source = sqlgen.numbers(conn, clinic.patients)
    pad8, pad7 = sqlgen.pad(conn, "g.i", 8), sqlgen.pad(conn, "g.i", 7)
    ng, nf, nz = len(GIVEN), len(FAMILY), len(ZONES)
    sqlgen.run(
        conn,
        "INSERT INTO patients (id, external_id, given_name, family_name, email, phone, whatsapp,"
        " language, timezone, channels, travel_lead_days, active, created_at, updated_at) "
        f"{prefix}SELECT g.i, 'P' || {pad8}, gn.name, fn.name, 'p' || {pad8} || '@example.com',"
        f" '+90532' || {pad7}, NULL, CASE WHEN g.i % 4 = 0 THEN 'tr' ELSE 'en' END, z.zone,"
        f" 'sms|email', CASE WHEN g.i % 10 = 0 THEN {LEADS[1]} ELSE 0 END, :yes, :now, :now "
        f"FROM {source} "
        f"JOIN perf_names gn ON gn.kind = 'given' AND gn.idx = g.i % {ng} "
        f"JOIN perf_names fn ON fn.kind = 'family' AND fn.idx = (g.i / {ng}) % {nf} "
        f"JOIN perf_zones z ON z.idx = g.i % {nz}",
        yes=True,
        now=clinic.now,
    )


def consents(conn: Connection, treated: int, now: dt.datetime) -> None:
    """SMS and email granted for patients 1 .. treated."""
    prefix, source = sqlgen.numbers(conn, 2 * treated)
    sqlgen.run(
        conn,
        "INSERT INTO consents (patient_id, channel, granted, granted_at, granted_source) "
        f"{prefix}SELECT (g.i + 1) / 2, CASE WHEN g.i % 2 = 1 THEN 'sms' ELSE 'email' END,"
        f" :yes, :now, 'import' FROM {source}",
        yes=True,
        now=now,
    )


def _treatments(
    conn: Connection, clinic: Clinic, count: int, *, first_id: int, patient: str, generation: str
) -> None:
    """``count`` treatments from id ``first_id``; ``patient`` and ``generation`` are SQL over
    the row number ``g.i`` (generation 0 is a patient's latest treatment)."""
    prefix, source = sqlgen.numbers(conn, count)
    tid = f"(x.n + {first_id - 1})"
    offset = f"(({patient} * 37) % {SPREAD} + {generation} * {INTERVAL})"
    # Ids in order of administration, as a clinic records them.
    sqlgen.run(
        conn,
        "INSERT INTO treatments (id, external_id, patient_id, protocol, administered_on, product,"
        " units, location, needs_plan, created_at, updated_at) "
        f"{prefix}SELECT {tid}, 'T' || {sqlgen.pad(conn, tid, 9)}, x.p, x.code, x.day,"
        " 'onabotulinumtoxinA', 155, 'Istanbul', :no, :now, :now "
        f"FROM (SELECT row_number() OVER (ORDER BY d.day, {patient}) AS n, {patient} AS p,"
        f" pr.code AS code, d.day AS day FROM {source} "
        f"JOIN perf_protocols pr ON pr.idx = {patient} % (SELECT count(*) FROM perf_protocols) "
        f"JOIN perf_days d ON d.idx = {offset}) x",
        no=False,
        now=clinic.now,
    )


def _reminders(conn: Connection, clinic: Clinic, first: int, last: int) -> None:
    latest = "t.administered_on > :cutoff"  # generation 0: within the last SPREAD days
    spin = "(t.id + length(s.step)) % 20"
    sqlgen.run(
        conn,
        "INSERT INTO reminders (treatment_id, patient_id, protocol, step, status, reason, due_at,"
        " expires_at, next_attempt_at, attempts, channel, sent_at, created_at, updated_at) "
        "SELECT x.tid, x.pid, x.protocol, x.step, x.status,"
        " CASE x.status WHEN 'expired' THEN 'stale' WHEN 'cancelled' THEN 'superseded' END,"
        " x.due_at, x.expires_at, x.due_at, CASE WHEN x.status = 'sent' THEN 1 ELSE 0 END,"
        " CASE WHEN x.status = 'sent' THEN 'sms' END,"
        " CASE WHEN x.status = 'sent' THEN x.due_at END, :now, :now "
        "FROM (SELECT t.id AS tid, t.patient_id AS pid, t.protocol AS protocol, s.step AS step,"
        " s.due_at AS due_at, s.expires_at AS expires_at, CASE"
        f"  WHEN {latest} AND s.due_at >= :now THEN 'pending'"
        f"  WHEN {latest} THEN CASE WHEN {spin} < 18 THEN 'sent' ELSE 'expired' END"
        "  WHEN s.due_at >= :now THEN 'cancelled'"
        f"  WHEN {spin} < 17 THEN 'sent' WHEN {spin} < 19 THEN 'expired' ELSE 'cancelled' END"
        " AS status FROM treatments t JOIN patients p ON p.id = t.patient_id"
        " JOIN perf_schedule s ON s.protocol = t.protocol AND s.day = t.administered_on"
        "  AND s.zone = p.timezone AND s.lead = p.travel_lead_days"
        f" WHERE t.id BETWEEN {first} AND {last}) x"
        " ORDER BY x.tid, x.due_at",  # planned when the treatment was recorded
        now=clinic.now,
        cutoff=clinic.today - dt.timedelta(days=SPREAD),
    )
