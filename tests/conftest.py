"""Shared fixtures: a migrated database (SQLite by default, PostgreSQL when
REMINDERS_TEST_DATABASE_URL names one), a runtime with recording senders, factories."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from reminders import migrate
from reminders.channels.recording import RecordingSender
from reminders.db import Base, make_engine
from reminders.runtime import Runtime, build_runtime
from reminders.settings import Settings, load_settings
from tests.fakes import FakeSendGrid, FakeTwilio

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")


def _admin_url(url: str) -> str:
    return make_url(url).set(database="postgres").render_as_string(hide_password=False)


def create_postgres_database(base_url: str, prefix: str = "reminders_test") -> str:
    """A new, empty PostgreSQL database next to ``base_url``; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(_admin_url(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(_admin_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


POSTGRES_URL = os.environ.get("REMINDERS_TEST_POSTGRES_URL") or (
    os.environ.get("REMINDERS_TEST_DATABASE_URL", "")
    if os.environ.get("REMINDERS_TEST_DATABASE_URL", "").startswith("postgresql")
    else ""
)


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
