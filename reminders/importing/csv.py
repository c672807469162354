"""``reminders import patients|treatments FILE.csv``: reading the file and importing it.

Files come from spreadsheets, so reading forgives what spreadsheets do: a UTF-8 byte-order
mark, ``;`` or tab instead of ``,`` (picked from the header row), blank lines, rows of empty
cells, spaces around values, header names in another case, trailing empty cells. Everything
else is refused with the line and column: a file that is not UTF-8, a header with missing or
unknown columns, a row with more cells than the header, and every value the validation layer
refuses. By default a file with any bad row imports nothing; ``skip_invalid`` imports the good
rows; ``dry_run`` does all the work in a transaction that is rolled back.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from sqlalchemy.orm import Session

from reminders import protocol_store
from reminders.importing.batch import Checked, RawRow, RowError, check_rows, drop_unknown_patients
from reminders.records import (
    PATIENT_FIELDS,
    PATIENT_OPTIONAL_FIELDS,
    TREATMENT_FIELDS,
    PatientRecord,
    Rules,
    TreatmentRecord,
    parse_patient,
    parse_treatment,
)
from reminders.runtime import Runtime
from reminders.upsert import Counts, Outcome, upsert_patients, upsert_treatments

Kind = Literal["patients", "treatments"]
DELIMITERS = (",", ";", "\t")
WRITE_CHUNK = 1000  # records per upsert call: the progress bar moves this often
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # (required, optional)
    "patients": (PATIENT_FIELDS, PATIENT_OPTIONAL_FIELDS),
    "treatments": (TREATMENT_FIELDS, ()),
}
# Hears each step forward: every row once when checked, then once when written (or skipped),
# so an import is 2 x rows steps in all.
Progress = Callable[[int], None]
R = TypeVar("R")


class CsvFileError(ValueError):
    """The file as a whole cannot be read (encoding, header); the message names the line."""


@dataclass
class Report:
    """What an import did (or, refused or dry, would have done)."""

    kind: str
    rows: int
    counts: Counts = field(default_factory=Counts)
    errors: list[RowError] = field(default_factory=list)
    refused: bool = False  # bad rows, and not asked to skip them: nothing imported
    written: bool = False  # False when refused, and on a dry run

    @property
    def bad_rows(self) -> int:
        return len({e.number for e in self.errors})


def read_rows(path: Path, kind: Kind) -> tuple[list[RawRow], list[RowError]]:
    """The data rows of ``path`` (with their line numbers) and the rows that do not fit the
    header. Raises CsvFileError when the file cannot be read at all."""
    text = _decode(path.read_bytes())
    delimiter = _delimiter(text, kind)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[RawRow] = []
    errors: list[RowError] = []
    try:
        while True:
            line = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                break
            if not any(c.strip() for c in cells):
                continue  # blank lines and rows of empty cells
            if header is None:
                header = _header(cells, kind, line)
            else:
                _row(header, cells, line, rows, errors)
    except csv.Error as exc:
        raise CsvFileError(f"line {reader.line_num}: {exc}") from None
    if header is None:
        raise CsvFileError("the file is empty (no header row)")
    return rows, errors


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CsvFileError(
            f"line {line}: not UTF-8 text (save the file as 'CSV UTF-8' from your spreadsheet)"
        ) from None


def _names(cells: Sequence[str]) -> list[str]:
    return [c.strip().lower().replace(" ", "_") for c in cells]


def _delimiter(text: str, kind: Kind) -> str:
    """The delimiter that splits the header row into the most known column names."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    known = set(COLUMNS[kind][0]) | set(COLUMNS[kind][1])
    scores = {
        d: len(known & set(_names(next(csv.reader([first], delimiter=d), [])))) for d in DELIMITERS
    }
    best = max(DELIMITERS, key=lambda d: scores[d])
    return best if scores[best] else ","


def _header(cells: Sequence[str], kind: Kind, line: int) -> list[str]:
    names = _names(cells)
    while names and not names[-1]:
        names.pop()  # trailing empty cells of a spreadsheet export
    required, optional = COLUMNS[kind]
    problems = []
    missing = [c for c in required if c not in names]
    unknown = [c or "(empty)" for c in names if c not in required and c not in optional]
    repeated = sorted({c for c in names if c and names.count(c) > 1})
    for label, columns in (("missing", missing), ("unknown", unknown), ("repeated", repeated)):
        if columns:
            problems.append(f"{label} column(s) {', '.join(columns)}")
    if problems:
        raise CsvFileError(
            f"line {line}: header of a {kind} file: {'; '.join(problems)} "
            f"(expected {', '.join(required + optional)})"
        )
    return names


def _row(
    header: list[str], cells: list[str], line: int, rows: list[RawRow], errors: list[RowError]
) -> None:
    where = f"line {line}"
    if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
        reason = f"has {len(cells)} cells but the header has {len(header)} columns"
        errors.append(RowError(line, where, "", reason))
        return
    values = dict(zip(header, cells, strict=False))  # a short row: the rest are empty
    rows.append(RawRow(line, where, values))


def import_csv(
    runtime: Runtime,
    kind: Kind,
    path: Path,
    *,
    now: dt.datetime,
    dry_run: bool = False,
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Import a patients or treatments file in one transaction; see the module docstring."""
    rows, row_errors = read_rows(path, kind)
    return import_rows(
        runtime,
        kind,
        rows,
        row_errors,
        now=now,
        dry_run=dry_run,
        skip_invalid=skip_invalid,
        progress=progress,
    )


def import_rows(
    runtime: Runtime,
    kind: Kind,
    rows: list[RawRow],
    row_errors: list[RowError],
    *,
    now: dt.datetime,
    dry_run: bool = False,
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Import rows read by :func:`read_rows`."""
    report = Report(kind, rows=len(rows) + len(row_errors))
    if progress and row_errors:
        progress(len(row_errors))  # checked already: they do not fit the header
    with runtime.sessions() as session, session.begin() as transaction:
        protocol_store.refresh(session, runtime)
        rules = Rules.of(runtime.settings, runtime.protocols, now)
        if kind == "patients":
            patients = check_rows(rows, parse_patient, rules, progress)
            _finish(patients, row_errors, report, skip_invalid)
            _write(report, patients, progress, _patient_writer(session, runtime, now))
        else:
            treatments = check_rows(rows, parse_treatment, rules, progress)
            drop_unknown_patients(session, treatments, rows)
            _finish(treatments, row_errors, report, skip_invalid)
            _write(report, treatments, progress, _treatment_writer(session, runtime, now))
        if dry_run:
            transaction.rollback()
            report.written = False
    return report


def _finish(
    checked: Checked[R], row_errors: list[RowError], report: Report, skip_invalid: bool
) -> None:
    checked.drop(row_errors)
    report.errors = checked.errors
    if report.errors and not skip_invalid:
        checked.records = []  # all or nothing
        report.refused = True


def _write(
    report: Report,
    checked: Checked[R],
    progress: Progress | None,
    write: Callable[[Sequence[R]], list[Outcome]],
) -> None:
    if report.refused:
        return
    records = [r for _, r in checked.records]
    for start in range(0, len(records), WRITE_CHUNK):
        chunk = records[start : start + WRITE_CHUNK]
        report.counts.add(write(chunk))
        if progress:
            progress(len(chunk))
    skipped = report.rows - len(records)
    if progress and skipped:
        progress(skipped)
    report.written = True


def _patient_writer(
    session: Session, runtime: Runtime, now: dt.datetime
) -> Callable[[Sequence[PatientRecord]], list[Outcome]]:
    return lambda chunk: upsert_patients(session, runtime, chunk, source="import", now=now)


def _treatment_writer(
    session: Session, runtime: Runtime, now: dt.datetime
) -> Callable[[Sequence[TreatmentRecord]], list[Outcome]]:
    return lambda chunk: upsert_treatments(session, runtime, chunk, now=now)
