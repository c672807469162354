"""Checking a batch of raw rows before anything is written (the CSV import and the sync).

Every row goes through the one validation layer (:mod:`reminders.records`); an external id
that appears twice marks both rows bad (which one is right is not ours to guess); a treatment
naming a patient that is not stored is bad too. A row with any problem is left out whole.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy.orm import Session

from reminders.importing.bulk import patient_ids
from reminders.records import InvalidRecordError, Rules, TreatmentRecord, as_text

R = TypeVar("R")
PROGRESS_STEP = 1000


@dataclass(frozen=True)
class RawRow:
    """One input row: where it came from (``line 7``, ``row 3``), its order, its values."""

    number: int
    where: str
    values: Mapping[str, object]


@dataclass(frozen=True, order=True)
class RowError:
    """A problem with one row: where, which field (empty for the whole row) and why."""

    number: int
    where: str
    field: str
    reason: str

    def describe(self, field_word: str = "column") -> str:
        if not self.field:
            return f"{self.where}: {self.reason}"
        return f"{self.where}, {field_word} {self.field}: {self.reason}"


@dataclass
class Checked(Generic[R]):
    """The good records (with their row numbers) and every problem of the bad rows."""

    records: list[tuple[int, R]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        return len({e.number for e in self.errors})

    def drop(self, errors: Sequence[RowError]) -> None:
        """Add ``errors`` and leave their rows out."""
        bad = {e.number for e in errors}
        self.errors = sorted([*self.errors, *errors])
        self.records = [(n, r) for n, r in self.records if n not in bad]


def check_rows(
    rows: Sequence[RawRow],
    parse: Callable[[Mapping[str, object], Rules], R],
    rules: Rules,
    progress: Callable[[int], None] | None = None,
) -> Checked[R]:
    """Parse every row and flag repeated external ids (``progress`` hears every 1,000 rows)."""
    checked: Checked[R] = Checked()
    errors: list[RowError] = []
    for index, row in enumerate(rows, start=1):
        try:
            checked.records.append((row.number, parse(row.values, rules)))
        except InvalidRecordError as exc:
            errors += [RowError(row.number, row.where, p.field, p.reason) for p in exc.problems]
        if progress and (index % PROGRESS_STEP == 0 or index == len(rows)):
            progress(index % PROGRESS_STEP or PROGRESS_STEP)
    checked.drop([*errors, *_repeats(rows)])
    return checked


def _repeats(rows: Sequence[RawRow]) -> list[RowError]:
    seen: defaultdict[str, list[RawRow]] = defaultdict(list)
    for row in rows:
        try:
            key = as_text(row.values.get("external_id"))
        except TypeError:
            continue  # reported by the parser
        if key:
            seen[key].append(row)
    errors = []
    for key, group in seen.items():
        for row in group if len(group) > 1 else ():
            others = ", ".join(o.where for o in group if o is not row)
            reason = f"{key!r} appears more than once (also {others})"
            errors.append(RowError(row.number, row.where, "external_id", reason))
    return errors


def drop_unknown_patients(
    session: Session, checked: Checked[TreatmentRecord], rows: Sequence[RawRow]
) -> None:
    """Leave out treatments whose patient is not stored, naming the row."""
    known = patient_ids(session, (r.patient_external_id for _, r in checked.records))
    where = {row.number: row.where for row in rows}
    checked.drop(
        [
            RowError(n, where[n], "patient_external_id", f"no patient {r.patient_external_id!r}")
            for n, r in checked.records
            if r.patient_external_id not in known
        ]
    )
