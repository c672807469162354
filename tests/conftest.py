"""Shared fixtures: a migrated database (SQLite by default, PostgreSQL when
REMINDERS_TEST_DATABASE_URL names one), a runtime with recording senders, factories."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reminders import migrate
from reminders.channels.recording import RecordingSender
from reminders.db import Base, make_engine
from reminders.runtime import Runtime, build_runtime
from reminders.settings import Settings, load_settings
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.support.postgres import create_postgres_database, drop_postgres_database
from tests.support.service import kill_leftovers

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")


POSTGRES_URL = os.environ.get("REMINDERS_TEST_POSTGRES_URL") or (
    os.environ.get("REMINDERS_TEST_DATABASE_URL", "")
    if os.environ.get("REMINDERS_TEST_DATABASE_URL", "").startswith("postgresql")
    else ""
)


@pytest.fixture(autouse=True)
def _no_service_outlives_its_test() -> Iterator[None]:
    """A test that fails half-way leaves no ``reminders`` process behind to run into the next
    test (its port, its database, a warning when the next test collects the garbage)."""
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the whole run; tests empty it after themselves."""
    base = os.environ.get("REMINDERS_TEST_DATABASE_URL", "")
    if base.startswith("postgresql"):
        url = create_postgres_database(base)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'reminders.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    if url.startswith("postgresql"):
        drop_postgres_database(url)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return load_settings({}, database_url=database_url, config_dir=CONFIG, log_format="console")


@pytest.fixture
def senders() -> dict[str, RecordingSender]:
    return {c: RecordingSender(c) for c in ("email", "sms", "whatsapp")}


@pytest.fixture
def runtime(settings: Settings, senders: dict[str, RecordingSender]) -> Iterator[Runtime]:
    rt = build_runtime(settings, dict(senders))
    yield rt
    empty_database(rt)
    rt.close()


def empty_database(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    """A fake Twilio serving on 127.0.0.1 (a test module may define its own)."""
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    """A fake SendGrid serving on 127.0.0.1."""
    with FakeSendGrid() as fake:
        yield fake


@pytest.fixture
def now() -> dt.datetime:
    """A fixed instant: a Wednesday morning in Istanbul."""
    return dt.datetime(2026, 3, 4, 7, 0, tzinfo=dt.UTC)
