"""Sync from the clinic's own database: a second real database (a SQLite file, and a second
PostgreSQL database when PostgreSQL is available) read through the same validation."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError

from reminders.cli import main
from reminders.importing.source import Query, SyncConfig, load_sync_config, source_engine
from reminders.importing.sync import SyncReport, run_sync, sync_job
from reminders.models import Patient, Reminder, SyncState, Treatment
from reminders.records import Rules, parse_treatment
from reminders.runtime import Runtime, build_runtime
from reminders.service import Service
from reminders.settings import ConfigError, Settings, load_settings
from reminders.upsert import upsert_treatments
from tests.conftest import (
    CONFIG,
    POSTGRES_URL,
    create_postgres_database,
    drop_postgres_database,
    empty_database,
)
from tests.test_import_csv import statements_that_write

NOW = dt.datetime(2026, 3, 4, 7, 0, tzinfo=dt.UTC)
TABLES = MetaData()
PATIENTS = Table(
    "clinic_patients",
    TABLES,
    Column("mrn", String(20), primary_key=True),
    Column("first_name", String(50)),
    Column("last_name", String(50)),
    Column("email", String(100)),
    Column("mobile", String(30)),
    Column("lang", String(10)),
    Column("tz", String(40)),
    Column("email_ok", Boolean),
    Column("sms_ok", Boolean),
    Column("travel", Integer),
    Column("updated_at", DateTime),
    Column("archived", Boolean),
)
VISITS = Table(
    "clinic_visits",
    TABLES,
    Column("visit_id", String(20), primary_key=True),
    Column("mrn", String(20)),
    Column("protocol", String(40)),
    Column("visit_date", Date),
    Column("product", String(40)),
    Column("units", Numeric(8, 2)),
    Column("site", String(40)),
    Column("updated_at", DateTime),
    Column("cancelled", Boolean),
)
PATIENTS_SQL = """
SELECT mrn AS external_id, first_name AS given_name, last_name AS family_name, email,
       mobile AS phone, NULL AS whatsapp, lang AS language, tz AS timezone,
       'sms|email' AS channels, email_ok AS consent_email, sms_ok AS consent_sms,
       NULL AS consent_whatsapp, travel AS travel_lead_days, updated_at, archived
FROM clinic_patients
"""
VISITS_SQL = """
SELECT visit_id AS external_id, mrn AS patient_external_id, protocol,
       visit_date AS administered_on, product, units, site AS location, updated_at, cancelled
FROM clinic_visits;
"""
INCREMENTAL = SyncConfig(
    patients=Query(query=PATIENTS_SQL, updated_at="updated_at", deleted="archived"),
    treatments=Query(query=VISITS_SQL, updated_at="updated_at", deleted="cancelled"),
)
FULL = SyncConfig(
    patients=Query(query=PATIENTS_SQL.replace(", updated_at, archived", "")),
    treatments=Query(query=VISITS_SQL.replace(", updated_at, cancelled", "")),
)


@dataclass
class Source:
    """The clinic's database, written by the test as the clinic's own software would."""

    url: str
    engine: Engine
    ticks: Iterator[int] = field(default_factory=itertools.count)

    def stamp(self) -> dt.datetime:
        return dt.datetime(2026, 3, 1, 12, 0) + dt.timedelta(seconds=next(self.ticks))

    def add_patient(self, mrn: str, **values: Any) -> None:
        row = {
            "mrn": mrn,
            "first_name": "Ayşe",
            "last_name": "Yılmaz",
            "email": f"{mrn}@example.com",
            "mobile": "0543 197 43 20",
            "lang": "tr",
            "tz": "Europe/Istanbul",
            "email_ok": True,
            "sms_ok": True,
            "travel": 0,
            "archived": False,
        }
        self._run(insert(PATIENTS).values(**{**row, **values, "updated_at": self.stamp()}))

    def add_visit(self, visit_id: str, mrn: str, on: dt.date, **values: Any) -> None:
        row = {"visit_id": visit_id, "mrn": mrn, "protocol": "chronic_migraine", "visit_date": on}
        row |= {"product": "Botox", "units": 155, "site": "Istanbul", "cancelled": False}
        self._run(insert(VISITS).values(**{**row, **values, "updated_at": self.stamp()}))

    def change_visit(self, visit_id: str, *, touch: bool = True, **values: Any) -> None:
        stamp = {"updated_at": self.stamp()} if touch else {}
        self._run(update(VISITS).where(VISITS.c.visit_id == visit_id).values(**values, **stamp))

    def change_patient(self, mrn: str, **values: Any) -> None:
        where = PATIENTS.c.mrn == mrn
        self._run(update(PATIENTS).where(where).values(**values, updated_at=self.stamp()))

    def remove_visit(self, visit_id: str) -> None:
        self._run(delete(VISITS).where(VISITS.c.visit_id == visit_id))

    def _run(self, statement: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(statement)


SOURCES = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL server configured"),
        ],
    ),
]


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Source]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'clinic.db'}"
    else:
        url = create_postgres_database(POSTGRES_URL, prefix="reminders_clinic")
    engine = create_engine(url)
    TABLES.create_all(engine)
    yield Source(url, engine)
    engine.dispose()
    if request.param != "sqlite":
        drop_postgres_database(url)


sqlite_source = pytest.mark.parametrize("source", ["sqlite"], indirect=True)


@pytest.fixture
def synced(settings: Settings, source: Source) -> Iterator[Runtime]:
    """The service's runtime, with the source's URL as if from REMINDERS_SYNC_DATABASE_URL."""
    with_source = settings.model_copy(update={"sync_database_url": SecretStr(source.url)})
    runtime = build_runtime(with_source, clock=lambda: NOW)
    yield runtime
    empty_database(runtime)
    runtime.close()


def sync(runtime: Runtime, config: SyncConfig = INCREMENTAL, **options: Any) -> SyncReport:
    return run_sync(runtime, config, now=NOW, **options)


def reminders(runtime: Runtime) -> dict[tuple[str, str], tuple[str, str | None, dt.datetime]]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Treatment.external_id, Reminder.step, Reminder.status, Reminder.reason)
            .add_columns(Reminder.due_at)
            .join(Treatment, Reminder.treatment_id == Treatment.id)
        )
        return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}


def seed(source: Source) -> None:
    source.add_patient("m1")
    source.add_patient("m2", mobile="+49 151 23456789", lang="de", tz="Europe/Berlin", travel=7)
    source.add_visit("v1", "m1", dt.date(2026, 1, 10))
    source.add_visit("v2", "m2", dt.date(2025, 6, 1))  # history: nothing ahead
    source.add_visit("v3", "m2", dt.date(2026, 1, 20), protocol="cervical_dystonia")


# Syncing


def test_a_first_sync_creates_the_records_and_plans_their_reminders(
    synced: Runtime, source: Source
) -> None:
    seed(source)
    report = sync(synced)
    assert (report.patients.created, report.treatments.created, report.errors) == (2, 3, [])
    with synced.sessions() as session:
        phones = {r[0]: r[1] for r in session.execute(select(Patient.external_id, Patient.phone))}
    assert phones == {"m1": "+905431974320", "m2": "+4915123456789"}
    planned = reminders(synced)
    assert {key for key in planned} == {
        (visit, step) for visit in ("v1", "v3") for step in ("upcoming", "due", "last_call")
    }
    assert {status for status, _, _ in planned.values()} == {"pending"}


def test_a_second_sync_with_nothing_changed_writes_nothing(synced: Runtime, source: Source) -> None:
    seed(source)
    sync(synced)
    with statements_that_write(synced.engine) as writes:
        report = sync(synced)
        full = sync(synced, full=True)
    assert (report.changed, full.changed) == (0, 0)
    assert report.patients.unchanged + report.treatments.unchanged >= 1  # the rows at the cursor
    assert writes == []


def test_a_corrected_date_at_the_source_replans_the_unsent_reminders(
    synced: Runtime, source: Source
) -> None:
    seed(source)
    sync(synced)
    before = reminders(synced)
    source.change_visit("v1", visit_date=dt.date(2026, 1, 17))
    report = sync(synced)
    assert (report.treatments.created, report.treatments.updated) == (0, 1)
    after = reminders(synced)
    for step in ("upcoming", "due", "last_call"):
        assert after["v1", step][2] - before["v1", step][2] == dt.timedelta(days=7)
        assert after["v1", step][0] == "pending"
    assert after["v3", "due"] == before["v3", "due"]


def test_a_treatment_deleted_at_the_source_cancels_its_unsent_reminders(
    synced: Runtime, source: Source
) -> None:
    seed(source)
    sync(synced)
    source.change_visit("v1", cancelled=True)
    assert sync(synced).treatments.deleted == 1
    statuses = {k: v[:2] for k, v in reminders(synced).items() if k[0] == "v1"}
    assert set(statuses.values()) == {("cancelled", "deleted")}
    assert sync(synced).changed == 0


@sqlite_source
def test_a_patient_archived_at_the_source_becomes_inactive(synced: Runtime, source: Source) -> None:
    seed(source)
    sync(synced)
    source.change_patient("m1", archived=True)
    assert sync(synced).patients.updated == 1
    with synced.sessions() as session:
        assert (
            session.scalars(select(Patient.active).where(Patient.external_id == "m1")).one()
            is False
        )
    assert {v[:2] for k, v in reminders(synced).items() if k[0] == "v1"} == {
        ("cancelled", "inactive")
    }


@sqlite_source
def test_an_incremental_sync_reads_only_rows_changed_since_the_cursor(
    synced: Runtime, source: Source
) -> None:
    seed(source)
    sync(synced)
    source.change_visit("v1", touch=False, units=200)  # changed without a new updated_at
    assert sync(synced).treatments.updated == 0
    with synced.sessions() as session:
        cursor = session.get_one(SyncState, "clinic:treatments").cursor
    assert cursor == "str:2026-03-01 12:00:04.000000"
    assert sync(synced, full=True).treatments.updated == 1


def test_a_full_sync_deletes_treatments_the_source_no_longer_has(
    synced: Runtime, source: Source
) -> None:
    seed(source)
    assert sync(synced, FULL).treatments.created == 3
    source.remove_visit("v1")
    report = sync(synced, FULL)
    assert (report.treatments.deleted, report.treatments.unchanged) == (1, 2)
    assert {v[:2] for k, v in reminders(synced).items() if k[0] == "v1"} == {
        ("cancelled", "deleted")
    }


def test_a_full_sync_leaves_alone_treatments_other_sources_wrote(
    synced: Runtime, source: Source
) -> None:
    """A clinic that syncs visits and also imports a CSV (or uses the API): the full sync
    deletes only the treatments it wrote itself."""
    seed(source)
    sync(synced, FULL)
    rules = Rules.of(synced.settings, synced.protocols, NOW)
    record = parse_treatment(
        {
            "external_id": "csv-1",
            "patient_external_id": "m1",
            "protocol": "chronic_migraine",
            "administered_on": "2026-02-01",
        },
        rules,
    )
    with synced.sessions() as session, session.begin():
        upsert_treatments(session, synced, [record], source="import", now=NOW)
    source.remove_visit("v1")
    report = sync(synced, FULL)
    assert report.treatments.deleted == 1  # v1, the sync's own; csv-1 stays
    with synced.sessions() as session:
        live = dict(
            session.execute(
                select(Treatment.external_id, Treatment.source).where(
                    Treatment.deleted_at.is_(None)
                )
            ).all()
        )
    assert live == {"v2": "sync:clinic", "v3": "sync:clinic", "csv-1": "import"}


@sqlite_source
def test_a_full_sync_that_reads_no_treatment_at_all_deletes_nothing(
    synced: Runtime, source: Source
) -> None:
    seed(source)
    sync(synced, FULL)
    for visit in ("v1", "v2", "v3"):
        source.remove_visit(visit)
    assert sync(synced, FULL).treatments.deleted == 0
    keep = SyncConfig(delete_missing=False, treatments=FULL.treatments)
    source.add_visit("v9", "m1", dt.date(2025, 1, 1))
    assert sync(synced, keep).treatments.deleted == 0


@sqlite_source
def test_bad_rows_are_skipped_and_reported_while_the_rest_syncs(
    synced: Runtime, source: Source
) -> None:
    seed(source)
    source.add_patient("m3", mobile="12", tz="Mars/Base")
    source.add_visit("v4", "m3", dt.date(2026, 1, 10))
    source.add_visit("v5", "m1", dt.date(2026, 1, 10), protocol="botox")
    report = sync(synced)
    assert [e.describe("field") for e in report.errors] == [
        "patients row 3 (m3), field phone: is not a valid phone number "
        "(national numbers are read as TR)",
        "patients row 3 (m3), field timezone: 'Mars/Base' is not an IANA time zone "
        "(e.g. Europe/Istanbul)",
        "treatments row 4 (v4), field patient_external_id: no patient 'm3'",
        "treatments row 5 (v5), field protocol: unknown protocol 'botox'; known: "
        "bladder_dysfunction, cervical_dystonia, chronic_migraine, myofascial_pain, "
        "tmj_bruxism, upper_limb_spasticity",
    ]
    assert (report.patients.created, report.treatments.created) == (2, 3)
    with synced.sessions() as session:
        state = session.get_one(SyncState, "clinic:patients")
    assert state.last_error is not None and state.last_error.startswith("patients row 3 (m3)")
    source.change_patient("m3", mobile="0532 111 22 33", tz="Europe/Istanbul")
    source.change_visit("v4")
    assert (sync(synced).patients.created, sync(synced).treatments.created) == (1, 0)


def test_the_source_is_opened_read_only(source: Source) -> None:
    engine = source_engine(source.url)
    try:
        with pytest.raises(DBAPIError, match=r"(?i)read.only|readonly"), engine.begin() as conn:
            conn.execute(text("DELETE FROM clinic_visits"))
    finally:
        engine.dispose()


# Configuration and the scheduler


def test_the_example_config_parses(tmp_path: Path) -> None:
    (tmp_path / "sync.toml").write_text((CONFIG / "sync.example.toml").read_text())
    config = load_sync_config(tmp_path)
    assert config.patients is not None and config.patients.updated_at == "updated_at"
    assert config.treatments is not None and config.treatments.deleted == "deleted"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('url = "postgresql://u:p@h/db"', "url: Extra inputs are not permitted"),
        ('[patients]\nquery = "SELECT 1"\nupdated_at = "x; DROP"', "patients.updated_at"),
        ("[treatments]\n", "treatments.query: Field required"),
        ("[patients\n", "sync.toml: Expected ']'"),
    ],
)
def test_a_bad_sync_config_is_refused_naming_the_key(
    tmp_path: Path, body: str, message: str
) -> None:
    (tmp_path / "sync.toml").write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sync_config(tmp_path)


def test_the_source_url_is_read_from_the_environment_never_from_settings_toml(
    tmp_path: Path,
) -> None:
    (tmp_path / "settings.toml").write_text('sync_database_url = "sqlite:///x.db"\n')
    with pytest.raises(ConfigError, match="REMINDERS_SYNC_DATABASE_URL only"):
        load_settings({"REMINDERS_CONFIG_DIR": str(tmp_path)})
    env = {"REMINDERS_CONFIG_DIR": str(CONFIG), "REMINDERS_SYNC_DATABASE_URL": "sqlite:///x.db"}
    settings = load_settings(env)
    assert settings.sync_database_url is not None
    assert "x.db" not in repr(settings)


@sqlite_source
def test_the_sync_job_logs_a_failure_and_never_raises(
    settings: Settings, source: Source, tmp_path: Path
) -> None:
    missing = settings.model_copy(
        update={"sync_database_url": SecretStr(f"sqlite:///{tmp_path / 'nope.db'}")}
    )
    runtime = build_runtime(missing, clock=lambda: NOW)
    try:
        sync_job(runtime)  # no sync.toml in config/, and no such database
        with runtime.sessions() as session:
            assert session.scalar(select(func.count()).select_from(SyncState)) == 0
    finally:
        runtime.close()


def _config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "protocols.yaml").write_text((CONFIG / "protocols.yaml").read_text())
    query = VISITS_SQL.replace('"', '\\"')
    (folder / "sync.toml").write_text(
        f'[patients]\nquery = """{PATIENTS_SQL}"""\nupdated_at = "updated_at"\n'
        f'deleted = "archived"\n\n[treatments]\nquery = """{query}"""\n'
        f'updated_at = "updated_at"\ndeleted = "cancelled"\n'
    )
    return folder


@sqlite_source
def test_the_service_syncs_on_its_interval_when_a_source_is_set(
    synced: Runtime, source: Source, tmp_path: Path
) -> None:
    seed(source)
    settings = synced.settings.model_copy(update={"config_dir": _config_dir(tmp_path)})
    runtime = build_runtime(settings)
    service = Service(runtime, owner="test")
    service.start()
    try:
        assert service.scheduler.get_job("sync") is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _count(runtime, Treatment) < 3:
            time.sleep(0.1)
    finally:
        _stop(service)
        runtime.close()
    assert _count(synced, Treatment) == 3


def test_the_service_has_no_sync_job_without_a_source(runtime: Runtime) -> None:
    service = Service(runtime, owner="test")
    service.start()
    try:
        assert service.scheduler.get_job("sync") is None
    finally:
        _stop(service)


def _stop(service: Service) -> None:
    """Stop the service and wait for the jobs it started to let go of the database."""
    service.stop()
    deadline = time.monotonic() + 30
    while service.runtime.engine.pool.checkedout() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)


def _count(runtime: Runtime, model: type) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@sqlite_source
def test_the_sync_command_runs_once_and_reports(
    synced: Runtime, source: Source, database_url: str, tmp_path: Path
) -> None:
    seed(source)
    env = {
        "REMINDERS_DATABASE_URL": database_url,
        "REMINDERS_CONFIG_DIR": str(_config_dir(tmp_path)),
        "REMINDERS_SYNC_DATABASE_URL": source.url,
        "REMINDERS_LOG_FORMAT": "console",
    }
    runner = CliRunner()
    first = runner.invoke(main, ["import", "sync"], env=env, catch_exceptions=False)
    assert first.stdout == (
        "patients: 2 created, 0 updated, 0 unchanged; "
        "treatments: 3 created, 0 updated, 0 unchanged\n"
    )
    again = runner.invoke(main, ["import", "sync"], env=env, catch_exceptions=False)
    assert "0 created, 0 updated" in again.stdout
    unset = runner.invoke(main, ["import", "sync"], env={**env, "REMINDERS_SYNC_DATABASE_URL": ""})
    assert unset.exit_code == 1 and "REMINDERS_SYNC_DATABASE_URL is not set" in unset.stderr
