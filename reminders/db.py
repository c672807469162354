"""Engine, sessions and the column types every model shares.

Datetimes are stored as naive UTC on SQLite and ``timestamptz`` on PostgreSQL; the
:class:`UTCDateTime` type hands back aware UTC datetimes on both and refuses naive ones,
so local time can never leak into the database.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Integer,
    any_,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Session, sessionmaker
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


def among(
    bind: Session | Connection,
    column: ColumnElement[int] | InstrumentedAttribute[int],
    ids: Collection[int],
) -> ColumnElement[bool]:
    """``column IN ids``, in the form :func:`ids_filter` gives ``bind``'s database."""
    dialect = bind.dialect if isinstance(bind, Connection) else bind.get_bind().dialect
    return ids_filter(column, dialect.name == "postgresql", ids=ids)


def ids_filter(
    column: ColumnElement[int] | InstrumentedAttribute[int],
    postgresql: bool,
    *,
    name: str | None = None,
    ids: Collection[int] = (),
) -> ColumnElement[bool]:
    """``column IN ids``; on PostgreSQL ``column = ANY(:ids)``, one array parameter: the
    statement's text does not change with the number of ids, so the driver keeps its parsing
    and the server can prepare it (an ``IN`` of 100 parameters is parsed anew every time).
    ``name``: a parameter given at execution (a statement built once), else ``ids``, bound."""
    value = sorted(ids)
    if postgresql:
        return column == any_(bindparam(name, value, type_=ARRAY(Integer)))
    return column.in_(bindparam(name, value, expanding=True))


def utcnow() -> dt.datetime:
    """The one place outside the CLI that reads the wall clock (defaults for audit columns)."""
    return dt.datetime.now(UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for the backend: SQLite gets WAL, a busy timeout, foreign keys and its
    checkpoints in the background (:class:`_Checkpointer`)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        path = _sqlite_file(engine)
        if path is not None:
            event.listen(engine, "connect", _no_checkpoint_on_commit)
            _CHECKPOINTER.watch(engine, path)
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


def _no_checkpoint_on_commit(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")  # _Checkpointer does it


def _sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite engine (absolute), None for an in-memory database."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


# Left to itself, SQLite checkpoints inside the commit that takes the WAL past 1,000 pages:
# one commit in many then waits for pages to be copied into the database file and synced
# (a claim of 500 reminders took 22 ms against 7 ms for the others, 5,000,000 rows). An
# engine's connections turn that off and this thread checkpoints instead, PASSIVE (it never
# waits for readers or writers, nor blocks them), on its own connection, whenever a WAL
# changed since its last look. A process's last connection to close checkpoints as well.
CHECKPOINT_EVERY = 0.5  # seconds between looks at each database's WAL


class _Checkpointer:
    """One daemon thread per process for every SQLite engine made here that is still alive
    (it ends when there are none, and starts again with the next)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._watched: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
        self._last: dict[str, tuple[int, int]] = {}  # database -> its WAL's size and mtime
        self._thread: threading.Thread | None = None

    def watch(self, engine: Engine, path: str) -> None:
        with self._lock:
            self._watched[engine] = path
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-checkpoint", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                paths = set(self._watched.values())
                if not paths:
                    self._thread = None
                    self._last.clear()
                    return
            for path in sorted(paths):
                self.checkpoint(path)

    def checkpoint(self, path: str) -> bool:
        """Checkpoint ``path`` if its WAL changed since it was last checkpointed in full;
        True if every frame is in the database file now."""
        try:
            stat = os.stat(path + "-wal")
        except OSError:  # no WAL (yet, or any more: the database was removed)
            self._last.pop(path, None)
            return False
        seen = (stat.st_size, stat.st_mtime_ns)
        if self._last.get(path) == seen:
            return False
        # mode=rw: a database removed meanwhile is not created again, empty.
        uri = f"file:{urllib.parse.quote(path)}?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=0)
            try:
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:  # locked, or gone: the next look tries again
            return False
        if busy or copied < frames:  # a reader still needs the WAL's older frames
            return False
        self._last[path] = seen
        return True


_CHECKPOINTER = _Checkpointer(CHECKPOINT_EVERY)


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
