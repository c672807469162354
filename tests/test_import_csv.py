"""``reminders import patients|treatments FILE.csv`` on files full of real-world mess."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, delete, event, func, select, update

from reminders.cli import main
from reminders.importing.csv import CsvFileError, Report, import_csv
from reminders.models import Consent, Patient, Reminder, Treatment
from reminders.planner import plan_pending
from reminders.runtime import Runtime
from tests.conftest import CONFIG

PATIENT_HEADER = (
    "external_id,given_name,family_name,email,phone,whatsapp,language,timezone,channels,"
    "consent_email,consent_sms,consent_whatsapp,travel_lead_days"
)
TREATMENT_HEADER = "external_id,patient_external_id,protocol,administered_on,product,units,location"


def write(tmp_path: Path, text: str, name: str = "file.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def patients_csv(tmp_path: Path, *rows: str, sep: str = ",") -> Path:
    return write(tmp_path, "\n".join([PATIENT_HEADER.replace(",", sep), *rows]) + "\n", "p.csv")


def treatments_csv(tmp_path: Path, *rows: str) -> Path:
    return write(tmp_path, "\n".join([TREATMENT_HEADER, *rows]) + "\n", "t.csv")


def run(runtime: Runtime, kind: str, path: Path, now: dt.datetime, **options: bool) -> Report:
    return import_csv(runtime, kind, path, now=now, **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def statements_that_write(engine: Engine) -> Iterator[list[str]]:
    """Every INSERT, UPDATE or DELETE sent to the database inside the block."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def count(runtime: Runtime, model: type) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def stored_patients(runtime: Runtime) -> dict[str, Patient]:
    with runtime.sessions() as session:
        return {p.external_id: p for p in session.scalars(select(Patient))}


def reminders(runtime: Runtime) -> list[tuple[str, str, str | None, dt.datetime]]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Reminder.step, Reminder.status, Reminder.reason, Reminder.due_at).order_by(
                Reminder.due_at, Reminder.step
            )
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]


AYSE = "p1,Ayşe,Yılmaz,ayse@example.com,0543 197 43 20,,tr,Europe/Istanbul,sms|email,yes,yes,,0"
HANS = "p2,Hans,Becker,hans@example.de,+49 151 23456789,,de,Europe/Berlin,email,yes,,,7"


# Reading real-world files


def test_it_imports_a_semicolon_file_with_a_bom_crlf_blank_lines_and_trailing_spaces(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    header = PATIENT_HEADER.replace(",", ";")
    text = (
        "\ufeff" + header + "\r\n"
        "p1 ; Ayşe  ;Yılmaz ;ayse@example.com  ;0543 197 43 20 ;;tr ;Europe/Istanbul;sms|email;"
        "yes ;yes;;0\r\n"
        "\r\n"
        ";;;;;;;;;;;;\r\n"
        "p2;Hans;Becker;hans@example.de;0049 151 23456789;;de;europe/berlin;email|sms;"
        "yes;no;;7;\r\n"
        "\r\n"
    )
    report = run(runtime, "patients", write(tmp_path, text), now)
    assert (report.errors, report.counts.created) == ([], 2)
    ayse, hans = stored_patients(runtime).values()
    assert (ayse.given_name, ayse.family_name, ayse.phone) == ("Ayşe", "Yılmaz", "+905431974320")
    assert (hans.phone, hans.timezone, hans.travel_lead_days) == (
        "+4915123456789",
        "Europe/Berlin",
        7,
    )


def test_it_reads_tab_separated_files_and_header_names_in_any_case(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    header = PATIENT_HEADER.upper().replace("EXTERNAL_ID", "External ID").replace(",", "\t")
    row = AYSE.replace(",", "\t")
    path = write(tmp_path, f"{header}\n{row}\n")
    assert run(runtime, "patients", path, now).counts.created == 1


def test_it_reads_quoted_cells_holding_the_delimiter_and_line_breaks(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    row = 'p1,"Ayşe, Nur","Yılmaz",,+905431974320,,tr,,sms,,yes,,0'
    t_row = 't1,p1,chronic_migraine,2026-01-10,"Botox,\nvial 2",155,"Ankara"'
    run(runtime, "patients", patients_csv(tmp_path, row), now)
    report = run(runtime, "treatments", treatments_csv(tmp_path, t_row), now)
    assert report.counts.created == 1
    assert stored_patients(runtime)["p1"].given_name == "Ayşe, Nur"
    with runtime.sessions() as session:
        assert session.scalars(select(Treatment.product)).one() == "Botox, vial 2"


def test_treatment_values_are_stored_as_read_whatever_their_characters(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    """(On PostgreSQL new treatments go in by COPY, its text made by hand: upsert.copy_parts.)"""
    row = "p1,Ayşe,Yılmaz,,+905431974320,,tr,,sms,,yes,,0"
    t_rows = [
        "t\\1,p1,chronic_migraine,2026-01-10,Botox \\N 100U,155.5,C:\\room\\2",
        "t'2,p1,cervical_dystonia,2026-01-11,,,",
        "t3,p1,myofascial_pain,2026-01-12,Dysport ‘500’ 💉,1000,\\",
    ]
    run(runtime, "patients", patients_csv(tmp_path, row), now)
    assert run(runtime, "treatments", treatments_csv(tmp_path, *t_rows), now).counts.created == 3
    with runtime.sessions() as session:
        stored = session.execute(
            select(
                Treatment.external_id,
                Treatment.administered_on,
                Treatment.product,
                Treatment.units,
                Treatment.location,
                Treatment.needs_plan,
            ).order_by(Treatment.administered_on)
        ).all()
    assert [tuple(r) for r in stored] == [
        ("t\\1", dt.date(2026, 1, 10), "Botox \\N 100U", Decimal("155.50"), "C:\\room\\2", False),
        ("t'2", dt.date(2026, 1, 11), None, None, None, False),
        ("t3", dt.date(2026, 1, 12), "Dysport ‘500’ 💉", Decimal("1000.00"), "\\", False),
    ]


def test_a_short_row_leaves_its_last_cells_empty(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    report = run(runtime, "patients", patients_csv(tmp_path, "p1,Ayşe,,,0543 197 43 20"), now)
    assert (report.errors, report.counts.created) == ([], 1)
    assert stored_patients(runtime)["p1"].channels == "sms"


def test_a_row_with_more_cells_than_the_header_is_refused_naming_its_line(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    report = run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS + ",extra"), now)
    assert [e.describe() for e in report.errors] == [
        "line 3: has 14 cells but the header has 13 columns"
    ]
    assert report.refused and count(runtime, Patient) == 0


def test_a_header_with_missing_and_unknown_columns_is_refused_naming_them(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    header = PATIENT_HEADER.replace("timezone", "time_zone").replace(",travel_lead_days", "")
    path = write(tmp_path, f"\n{header}\n{AYSE}\n")
    with pytest.raises(CsvFileError) as caught:
        run(runtime, "patients", path, now)
    message = str(caught.value)
    assert message.startswith("line 2: header of a patients file:")
    assert "missing column(s) timezone, travel_lead_days" in message
    assert "unknown column(s) time_zone" in message


def test_a_file_that_is_not_utf8_is_refused_naming_the_line(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    text = f"{PATIENT_HEADER}\n{HANS}\n{AYSE}\n"
    with pytest.raises(CsvFileError, match=r"^line 3: not UTF-8"):
        run(runtime, "patients", write(tmp_path, text, encoding="cp1254"), now)


def test_an_empty_file_is_refused(runtime: Runtime, now: dt.datetime, tmp_path: Path) -> None:
    with pytest.raises(CsvFileError, match="no header"):
        run(runtime, "patients", write(tmp_path, "\ufeff\r\n\r\n"), now)


# Bad rows


def test_a_date_not_in_iso_form_is_refused_naming_the_line_and_nothing_is_imported(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE), now)
    path = treatments_csv(
        tmp_path,
        "t1,p1,chronic_migraine,2026-01-10,Botox,155,",
        "t2,p1,tmj_bruxism,10.01.2026,Botox,155,",
        "t3,p1,cervical_dystonia,2026-1-10,Botox,155,",
    )
    report = run(runtime, "treatments", path, now)
    assert [e.describe() for e in report.errors] == [
        "line 3, column administered_on: '10.01.2026' is not a date in the form YYYY-MM-DD",
        "line 4, column administered_on: '2026-1-10' is not a date in the form YYYY-MM-DD",
    ]
    assert report.refused and not report.written
    assert count(runtime, Treatment) == 0


def test_a_repeated_external_id_is_reported_on_both_lines_and_neither_row_is_imported(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    path = patients_csv(tmp_path, AYSE, HANS, AYSE.replace("Ayşe", "Ayse"))
    report = run(runtime, "patients", path, now, skip_invalid=True)
    assert [e.describe() for e in report.errors] == [
        "line 2, column external_id: 'p1' appears more than once (also line 4)",
        "line 4, column external_id: 'p1' appears more than once (also line 2)",
    ]
    assert list(stored_patients(runtime)) == ["p2"]


def test_skip_invalid_imports_the_good_rows_and_lists_every_bad_one(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    bad = "p3,Olga,,olga@,0543,,xx,Moon/Base,sms|fax,maybe,,,99"
    report = run(
        runtime, "patients", patients_csv(tmp_path, AYSE, bad, HANS), now, skip_invalid=True
    )
    fields = [e.field for e in report.errors]
    assert fields == [
        "channels",
        "consent_email",
        "email",
        "language",
        "phone",
        "timezone",
        "travel_lead_days",
    ]
    assert {e.where for e in report.errors} == {"line 3"}
    assert (report.counts.created, report.bad_rows, report.written) == (2, 1, True)
    assert sorted(stored_patients(runtime)) == ["p1", "p2"]


def test_a_treatment_of_an_unknown_patient_is_refused_naming_the_line(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    path = treatments_csv(tmp_path, "t1,p404,chronic_migraine,2026-01-10,,,")
    [error] = run(runtime, "treatments", path, now).errors
    assert error.describe() == "line 2, column patient_external_id: no patient 'p404'"


def test_a_dry_run_reports_the_changes_and_writes_nothing(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE), now)
    changed = AYSE.replace("Yılmaz", "Demir")
    report = run(runtime, "patients", patients_csv(tmp_path, changed, HANS), now, dry_run=True)
    assert (report.counts.created, report.counts.updated, report.written) == (1, 1, False)
    assert stored_patients(runtime)["p1"].family_name == "Yılmaz"
    assert count(runtime, Patient) == 1


# Upserts and planning


def test_importing_the_same_file_twice_writes_nothing_the_second_time(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS), now)
    run(
        runtime, "treatments", treatments_csv(tmp_path, "t1,p1,chronic_migraine,2026-01-10,,,"), now
    )
    later = now + dt.timedelta(hours=1)
    with statements_that_write(runtime.engine) as writes:
        patients = run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS), later)
        treatments = run(
            runtime,
            "treatments",
            treatments_csv(tmp_path, "t1,p1,chronic_migraine,2026-01-10,,,"),
            later,
        )
    assert (patients.counts.unchanged, patients.counts.changed) == (2, 0)
    assert (treatments.counts.unchanged, treatments.counts.changed) == (1, 0)
    assert writes == []


def test_an_import_updates_a_patient_and_records_consent_changes_as_from_the_import(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE), now)
    changed = AYSE.replace("0543 197 43 20", "0532 111 22 33").replace(
        "sms|email,yes,yes", "sms|email,no,yes"
    )
    report = run(runtime, "patients", patients_csv(tmp_path, changed), now)
    assert report.counts.updated == 1
    with runtime.sessions() as session:
        row = session.scalars(select(Patient)).one()
        email = session.scalars(select(Consent).where(Consent.channel == "email")).one()
        assert row.phone == "+905321112233"
        assert (email.granted, email.granted_source) == (False, "import")


def test_a_blank_consent_leaves_the_stored_consent_as_it_was(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE), now)
    blank = AYSE.replace("sms|email,yes,yes", "sms|email,,")
    assert run(runtime, "patients", patients_csv(tmp_path, blank), now).counts.unchanged == 1


def _import_ayse_with_treatment(
    runtime: Runtime, now: dt.datetime, tmp_path: Path, administered_on: str
) -> Report:
    run(runtime, "patients", patients_csv(tmp_path, AYSE), now)
    row = f"t1,p1,chronic_migraine,{administered_on},Botox,155,Istanbul"
    return run(runtime, "treatments", treatments_csv(tmp_path, row), now)


def test_importing_a_treatment_plans_its_reminders_in_the_same_transaction(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    report = _import_ayse_with_treatment(runtime, now, tmp_path, "2026-01-10")
    assert report.counts.created == 1
    steps = [(step, status) for step, status, _, _ in reminders(runtime)]
    assert steps == [("upcoming", "pending"), ("due", "pending"), ("last_call", "pending")]
    with runtime.sessions() as session:
        assert session.scalars(select(Treatment.needs_plan)).one() is False


def test_a_historical_treatment_plans_nothing_stale(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    _import_ayse_with_treatment(runtime, now, tmp_path, "2025-06-01")
    assert reminders(runtime) == []
    with runtime.sessions() as session:
        assert session.scalars(select(Treatment.needs_plan)).one() is False


def test_a_corrected_date_replans_the_unsent_reminders(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    _import_ayse_with_treatment(runtime, now, tmp_path, "2026-01-10")
    before = {step: due for step, _, _, due in reminders(runtime)}
    row = "t1,p1,chronic_migraine,2026-01-17,Botox,155,Istanbul"
    assert run(runtime, "treatments", treatments_csv(tmp_path, row), now).counts.updated == 1
    after = {step: due for step, status, _, due in reminders(runtime) if status == "pending"}
    assert after == {step: due + dt.timedelta(days=7) for step, due in before.items()}


def test_another_protocol_replans_under_the_new_protocol(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    _import_ayse_with_treatment(runtime, now, tmp_path, "2026-01-10")
    row = "t1,p1,tmj_bruxism,2026-01-10,Botox,155,Istanbul"
    run(runtime, "treatments", treatments_csv(tmp_path, row), now)
    with runtime.sessions() as session:
        pending = session.execute(
            select(Reminder.protocol, Reminder.step, Reminder.due_at).where(
                Reminder.status == "pending"
            )
        ).all()
    assert {p for p, _, _ in pending} == {"tmj_bruxism"}
    # tmj_bruxism opens at +90 days, not +84
    due = next(d for _, s, d in pending if s == "due")
    assert due.date() == dt.date(2026, 1, 10) + dt.timedelta(days=90)


def test_a_patient_change_that_matters_replans_their_treatments(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    _import_ayse_with_treatment(runtime, now, tmp_path, "2026-01-10")
    before = {step: due for step, _, _, due in reminders(runtime)}
    moved = AYSE.replace("Europe/Istanbul", "America/New_York")
    run(runtime, "patients", patients_csv(tmp_path, moved), now)
    after = {step: due for step, status, _, due in reminders(runtime) if status == "pending"}
    assert set(after) == set(before)
    new_york = ZoneInfo("America/New_York")
    assert {due.astimezone(new_york).time() for due in after.values()} == {dt.time(10)}
    assert all(after[s] > before[s] for s in before)


def test_a_patient_made_inactive_loses_their_unsent_reminders(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    _import_ayse_with_treatment(runtime, now, tmp_path, "2026-01-10")
    path = write(tmp_path, f"{PATIENT_HEADER},active\n{AYSE},no\n")
    assert run(runtime, "patients", path, now).counts.updated == 1
    assert {(status, reason) for _, status, reason, _ in reminders(runtime)} == {
        ("cancelled", "inactive")
    }


# The command line


def cli(tmp_path: Path, database_url: str, *args: str) -> object:
    env = {
        "REMINDERS_DATABASE_URL": database_url,
        "REMINDERS_CONFIG_DIR": str(CONFIG),
        "REMINDERS_LOG_FORMAT": "console",
    }
    return CliRunner().invoke(main, ["import", *args], env=env, catch_exceptions=False)


def test_the_command_refuses_a_file_with_bad_rows_listing_them_with_exit_status_1(
    runtime: Runtime, database_url: str, tmp_path: Path
) -> None:
    path = patients_csv(tmp_path, AYSE, "p2,Hans,,,12345,,,,,,,,")
    result = cli(tmp_path, database_url, "patients", str(path))
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert f"{path}: line 3, column phone: is not a valid phone number" in result.stderr  # type: ignore[attr-defined]
    assert "1 of 2 rows are invalid: nothing imported" in result.stderr  # type: ignore[attr-defined]
    assert count(runtime, Patient) == 0


def test_the_command_skips_bad_rows_when_asked_and_says_what_it_did(
    runtime: Runtime, database_url: str, tmp_path: Path
) -> None:
    path = patients_csv(tmp_path, AYSE, "p2,Hans,,,12345,,,,,,,,")
    result = cli(tmp_path, database_url, "patients", "--skip-invalid", str(path))
    assert result.exit_code == 0  # type: ignore[attr-defined]
    assert result.stdout == "patients: 1 created, 0 updated, 0 unchanged; 1 invalid rows skipped\n"  # type: ignore[attr-defined]


def test_the_command_does_a_dry_run(runtime: Runtime, database_url: str, tmp_path: Path) -> None:
    path = patients_csv(tmp_path, AYSE)
    result = cli(tmp_path, database_url, "patients", "--dry-run", str(path))
    assert result.stdout.startswith("dry run, nothing written: patients would be 1 created")  # type: ignore[attr-defined]
    assert count(runtime, Patient) == 0


def test_the_command_names_the_file_problem(
    runtime: Runtime, database_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "id,name\n1,x\n")
    result = cli(tmp_path, database_url, "treatments", str(path))
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "line 1: header of a treatments file: missing column(s) external_id" in result.stderr  # type: ignore[attr-defined]


def test_the_command_shows_progress_on_stderr_for_a_large_file(
    runtime: Runtime, database_url: str, tmp_path: Path
) -> None:
    rows = [f"p{i},Name,,,+9054319{i:05d},,,,,,yes,,0" for i in range(6000)]
    result = cli(tmp_path, database_url, "patients", str(patients_csv(tmp_path, *rows)))
    assert "importing patients" in result.stderr  # type: ignore[attr-defined]
    assert result.stdout == "patients: 6000 created, 0 updated, 0 unchanged\n"  # type: ignore[attr-defined]


# Size


def _big_patients_file(tmp_path: Path, rows: int) -> Path:
    lines = ["\ufeff" + PATIENT_HEADER.replace(",", ";")]
    for i in range(rows):
        phone = f"0543 {i // 10000:03d} {i // 100 % 100:02d} {i % 100:02d}"
        lines.append(
            f"p{i} ;Ayşe {i};Yılmaz;ayse{i}@example.com ;{phone};;tr;Europe/Istanbul;"
            f"whatsapp|sms|email;yes;yes;no;{i % 30}"
        )
        if i % 1000 == 0:
            lines.append("")
    return write(tmp_path, "\r\n".join(lines) + "\r\n", "big.csv")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_it_imports_a_100000_row_patients_file_in_reasonable_time_and_again_writes_nothing(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    path = _big_patients_file(tmp_path, 100_000)
    started = time.process_time()  # CPU seconds: other processes on the machine do not count
    report = run(runtime, "patients", path, now)
    first = time.process_time() - started
    assert (report.errors, report.counts.created) == ([], 100_000)
    assert count(runtime, Consent) == 200_000
    report = run(runtime, "patients", path, now)
    assert (report.counts.unchanged, report.counts.changed) == (100_000, 0)
    assert first < 60


def test_a_history_import_plans_only_the_latest_treatment_with_steps_ahead(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    run(runtime, "patients", patients_csv(tmp_path, AYSE, HANS), now)
    path = treatments_csv(
        tmp_path,
        "t1,p1,chronic_migraine,2024-05-02,,,",
        "t2,p1,chronic_migraine,2026-01-10,,,",
        "t3,p1,chronic_migraine,2025-09-01,,,",
        "t4,p2,chronic_migraine,2025-01-01,,,",
    )
    assert run(runtime, "treatments", path, now).counts.created == 4
    with runtime.sessions() as session:
        planned = set(session.scalars(select(Treatment.external_id).join(Reminder).distinct()))
        waiting = session.scalars(select(Treatment).where(Treatment.needs_plan)).all()
    assert (planned, waiting) == ({"t2"}, [])


def test_an_older_treatment_imported_later_leaves_the_newer_cycle_alone(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    _import_ayse_with_treatment(runtime, now, tmp_path, "2026-01-10")
    before = reminders(runtime)
    path = treatments_csv(tmp_path, "t0,p1,chronic_migraine,2025-02-01,,,")
    assert run(runtime, "treatments", path, now).counts.created == 1
    assert reminders(runtime) == before


def test_a_newer_treatment_with_every_step_past_still_supersedes_the_older_cycle(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    earlier = dt.datetime(2025, 12, 1, 7, 0, tzinfo=dt.UTC)
    _import_ayse_with_treatment(runtime, earlier, tmp_path, "2025-10-01")
    assert {status for _, status, _, _ in reminders(runtime)} == {"pending"}  # never sent
    path = treatments_csv(tmp_path, "t2,p1,chronic_migraine,2025-10-20,,,")
    assert run(runtime, "treatments", path, now).counts.created == 1
    assert {(status, reason) for _, status, reason, _ in reminders(runtime)} == {
        ("cancelled", "superseded")
    }


def test_progress_counts_every_row_once_checked_and_once_written_or_skipped(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    rows = [f"p{i},Name,,,+9054319{i:05d},,,,,,yes,,0" for i in range(2500)]
    rows[10] = "p10,Name,,,12,,,,,,yes,,0"  # a bad phone
    rows[20] += ",extra"  # more cells than the header
    steps: list[int] = []
    path = patients_csv(tmp_path, *rows)
    report = import_csv(
        runtime, "patients", path, now=now, skip_invalid=True, progress=steps.append
    )
    assert report.counts.created == 2498
    assert sum(steps) == 2 * 2500
    assert len(steps) > 4  # it moves along, not only at the end


def _snapshot(runtime: Runtime) -> list[tuple[object, ...]]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(
                Treatment.external_id,
                Reminder.patient_id,
                Reminder.protocol,
                Reminder.step,
                Reminder.status,
                Reminder.reason,
                Reminder.due_at,
                Reminder.expires_at,
                Reminder.next_attempt_at,
            ).join(Treatment, Reminder.treatment_id == Treatment.id)
        )
        return sorted(tuple(r) for r in rows)


def test_a_first_import_plans_exactly_what_the_planner_would(
    runtime: Runtime, now: dt.datetime, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        f"{PATIENT_HEADER},active\n"
        f"{AYSE},yes\n"
        "p2,Bob,,bob@example.com,+1 212 555 0100,+1 212 555 0100,en,America/New_York,"
        "whatsapp|email,no,,yes,14,\n"
        "p3,Cem,,cem@example.com,,,tr,,email,yes,,,0,no\n"
        "p4,Deniz,,deniz@example.com,0532 111 22 33,,tr,,sms|email,,,,0,\n"
        "p5,Emi,,emi@example.jp,,,ja,Asia/Tokyo,email,yes,,,7,\n",
        "p.csv",
    )
    assert run(runtime, "patients", path, now).counts.created == 5
    visits = [
        ("p1", "chronic_migraine", "2025-10-01"),
        ("p1", "chronic_migraine", "2026-01-10"),
        ("p1", "bladder_dysfunction", "2025-11-20"),
        ("p2", "cervical_dystonia", "2025-12-20"),
        ("p2", "tmj_bruxism", "2026-02-01"),
        ("p3", "chronic_migraine", "2026-01-10"),
        ("p4", "chronic_migraine", "2026-01-10"),
        ("p5", "myofascial_pain", "2025-11-28"),
        ("p5", "myofascial_pain", "2025-11-28"),
        ("p5", "upper_limb_spasticity", "2024-02-01"),
    ]
    rows = [f"t{i},{p},{code},{day},,," for i, (p, code, day) in enumerate(visits)]
    assert run(runtime, "treatments", treatments_csv(tmp_path, *rows), now).counts.created == 10
    imported = _snapshot(runtime)
    assert len({r[1] for r in imported}) == 3  # p1, p2 and p5 have reminders; p3, p4 none
    with runtime.sessions() as session, session.begin():
        assert session.scalars(select(Treatment).where(Treatment.needs_plan)).all() == []
        session.execute(delete(Reminder))
        session.execute(update(Treatment).values(needs_plan=True))
    plan_pending(runtime, now=now)
    assert _snapshot(runtime) == imported
