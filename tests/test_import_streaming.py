"""The CSV import streams its file a chunk at a time, still all or nothing in one transaction."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, select, update

from reminders import planner
from reminders.importing import csv as importing
from reminders.importing.csv import CsvFileError, import_csv
from reminders.models import Patient, Reminder, Treatment
from reminders.planner import plan_pending
from reminders.runtime import Runtime
from tests.test_import_csv import (
    AYSE,
    HANS,
    PATIENT_HEADER,
    _snapshot,
    count,
    patients_csv,
    run,
    statements_that_write,
    stored_patients,
    treatments_csv,
    write,
)

CHUNK = 3


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many chunks, and groups planned in many batches: on PostgreSQL a chunk (and a batch)
    is written on a helper thread while the next one is parsed (decided)."""
    monkeypatch.setattr(importing, "CHUNK_ROWS", CHUNK)
    monkeypatch.setattr(planner, "BATCH", 2)


def patient_rows(n: int) -> list[str]:
    return [f"p{i},Name {i},,,+9054319{i:05d},,,,,,yes,,0" for i in range(n)]


def test_a_bad_row_in_the_last_chunk_leaves_every_earlier_chunk_unwritten(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    rows = patient_rows(10)
    rows[-1] = "p9,Name 9,,,12,,,,,,yes,,0"  # line 11: a bad phone, in the fourth chunk
    report = run(runtime, "patients", patients_csv(tmp_path, *rows), now)
    assert [e.describe() for e in report.errors] == [
        "line 11, column phone: is not a valid phone number (national numbers are read as TR)"
    ]
    assert report.refused and not report.written
    assert (report.rows, report.counts.changed) == (10, 0)
    assert count(runtime, Patient) == 0


def test_treatments_a_bad_row_in_the_last_chunk_rolls_back_the_written_chunks(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS), now)
    rows = [f"t{i},p{i % 2 + 1},chronic_migraine,2026-01-{i + 1:02d},,," for i in range(7)]
    rows.append("t7,p404,chronic_migraine,2026-01-10,,,")  # line 9: no such patient
    report = run(runtime, "treatments", treatments_csv(tmp_path, *rows), now)
    assert [e.describe() for e in report.errors] == [
        "line 9, column patient_external_id: no patient 'p404'"
    ]
    assert report.refused
    assert (count(runtime, Treatment), count(runtime, Reminder)) == (0, 0)


def test_an_unknown_patient_in_a_middle_chunk_stops_the_chunks_after_it(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS), now)
    rows = [f"t{i},p{i % 2 + 1},chronic_migraine,2026-01-{i + 1:02d},,," for i in range(12)]
    rows[4] = "t4,p404,chronic_migraine,2026-01-05,,,"  # line 6, the second chunk of four
    report = run(runtime, "treatments", treatments_csv(tmp_path, *rows), now)
    assert [e.describe() for e in report.errors] == [
        "line 6, column patient_external_id: no patient 'p404'"
    ]
    assert report.refused and report.counts.changed == 0
    assert (count(runtime, Treatment), count(runtime, Reminder)) == (0, 0)


def test_skip_invalid_writes_the_good_rows_of_every_chunk(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    rows = patient_rows(10)
    rows[1] = "p1,Name,,,12,,,,,,yes,,0"
    rows[8] += ",extra"
    report = run(runtime, "patients", patients_csv(tmp_path, *rows), now, skip_invalid=True)
    assert [(e.number, e.field) for e in report.errors] == [(3, "phone"), (10, "")]
    assert (report.counts.created, report.bad_rows, report.written) == (8, 2, True)
    assert count(runtime, Patient) == 8


def test_a_repeated_external_id_in_other_chunks_is_reported_on_every_line(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    rows = patient_rows(8)
    rows[6] = rows[0].replace("Name 0", "Other")  # line 8 repeats line 2, two chunks later
    rows[7] = " p0 " + rows[7].removeprefix("p7")  # line 9 too, with spaces around
    report = run(runtime, "patients", patients_csv(tmp_path, *rows), now, skip_invalid=True)
    assert [e.describe() for e in report.errors] == [
        "line 2, column external_id: 'p0' appears more than once (also line 8, line 9)",
        "line 8, column external_id: 'p0' appears more than once (also line 2, line 9)",
        "line 9, column external_id: 'p0' appears more than once (also line 2, line 8)",
    ]
    assert sorted(stored_patients(runtime)) == [f"p{i}" for i in range(1, 6)]


def test_a_repeated_external_id_without_skip_invalid_imports_nothing(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    rows = [*patient_rows(7), patient_rows(1)[0]]
    with statements_that_write(runtime.engine) as writes:  # known from the first pass
        report = run(runtime, "patients", patients_csv(tmp_path, *rows), now)
    assert [e.number for e in report.errors] == [2, 9]
    assert report.refused and count(runtime, Patient) == 0
    assert writes == []


def test_a_dry_run_of_many_chunks_writes_nothing(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    report = run(runtime, "patients", patients_csv(tmp_path, *patient_rows(10)), now, dry_run=True)
    assert (report.counts.created, report.written) == (10, False)
    assert count(runtime, Patient) == 0


@pytest.mark.parametrize("backlog", [importing.PLAN_BACKLOG, 1])  # 1: plans every chunk
def test_a_group_spread_over_chunks_is_planned_as_the_planner_would(
    runtime: Runtime,
    now: dt.datetime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backlog: int,
) -> None:
    monkeypatch.setattr(importing, "PLAN_BACKLOG", backlog)
    run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS), now)
    visits = [  # in order of administration, as clinics export them
        ("p1", "chronic_migraine", "2025-04-10"),
        ("p2", "chronic_migraine", "2025-05-01"),
        ("p1", "cervical_dystonia", "2025-06-01"),
        ("p1", "chronic_migraine", "2025-07-10"),
        ("p2", "chronic_migraine", "2025-08-01"),
        ("p1", "chronic_migraine", "2025-10-10"),
        ("p2", "chronic_migraine", "2025-11-01"),
        ("p1", "chronic_migraine", "2026-01-10"),
        ("p2", "chronic_migraine", "2026-01-20"),
    ]
    rows = [f"t{i},{p},{code},{day},,," for i, (p, code, day) in enumerate(visits)]
    steps: list[int] = []
    path = treatments_csv(tmp_path, *rows)
    report = import_csv(runtime, "treatments", path, now=now, progress=steps.append)
    assert (report.counts.created, sum(steps)) == (9, 2 * 9)
    imported = _snapshot(runtime)
    planned = {r[0] for r in imported if r[4] == "pending"}
    assert planned == {"t7", "t8"}  # each group's latest
    with runtime.sessions() as session, session.begin():
        assert session.scalars(select(Treatment).where(Treatment.needs_plan)).all() == []
        session.execute(delete(Reminder))
        session.execute(update(Treatment).values(needs_plan=True))
    plan_pending(runtime, now=now)
    assert [r for r in _snapshot(runtime) if r[4] == "pending"] == [
        r for r in imported if r[4] == "pending"
    ]


def test_a_correction_in_a_later_chunk_replans_both_groups(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS), now)
    first = ["t1,p1,chronic_migraine,2026-01-10,,,", "t2,p2,chronic_migraine,2026-01-12,,,"]
    run(runtime, "treatments", treatments_csv(tmp_path, *first), now)
    rows = [
        "t3,p2,cervical_dystonia,2025-12-01,,,",
        "t4,p2,cervical_dystonia,2025-12-02,,,",
        "t5,p2,cervical_dystonia,2025-12-03,,,",
        "t1,p1,tmj_bruxism,2026-01-10,,,",  # moved to another protocol, in the second chunk
        "t2,p2,chronic_migraine,2026-01-12,Botox,,",  # only the product: nothing to re-plan
    ]
    report = run(runtime, "treatments", treatments_csv(tmp_path, *rows), now)
    assert (report.counts.created, report.counts.updated) == (3, 2)
    with runtime.sessions() as session:
        pending = session.execute(
            select(Treatment.external_id, Reminder.protocol)
            .join(Reminder, Reminder.treatment_id == Treatment.id)
            .where(Reminder.status == "pending")
            .distinct()
        ).all()
        assert session.scalars(select(Treatment).where(Treatment.needs_plan)).all() == []
    assert sorted(pending) == [
        ("t1", "tmj_bruxism"),
        ("t2", "chronic_migraine"),
        ("t5", "cervical_dystonia"),
    ]


def test_a_byte_that_is_not_utf8_far_into_the_file_is_named_by_its_line(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    rows = [f"p{i},{'Ayşe' * 40},,,+9054319{i % 100000:05d},,,,,,yes,,0" for i in range(12_000)]
    text = "\n".join([PATIENT_HEADER, *rows]).encode() + b"\np-last,Hans \xfc,,,,,,,,,,,0\n"
    path = tmp_path / "big.csv"
    path.write_bytes(text)
    assert path.stat().st_size > 2 << 20  # more than one block of the line search
    with pytest.raises(CsvFileError, match=r"^line 12002: not UTF-8"):
        import_csv(runtime, "patients", path, now=now)
    assert count(runtime, Patient) == 0


def test_a_file_whose_rows_are_all_blank_imports_nothing(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    report = run(runtime, "patients", write(tmp_path, f"{PATIENT_HEADER}\n\n,,,\n"), now)
    assert (report.rows, report.errors, report.written) == (0, [], True)


@pytest.mark.parametrize("bad", [False, True])
def test_progress_counts_every_treatment_twice_planning_included(
    runtime: Runtime, now: dt.datetime, tmp_path: Path, bad: bool
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS), now)
    rows = [f"t{i},p{i % 2 + 1},chronic_migraine,2026-01-{i + 1:02d},,," for i in range(11)]
    if bad:
        rows[-1] = rows[-1].replace("2026-01-11", "11.01.2026")
    steps: list[int] = []
    report = import_csv(
        runtime, "treatments", treatments_csv(tmp_path, *rows), now=now, progress=steps.append
    )
    assert report.refused is bad
    assert sum(steps) == 2 * 11 and all(s > 0 for s in steps)


@pytest.mark.parametrize(
    ("rows", "analyzed"),
    [
        (1, []),  # 1 patient, 1 treatment, 3 reminders
        (2, ["ANALYZE reminders"]),  # 6 reminders
        (4, ["ANALYZE patients, consents", "ANALYZE treatments", "ANALYZE reminders"]),
    ],
)
def test_a_big_import_refreshes_the_statistics_of_what_it_wrote(
    runtime: Runtime,
    now: dt.datetime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    analyzed: list[str],
) -> None:
    """A first import fills empty tables: PostgreSQL then plans the treatments' lookups (and
    the planning after them, and the dispatcher's claims) for tables it believes empty until
    autovacuum gets there, after the commit. The import runs ANALYZE itself once it has
    written enough rows (here 4) to a table."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("planner statistics: PostgreSQL")
    monkeypatch.setattr(importing, "ANALYZE_ROWS", 4)
    seen: list[str] = []
    listen = "before_cursor_execute"

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement)

    event.listen(runtime.engine, listen, record)
    try:
        run(runtime, "patients", patients_csv(tmp_path, *patient_rows(rows)), now)
        treatments = [f"t{i},p{i},chronic_migraine,2026-01-05,,," for i in range(rows)]
        run(runtime, "treatments", treatments_csv(tmp_path, *treatments), now)
    finally:
        event.remove(runtime.engine, listen, record)
    assert [s for s in seen if s.startswith("ANALYZE")] == analyzed
    assert count(runtime, Reminder) == 3 * rows


def test_a_treatments_import_reads_the_patients_on_a_second_connection(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    """On PostgreSQL the import's own connection is left to its writes and the reads that
    need them; the patients (committed, never written by a treatments import) are looked up
    and read for planning on another, by the thread that checks and decides."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("one connection on SQLite")
    run(runtime, "patients", patients_csv(tmp_path, *patient_rows(12)), now)
    by_connection: dict[int, list[str]] = {}
    listen = "before_cursor_execute"

    def record(conn: Any, _cursor: object, statement: str, *_: object) -> None:
        words = statement.split()
        table = words[words.index("FROM") + 1] if "FROM" in words else words[1]
        by_connection.setdefault(id(conn.connection.dbapi_connection), []).append(table)

    event.listen(runtime.engine, listen, record)
    try:
        treatments = [f"t{i},p{i % 12},chronic_migraine,2026-02-20,,," for i in range(30)]
        report = run(runtime, "treatments", treatments_csv(tmp_path, *treatments), now)
    finally:
        event.remove(runtime.engine, listen, record)
    assert report.counts.created == 30
    main, second = sorted(by_connection.values(), key=len, reverse=True)
    assert "patients" not in main and "consents" not in main
    assert {"patients", "consents"} <= set(second) <= {"patients", "consents"}
    assert count(runtime, Reminder) > 0
