"""Schema upgrades through Alembic, and the database coordination between replicas.

- :func:`upgrade` runs under a PostgreSQL advisory lock, so replicas that start at once take
  turns and the later ones find the schema already at head.
- :func:`when_available` retries an action with capped exponential backoff while the database
  cannot be reached (at startup, the database may come up after the service).
- :func:`exclusive` lets one replica at a time do a periodic job that gains nothing from
  running twice (planning).
"""

from __future__ import annotations

import functools
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import TypeVar

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from alembic import command
from reminders.logs import get_logger
from reminders.retry import RetryPolicy

log = get_logger(__name__)
T = TypeVar("T")

# Any constant works; it only has to be the same for every replica.
_ADVISORY_LOCK = 7_212_026
# Waiting for the database: 1 s, 2 s, 4 s ... then every 30 s (each with jitter), for ever.
STARTUP_RETRY = RetryPolicy(base_seconds=1.0, max_seconds=30.0, max_attempts=sys.maxsize)


def script_location() -> Path:
    """The migration scripts: ``alembic/`` in a checkout, ``reminders/_alembic`` in a wheel."""
    packaged = Path(str(files("reminders"))) / "_alembic"
    if (packaged / "env.py").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "alembic"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade in one transaction that first takes a PostgreSQL advisory lock: a replica that
    waited for it reads the version only once the first one committed, and has nothing to do."""
    config = alembic_config()
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)  # joins the transaction the lock opened
        conn.commit()  # ends it, and with it the lock; a failure rolls both back


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
        conn.commit()


@functools.cache
def head_revision() -> str | None:
    """The newest revision the installed code knows (read once: scripts do not change)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def at_head(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision the installed code knows."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(script.revision for script in scripts.walk_revisions())


def schema_problem(current: str | None, head: str | None = None) -> str | None:
    """Whether this code can work on a database whose schema is at ``current``: None when it
    can, else what is wrong. At head it can. At a revision this code does not know, a newer
    release has migrated it (a rolling upgrade): it can, because every revision keeps the
    previous release working (add first; drop what it still reads only a release later).
    Behind head, or with no schema, it cannot: `reminders migrate` first."""
    head = head or head_revision()
    if current == head or (current is not None and current not in known_revisions()):
        return None
    return f"schema at {current or 'nothing'}, not {head}: run `reminders migrate`"


def compatible(engine: Engine) -> bool:
    """The schema is at head, or newer (see :func:`schema_problem`)."""
    return schema_problem(current_revision(engine)) is None


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or the connection broke (worth retrying later)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def describe(exc: BaseException) -> str:
    """The driver's first line about ``exc``: no SQL, no parameters."""
    origin = getattr(exc, "orig", None) or exc
    lines = str(origin).strip().splitlines()
    return lines[0] if lines else type(origin).__name__


def when_available(
    engine: Engine,
    action: Callable[[], T],
    *,
    retry: RetryPolicy = STARTUP_RETRY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``action()``, tried again after a growing pause (one log line each) for as long as the
    database is unavailable. SQLite is a local file, so its errors are returned at once."""
    attempt = 0
    while True:
        try:
            return action()
        except DBAPIError as exc:
            if engine.dialect.name == "sqlite" or not is_unavailable(exc):
                raise
            attempt += 1
            delay = retry.delay(attempt)
            log.warning(
                "database_unavailable",
                attempt=attempt,
                retry_in=round(delay, 1),
                database=engine.url.render_as_string(hide_password=True),
                error=describe(exc),
            )
            sleep(delay)


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[bool]:
    """Yields True when this process holds the lock ``name`` (always on SQLite, whose one
    writer already serialises everything), False when another replica holds it."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = zlib.crc32(f"reminders:{name}".encode())
    with engine.connect() as conn:
        held = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
        conn.commit()
        try:
            yield held
        finally:
            if held:
                _unlock(conn, key)


def _unlock(conn: Connection, key: int) -> None:
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except DBAPIError:
        conn.invalidate()  # the server dropped the session, and its locks with it
