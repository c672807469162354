"""``reminders import patients|treatments FILE.csv``: reading the file and importing it.

Files come from spreadsheets, so reading forgives what spreadsheets do: a UTF-8 byte-order
mark, ``;`` or tab instead of ``,`` (picked from the header row), blank lines, rows of empty
cells, spaces around values, header names in another case, trailing empty cells. Everything
else is refused with the line and column: a file that is not UTF-8, a header with missing or
unknown columns, a row with more cells than the header, and every value the validation layer
refuses. By default a file with any bad row imports nothing; ``skip_invalid`` imports the good
rows; ``dry_run`` does all the work in a transaction that is rolled back.

The file is streamed, never held whole: a first pass (:func:`scan_file`) checks the encoding
and the header, counts the rows and finds the external ids that repeat; the second reads,
checks and writes :data:`CHUNK_ROWS` rows at a time, all in one transaction, so memory follows
the chunk (and the set of external ids the first pass keeps), not the file.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from reminders import protocol_store
from reminders.importing.batch import PROGRESS_STEP, RowError
from reminders.importing.bulk import ANALYZE_ROWS, analyze, patient_ids
from reminders.records import (
    PATIENT_FIELDS,
    PATIENT_OPTIONAL_FIELDS,
    TREATMENT_FIELDS,
    InvalidRecordError,
    PatientRecord,
    Rules,
    TreatmentRecord,
    parse_patient,
    parse_treatment,
)
from reminders.runtime import Runtime
from reminders.upsert import (
    Counts,
    Group,
    copy_parts,
    plan_groups,
    upsert_patients,
    write_treatments,
)

Kind = Literal["patients", "treatments"]
DELIMITERS = (",", ";", "\t")
CHUNK_ROWS = 2000  # rows read, checked and written together
PLAN_BACKLOG = 400_000  # (patient, protocol) groups kept to plan once, at the end
OWNER_CACHE = 400_000  # patients' ids kept in memory by external id
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # (required, optional)
    "patients": (PATIENT_FIELDS, PATIENT_OPTIONAL_FIELDS),
    "treatments": (TREATMENT_FIELDS, ()),
}
# Hears each step forward: every row once when checked, then once when written (or skipped),
# so an import is 2 x rows steps in all.
Progress = Callable[[int], None]
_NOT_UTF8 = "not UTF-8 text (save the file as 'CSV UTF-8' from your spreadsheet)"


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


@dataclass(frozen=True)
class Scan:
    """What the first pass over a file learnt."""

    path: Path
    kind: Kind
    delimiter: str
    rows: int  # data rows, the ones that do not fit the header included
    repeated: frozenset[str]  # external ids on more than one row


# Reading


def scan_file(path: Path, kind: Kind) -> Scan:
    """Check the encoding and the header, count the rows and find repeated external ids.
    Raises CsvFileError when the file cannot be read at all."""
    delimiter = _delimiter(path, kind)
    rows = _rows(path, delimiter)
    header = _header_of(rows, kind)
    width, key = len(header), header.index("external_id")
    seen: set[str] = set()
    repeated: set[str] = set()
    count = 0
    for _, cells in rows:
        count += 1
        if len(cells) > width and _misfit(cells, width):
            continue  # reported by the second pass; not a row of the file's ids
        external_id = cells[key].strip() if key < len(cells) else ""
        if external_id in seen:
            repeated.add(external_id)
        elif external_id:
            seen.add(external_id)
    return Scan(path, kind, delimiter, count, frozenset(repeated))


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8-sig", newline="") as lines:
        try:
            yield from lines
        except UnicodeDecodeError:
            raise CsvFileError(f"line {_first_bad_line(path)}: {_NOT_UTF8}") from None


def _first_bad_line(path: Path) -> int:
    """The line of the first byte that is not UTF-8 (read in blocks, never whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as data:
        while block := data.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return line + block[: max(exc.start, 0)].count(b"\n")
            line += block.count(b"\n")
    return line


def _rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line, cells) of every row that is not blank, the header first."""
    reader = csv.reader(_lines(path), delimiter=delimiter)
    try:
        while True:
            line = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                return
            if "".join(cells).strip():  # not a blank line or a row of empty cells
                yield line, cells
    except csv.Error as exc:
        raise CsvFileError(f"line {reader.line_num}: {exc}") from None


def _names(cells: Sequence[str]) -> list[str]:
    return [c.strip().lower().replace(" ", "_") for c in cells]


def _delimiter(path: Path, kind: Kind) -> str:
    """The delimiter that splits the header row into the most known column names."""
    first = next((line for line in _lines(path) if line.strip()), "")
    known = set(COLUMNS[kind][0]) | set(COLUMNS[kind][1])
    scores = {
        d: len(known & set(_names(next(csv.reader([first], delimiter=d), [])))) for d in DELIMITERS
    }
    best = max(DELIMITERS, key=lambda d: scores[d])
    return best if scores[best] else ","


def _header_of(rows: Iterator[tuple[int, list[str]]], kind: Kind) -> list[str]:
    first = next(rows, None)
    if first is None:
        raise CsvFileError("the file is empty (no header row)")
    return _header(first[1], kind, first[0])


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


def _misfit(cells: list[str], width: int) -> bool:
    return any(c.strip() for c in cells[width:])


# Importing


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
    return import_scanned(
        runtime,
        scan_file(path, kind),
        now=now,
        dry_run=dry_run,
        skip_invalid=skip_invalid,
        progress=progress,
    )


def import_scanned(
    runtime: Runtime,
    scan: Scan,
    *,
    now: dt.datetime,
    dry_run: bool = False,
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Import a file :func:`scan_file` has read once, a chunk at a time, in one transaction."""
    with (
        runtime.sessions() as session,
        session.begin() as transaction,
        _reader(runtime, scan, session) as reader,
    ):
        protocol_store.refresh(session, runtime)
        rules = Rules.of(runtime.settings, runtime.protocols, now)
        run = _Import(session, runtime, scan, rules, now, skip_invalid, progress, reader)
        run.all_rows()
        if run.report.refused or dry_run:
            transaction.rollback()
            run.report.written = False
    return run.report


@contextlib.contextmanager
def _reader(runtime: Runtime, scan: Scan, session: Session) -> Iterator[Session | None]:
    """For treatments on PostgreSQL, a second session (its own connection) for what the
    import reads as committed and never writes: the patients, looked up while a chunk is
    checked and read for the planning while a batch is decided, so the import's own
    connection is left to its writes. None elsewhere (SQLite is one process' work anyway)."""
    if scan.kind != "treatments" or session.get_bind().dialect.name != "postgresql":
        yield None
        return
    with runtime.sessions() as reader:
        yield reader


@dataclass
class _Chunk:
    """One chunk's rows as checked: the good records, the problems, the patients' ids."""

    records: list[tuple[int, PatientRecord | TreatmentRecord]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    owners: dict[str, int] | None = None  # treatments: patient ids, once looked up
    # With a reader (treatments on PostgreSQL): each record's COPY text (upsert.copy_parts),
    # made while checking so that the connection's thread only sends it.
    encoded: dict[str, tuple[str, str]] = field(default_factory=dict)


class _Import:
    """The second pass: check and write a chunk at a time."""

    def __init__(
        self,
        session: Session,
        runtime: Runtime,
        scan: Scan,
        rules: Rules,
        now: dt.datetime,
        skip_invalid: bool,
        progress: Progress | None,
        reader: Session | None = None,
    ) -> None:
        self.session, self.runtime, self.scan = session, runtime, scan
        self.reader = reader  # see _reader
        self.rules, self.now, self.progress = rules, now, progress
        self.skip_invalid = skip_invalid
        self.stepping = threading.Lock()
        self.analyzed = 0  # rows written when the statistics were last refreshed
        self.planned = 0  # reminder rows the planning wrote
        # A repeated external id is a bad row: without skip_invalid, nothing is to be written.
        self.refusing = bool(scan.repeated) and not skip_invalid
        self.report = Report(scan.kind, rows=scan.rows)
        self.repeats: dict[str, list[int]] = {}  # repeated external id -> its lines
        self.to_plan: set[Group] = set()
        self.held = 0  # progress steps waiting for the planning of written rows
        self.owners: dict[str, int] = {}  # patients' ids by external id, as looked up
        self.parse: Callable[..., PatientRecord | TreatmentRecord] = (
            parse_patient if scan.kind == "patients" else parse_treatment
        )

    def all_rows(self) -> None:
        rows = _rows(self.scan.path, self.scan.delimiter)
        header = _header_of(rows, self.scan.kind)
        # On PostgreSQL a chunk's database work (its patients looked up, its rows written) runs
        # on a helper thread while the next chunk is parsed: the server works while Python
        # does. One statement at a time on the connection, chunks in file order.
        overlap = self.session.get_bind().dialect.name == "postgresql"
        with ThreadPoolExecutor(1, thread_name_prefix="import-write") as pool:
            storing: Future[None] | None = None
            try:
                chunk: list[tuple[int, list[str]]] = []
                for row in rows:
                    chunk.append(row)
                    if len(chunk) == CHUNK_ROWS:
                        checked = self.check(header, chunk)
                        if storing is not None:
                            storing.result()  # the previous chunk is in; its errors counted
                            storing = None
                        if overlap:
                            storing = pool.submit(self.store, checked, len(chunk))
                        else:
                            self.store(checked, len(chunk))
                        chunk = []
            finally:
                if storing is not None:  # also when reading failed: never mid-statement
                    storing.result()
        if chunk:
            self.store(self.check(header, chunk), len(chunk))
        self.finish()

    def store(self, checked: _Chunk, count: int) -> None:
        """The database part of a chunk of ``count`` rows as :meth:`check` left them."""
        if self.scan.kind == "treatments":
            self.drop_unknown_patients(checked)
        self.report.errors += checked.errors
        self.refusing = self.refusing or bool(checked.errors and not self.skip_invalid)
        if self.refusing:
            self.step(count)  # all or nothing: nothing more is written
            return
        records = [r for _, r in checked.records]
        if self.scan.kind == "patients":
            patients: list[PatientRecord] = records  # type: ignore[assignment]
            outcomes = upsert_patients(
                self.session, self.runtime, patients, source="import", now=self.now
            )
        else:
            treatments: list[TreatmentRecord] = records  # type: ignore[assignment]
            outcomes = write_treatments(
                self.session,
                self.runtime,
                treatments,
                checked.owners or {},  # looked up by drop_unknown_patients
                self.now,
                self.to_plan,
                source="import",
                encoded=checked.encoded,
            )
            # Half a written treatment's step waits for its group's planning, which comes
            # later: the progress bar keeps moving through it.
            hold = len(treatments) // 2
            self.held += hold
            self.step(count - hold)
            self.report.counts.add(outcomes)
            if len(self.to_plan) >= PLAN_BACKLOG:
                self.plan()
            return
        self.report.counts.add(outcomes)
        self.step(count)

    def check(self, header: list[str], rows: list[tuple[int, list[str]]]) -> _Chunk:
        """Parse and validate a chunk (no database: it may run while another chunk is being
        written); unknown patients are found by :meth:`store`."""
        checked = _Chunk()
        good, errors = checked.records, checked.errors
        width, parse, rules, repeated = len(header), self.parse, self.rules, self.scan.repeated
        for index, (line, cells) in enumerate(rows, start=1):
            if index % PROGRESS_STEP == 0:
                self.step(PROGRESS_STEP)
            if len(cells) > width and _misfit(cells, width):
                reason = f"has {len(cells)} cells but the header has {width} columns"
                errors.append(RowError(line, f"line {line}", "", reason))
                continue
            values = dict(zip(header, cells, strict=False))  # a short row: the rest are empty
            try:
                good.append((line, parse(values, rules)))
            except InvalidRecordError as exc:
                errors += [RowError(line, f"line {line}", p.field, p.reason) for p in exc.problems]
            if repeated and values.get("external_id", "").strip() in repeated:
                self.repeats.setdefault(values["external_id"].strip(), []).append(line)
        self.step(len(rows) % PROGRESS_STEP)
        if repeated:
            self.drop_repeated(checked)
        if self.reader is not None:  # treatments on PostgreSQL, while the last chunk is written
            treatments = [r for _, r in checked.records if isinstance(r, TreatmentRecord)]
            wanted = {r.patient_external_id for r in treatments}
            checked.owners = self.owners_of(wanted, self.reader)
            runtime = self.runtime
            checked.encoded = {r.external_id: copy_parts(r, "import", runtime) for r in treatments}
        return checked

    def drop_repeated(self, checked: _Chunk) -> None:
        """A repeated external id marks every row bad (which one is right is not ours to
        guess); the errors naming the other lines are added at the end."""
        repeated = self.scan.repeated
        checked.records = [(n, r) for n, r in checked.records if r.external_id not in repeated]

    def drop_unknown_patients(self, checked: _Chunk) -> None:
        records: list[tuple[int, TreatmentRecord]] = checked.records  # type: ignore[assignment]
        if checked.owners is None:
            wanted = {r.patient_external_id for _, r in records}
            checked.owners = self.owners_of(wanted, self.session)
        known = checked.owners
        unknown = [(n, r) for n, r in records if r.patient_external_id not in known]
        if not unknown:
            return
        checked.errors += [
            RowError(n, f"line {n}", "patient_external_id", f"no patient {r.patient_external_id!r}")
            for n, r in unknown
        ]
        checked.records = [(n, r) for n, r in records if r.patient_external_id in known]

    def owners_of(self, external_ids: set[str], session: Session) -> dict[str, int]:
        """Stored patients' ids by external id; the ones seen before come from memory (up to
        :data:`OWNER_CACHE` of them), so a patient with many treatments is looked up once."""
        cache = self.owners
        found = {e: cache[e] for e in external_ids if e in cache}
        if len(found) < len(external_ids):
            looked_up = patient_ids(session, external_ids - found.keys())
            if len(cache) + len(looked_up) > OWNER_CACHE:
                cache.clear()
            cache.update(looked_up)
            found.update(looked_up)
        return found

    def finish(self) -> None:
        for key, lines in self.repeats.items():
            for line in lines:
                others = ", ".join(f"line {o}" for o in lines if o != line)
                reason = f"{key!r} appears more than once (also {others})"
                self.report.errors.append(RowError(line, f"line {line}", "external_id", reason))
        self.report.errors.sort()
        if self.report.errors and not self.skip_invalid:
            self.report.counts = Counts()  # all or nothing: the caller rolls back
            self.report.refused = True
            self.step(self.held)
            return
        self.plan()
        if self.scan.kind == "patients" and self.report.counts.changed >= ANALYZE_ROWS:
            analyze(self.session, "patients", "consents")  # for the treatments' import next
        if self.planned >= ANALYZE_ROWS:
            # The dispatcher's claims are planned on them next: with an empty table's statistics
            # the claim sorted every waiting reminder (489 ms against 8 ms, 670,000 reminders).
            analyze(self.session, "reminders")
        self.report.written = True

    def plan(self) -> None:
        """Plan the groups written so far (one call: the planner batches them itself and says
        when each batch is written, for the progress bar)."""
        fresh = self.report.counts.changed - self.analyzed
        if self.to_plan and self.scan.kind == "treatments" and fresh >= ANALYZE_ROWS:
            analyze(self.session, "treatments")  # planning reads what was just written
            self.analyzed = self.report.counts.changed
        groups, held = sorted(self.to_plan), self.held
        self.to_plan, self.held = set(), 0
        planned, reported = 0, 0

        def batch_written(count: int) -> None:
            nonlocal planned, reported
            planned += count
            done = held * planned // len(groups)
            self.step(done - reported)
            reported = done

        self.planned += plan_groups(
            self.session, self.runtime, groups, self.now, progress=batch_written, reader=self.reader
        )
        self.step(held - reported)

    def step(self, rows: int) -> None:
        if self.progress and rows:
            with self.stepping:  # checking and storing move it from two threads
                self.progress(rows)
