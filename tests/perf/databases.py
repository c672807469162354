"""Fresh databases for the benchmarks, built by the project's migrations and dropped after.

PostgreSQL databases are created next to ``REMINDERS_PERF_POSTGRES_URL`` (default: the test
server, ``postgresql+psycopg://postgres@127.0.0.1:5432/test``); SQLite ones are files in the
run's scratch folder. :func:`bulk_load` is the fast path for millions of synthetic rows: the
secondary indexes and unique constraints of the tables are dropped first and rebuilt after,
and foreign keys are not checked while loading (the generator writes consistent rows).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from reminders import migrate
from reminders.channels import Sender
from reminders.db import make_engine
from reminders.runtime import Runtime, build_runtime
from reminders.settings import Settings, load_settings
from tests.support.postgres import create_postgres_database, drop_postgres_database

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("postgresql", "sqlite")


def postgres_base_url() -> str:
    env = os.environ.get("REMINDERS_PERF_POSTGRES_URL", "")
    test = os.environ.get("REMINDERS_TEST_DATABASE_URL", "")
    return env or (test if test.startswith("postgresql") else DEFAULT_POSTGRES)


@contextlib.contextmanager
def fresh_database(backend: str, scratch: Path, prefix: str) -> Iterator[str]:
    """A migrated, empty database for one benchmark; dropped (or deleted) afterwards."""
    if backend == "postgresql":
        url = create_postgres_database(postgres_base_url(), f"reminders_perf_{prefix}")
    else:
        url = f"sqlite:///{scratch / f'{prefix}-{uuid.uuid4().hex[:8]}.db'}"
    try:
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        if backend == "postgresql":
            drop_postgres_database(url)
        else:
            path = Path(make_url(url).database or "")
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)


def settings_for(url: str, **overrides: Any) -> Settings:
    """Settings as a test gives them: config from the checkout, nothing from the environment."""
    values: dict[str, Any] = {"database_url": url, "config_dir": CONFIG, "log_format": "console"}
    return load_settings({}, **{**values, **overrides})


def runtime_for(url: str, senders: dict[str, Sender] | None = None, **overrides: Any) -> Runtime:
    return build_runtime(settings_for(url, **overrides), senders)


def backend_of(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "sqlite"


@contextlib.contextmanager
def bulk_load(url: str, tables: Sequence[str]) -> Iterator[Connection]:
    """A connection in one transaction for loading ``tables`` fast; indexes come back and
    statistics are refreshed before it returns."""
    engine = _loading_engine(url)
    try:
        with engine.connect() as conn:
            dropped = _drop_indexes(conn, tables)
            yield conn
            for statement in dropped:
                conn.exec_driver_sql(statement)
            conn.commit()
            for table in tables:
                conn.exec_driver_sql(f"ANALYZE {table}")
            conn.commit()
            _settle(conn)
    finally:
        engine.dispose()


def _settle(conn: Connection) -> None:
    """Write the load out to disk now, so that no benchmark pays for it later (a first fsync
    of the SQLite file would flush gigabytes; PostgreSQL would checkpoint in the middle)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("CHECKPOINT")
        return
    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    path = make_url(str(conn.engine.url)).database
    if path:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _loading_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # A plain engine: foreign keys stay off (make_engine turns them on) and no BEGIN
        # IMMEDIATE is needed, nobody else uses the file while it loads.
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
        return engine
    return create_engine(url)


def _drop_indexes(conn: Connection, tables: Sequence[str]) -> list[str]:
    """Drop secondary indexes and unique constraints; the statements that rebuild them."""
    if conn.dialect.name == "sqlite":
        return _drop_sqlite_indexes(conn, tables)
    conn.exec_driver_sql("SET session_replication_role = replica")  # no FK triggers
    conn.exec_driver_sql("SET maintenance_work_mem = '512MB'")
    rebuild: list[str] = []
    for table in tables:
        constraints = conn.execute(
            text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = CAST(:t AS regclass) AND contype = 'u'"
            ),
            {"t": table},
        ).all()
        for name, definition in constraints:
            conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            rebuild.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        indexes = conn.execute(
            text(
                "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = CAST(:t AS regclass) AND NOT x.indisprimary "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
            ),
            {"t": table},
        ).all()
        for name, definition in indexes:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
            rebuild.append(definition)
    return rebuild


def _drop_sqlite_indexes(conn: Connection, tables: Sequence[str]) -> list[str]:
    rebuild: list[str] = []
    for table in tables:
        rows = conn.execute(
            text(
                "SELECT name, sql FROM sqlite_master "
                "WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"
            ),
            {"t": table},
        ).all()
        for name, definition in rows:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
            rebuild.append(definition)
    return rebuild


def reset_sequences(conn: Connection, tables: Sequence[str]) -> None:
    """After rows were written with explicit ids, PostgreSQL's sequences must move past them."""
    if conn.dialect.name != "postgresql":
        return
    for table in tables:
        conn.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)"
        )
