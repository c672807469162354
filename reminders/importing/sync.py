"""Sync from the clinic's own database, which stays the source of truth.

The source is any SQLAlchemy URL in ``REMINDERS_SYNC_DATABASE_URL`` (never a file: it holds
credentials), opened read-only. ``config/sync.toml`` (see ``config/sync.example.toml``) holds
one query for patients and one for treatments, each returning the columns of the matching CSV
file, so every row goes through the same validation as an import. Optional columns:

- ``updated_at`` (named by the section's ``updated_at`` key): the sync is incremental, reading
  rows at or after the last cursor (rows at the cursor again, which then change nothing), with
  the cursor kept in ``sync_state``;
- ``deleted`` (named by the ``deleted`` key): a true value deletes the treatment (its unsent
  reminders are cancelled) or makes the patient inactive.

Without ``updated_at`` every run reads everything, and a stored treatment the source no longer
returns is deleted (unless ``delete_missing = false``, or the source returned no treatments at
all, which looks like a broken query rather than an empty clinic). Bad rows are skipped and
reported, never block the rest. A run that changes nothing writes nothing.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, or_, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from reminders import protocol_store
from reminders.importing.batch import RawRow, RowError, check_rows, drop_unknown_patients
from reminders.importing.source import (
    Query,
    SyncConfig,
    load_sync_config,
    read_source,
    source_engine,
)
from reminders.logs import get_logger
from reminders.models import SyncState, Treatment
from reminders.records import Rules, as_text, parse_patient, parse_treatment
from reminders.runtime import Runtime
from reminders.settings import ConfigError
from reminders.upsert import (
    Counts,
    Outcome,
    delete_treatments,
    upsert_patients,
    upsert_treatments,
)

log = get_logger(__name__)
SOURCE = "sync"


@dataclass
class SyncReport:
    patients: Counts = field(default_factory=Counts)
    treatments: Counts = field(default_factory=Counts)
    errors: list[RowError] = field(default_factory=list)
    skipped: str | None = None  # why the run did nothing (another replica is syncing)

    @property
    def changed(self) -> int:
        return self.patients.changed + self.treatments.changed


def run_sync(
    runtime: Runtime, config: SyncConfig, *, now: dt.datetime, full: bool = False
) -> SyncReport:
    """One sync pass in one transaction (``full`` ignores the cursors)."""
    url = runtime.settings.sync_database_url
    if url is None:
        raise ConfigError("REMINDERS_SYNC_DATABASE_URL is not set")
    engine = source_engine(url.get_secret_value())
    try:
        with engine.connect() as source, runtime.sessions() as session, session.begin():
            return _sync(source, session, runtime, config, now, full)
    finally:
        engine.dispose()


def _sync(
    source: Connection,
    session: Session,
    runtime: Runtime,
    config: SyncConfig,
    now: dt.datetime,
    full: bool,
) -> SyncReport:
    if not _lock(session, config.name):
        return SyncReport(skipped="another process is syncing")
    protocol_store.refresh(session, runtime)
    rules = Rules.of(runtime.settings, runtime.protocols, now)
    run = _Pass(source, session, runtime, config, rules, now, full)
    if config.patients:
        run.patients(config.patients)
    if config.treatments:
        run.treatments(config.treatments)
    return run.report


def _lock(session: Session, name: str) -> bool:
    """One sync at a time across replicas (PostgreSQL; SQLite has one writer anyway)."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    key = zlib.crc32(f"reminders-sync:{name}".encode())
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}))


@dataclass
class _Pass:
    source: Connection
    session: Session
    runtime: Runtime
    config: SyncConfig
    rules: Rules
    now: dt.datetime
    full: bool
    report: SyncReport = field(default_factory=SyncReport)

    def patients(self, query: Query) -> None:
        key = f"{self.config.name}:patients"
        read = read_source(self.source, query, self._cursor(key), "patients")
        inactive = [RawRow(r.number, r.where, {**r.values, "active": "no"}) for r in read.deleted]
        checked = check_rows([*read.rows, *inactive], parse_patient, self.rules)
        records = [r for _, r in checked.records]
        outcomes = upsert_patients(self.session, self.runtime, records, source=SOURCE, now=self.now)
        self.report.patients.add(outcomes)
        self._done(key, read.cursor, checked.errors)

    def treatments(self, query: Query) -> None:
        key = f"{self.config.name}:treatments"
        read = read_source(self.source, query, self._cursor(key), "treatments")
        checked = check_rows(read.rows, parse_treatment, self.rules)
        drop_unknown_patients(self.session, checked, read.rows)
        records = [r for _, r in checked.records]
        outcomes = upsert_treatments(
            self.session, self.runtime, records, source=_source(self.config), now=self.now
        )
        self.report.treatments.add(outcomes)
        gone = {as_text(r.values.get("external_id")) for r in read.deleted}
        if query.updated_at is None or self.full:
            gone.update(_missing(self.session, self.config, [*read.rows, *read.deleted]))
        deleted = delete_treatments(self.session, self.runtime, sorted(gone - {""}), now=self.now)
        self.report.treatments.add(o for o in deleted if o is Outcome.DELETED)
        self._done(key, read.cursor, checked.errors)

    def _cursor(self, key: str) -> str | None:
        state = self.session.get(SyncState, key)
        return None if self.full or state is None else state.cursor

    def _done(self, key: str, cursor: str | None, errors: list[RowError]) -> None:
        self.report.errors += errors
        _save_cursor(self.session, key, cursor, errors, self.now)


def _missing(session: Session, config: SyncConfig, rows: Sequence[RawRow]) -> list[str]:
    """Stored live treatments a full read of the source did not return."""
    if not config.delete_missing:
        return []
    if not rows:
        log.warning("sync_source_empty", source=config.name, action="nothing deleted")
        return []
    present = {as_text(r.values.get("external_id")) for r in rows}
    # Only what this sync wrote (or rows from before sources were recorded): a treatment
    # imported from a CSV file or put through the API is not this source's to delete.
    mine = or_(Treatment.source == _source(config), Treatment.source.is_(None))
    stored = session.scalars(
        select(Treatment.external_id).where(Treatment.deleted_at.is_(None), mine)
    )
    return [external_id for external_id in stored if external_id not in present]


def _source(config: SyncConfig) -> str:
    return f"{SOURCE}:{config.name}"


def _save_cursor(
    session: Session, key: str, cursor: str | None, errors: list[RowError], now: dt.datetime
) -> None:
    """Write the sync state only when it changes, so a run with nothing new writes nothing."""
    summary = "; ".join(e.describe("field") for e in errors[:5])[:500] or None
    state = session.get(SyncState, key)
    if state is None:
        state = SyncState(source=key)
        session.add(state)
    elif (state.cursor, state.last_error) == (cursor, summary):
        return
    state.cursor, state.last_error, state.last_run_at = cursor, summary, now


# The scheduler's job


def sync_configured(runtime: Runtime) -> bool:
    return runtime.settings.sync_database_url is not None


def sync_job(runtime: Runtime) -> None:
    """One sync pass for the scheduler (``reminders run`` adds it every
    ``REMINDERS_SYNC_INTERVAL`` seconds when a source is set). Never raises: a failure is
    logged and the next run tries again."""
    try:
        config = load_sync_config(runtime.settings.config_dir)
        report = run_sync(runtime, config, now=runtime.clock())
    except Exception as exc:
        log.error("sync_failed", error=describe_failure(exc))
        return
    log_report(report)


def describe_failure(exc: Exception) -> str:
    """One line about a failure, without the SQL and parameters SQLAlchemy adds."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}"[:300]


def log_report(report: SyncReport) -> None:
    if report.skipped:
        log.info("sync_skipped", reason=report.skipped)
        return
    for error in report.errors[:50]:
        log.warning("sync_row_invalid", row=error.where, field=error.field, reason=error.reason)
    log.info(
        "sync_done",
        patients=str(report.patients),
        treatments=str(report.treatments),
        invalid_rows=len({e.number for e in report.errors}),
    )
