"""Engine, sessions and the column types every model shares.

Datetimes are stored as naive UTC on SQLite and ``timestamptz`` on PostgreSQL; the
:class:`UTCDateTime` type hands back aware UTC datetimes on both and refuses naive ones,
so local time can never leak into the database.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

UTC = dt.UTC
CONNECT_TIMEOUT = 10  # seconds, PostgreSQL (overridden by the URL or PGCONNECT_TIMEOUT)
# PostgreSQL ended the transaction to break a lock cycle or a serialization conflict: nothing
# of it was written, and running it again is the documented answer.
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})


_AFTER_COMMIT = "reminders.after_commit"


def after_commit(session: Session, effect: Callable[[], object]) -> None:
    """Run ``effect`` (a metric, a log line) once the transaction ``session`` is in commits. A
    rollback drops it, so a transaction run again after a conflict counts its effects once."""
    session.info.setdefault(_AFTER_COMMIT, []).append(effect)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for effect in session.info.pop(_AFTER_COMMIT, ()):
        effect()


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, _previous: object) -> None:
    session.info.pop(_AFTER_COMMIT, None)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UTCDateTime()}


def is_conflict(exc: BaseException) -> bool:
    """A transaction the database rolled back for a conflict with another (deadlock,
    serialization failure): safe and right to run again at once."""
    origin = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(origin, "sqlstate", None) in CONFLICT_SQLSTATES


def utcnow() -> dt.datetime:
    """The one place outside the CLI that reads the wall clock (defaults for audit columns)."""
    return dt.datetime.now(UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if "connect_timeout" not in make_url(url).query and not os.environ.get("PGCONNECT_TIMEOUT"):
        # An unreachable server fails a connection in seconds, not the OS's minutes: start-up
        # retries and the job backoff then take over.
        kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", CONNECT_TIMEOUT)
    return create_engine(url, **kwargs)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy issue BEGIN itself (see _sqlite_on_begin) instead of pysqlite's lazy one.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    # SQLite has one writer: take the write lock at BEGIN so two dispatchers serialise
    # cleanly instead of failing with "database is locked" on upgrade from a read lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session
