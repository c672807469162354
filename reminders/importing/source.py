"""Reading the clinic's database: ``sync.toml``, a read-only engine, rows and the cursor.

The cursor is the newest ``updated_at`` value seen, stored as text with its type
(``datetime:...``, ``int:...``, ``str:...``) so it binds back as what the source compares with.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from reminders.importing.batch import RawRow
from reminders.records import YES, as_text
from reminders.settings import ConfigError

SYNC_FILE = "sync.toml"
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str = Field(min_length=1)
    updated_at: str | None = Field(None, pattern=IDENTIFIER)
    deleted: str | None = Field(None, pattern=IDENTIFIER)


class SyncConfig(BaseModel):
    """``sync.toml``: what to read from the source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("clinic", pattern=r"^[a-z0-9_-]{1,40}$")  # the sync_state key
    delete_missing: bool = True
    patients: Query | None = None
    treatments: Query | None = None


def load_sync_config(config_dir: Path) -> SyncConfig:
    path = config_dir / SYNC_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return SyncConfig.model_validate(data)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (REMINDERS_SYNC_DATABASE_URL is set)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None


def source_engine(url: str) -> Engine:
    """A read-only engine on the source: SQLite opened ``mode=ro``, PostgreSQL sessions with
    ``default_transaction_read_only``. Other databases: give the sync a read-only user."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        uri = f"file:{parsed.database}?mode=ro"
        return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True))
    if parsed.get_backend_name() == "postgresql":
        options = {"options": "-c default_transaction_read_only=on"}
        return create_engine(parsed, connect_args=options, pool_pre_ping=True)
    return create_engine(parsed, pool_pre_ping=True)


@dataclass
class SourceRows:
    rows: list[RawRow]  # live rows
    deleted: list[RawRow]  # rows whose ``deleted`` column is true
    cursor: str | None  # the newest ``updated_at`` seen (or the one given)


def read_source(source: Connection, query: Query, cursor: str | None, kind: str) -> SourceRows:
    """The rows of ``query`` at or after ``cursor`` (all of them without one)."""
    sql, params = _statement(query, cursor)
    read = SourceRows([], [], cursor)
    for number, raw in enumerate(source.execute(text(sql), params).mappings(), start=1):
        values = {str(k).lower(): _plain(v) for k, v in raw.items()}
        if query.updated_at:
            read.cursor = _later(read.cursor, values.pop(query.updated_at.lower(), None))
        flagged = _flagged(values, query.deleted)
        if query.deleted:
            values.pop(query.deleted.lower(), None)
        label = values.get("external_id")
        row = RawRow(number, f"{kind} row {number} ({label})", values)
        (read.deleted if flagged else read.rows).append(row)
    return read


def _statement(query: Query, cursor: str | None) -> tuple[str, dict[str, Any]]:
    sql = query.query.strip().rstrip(";")
    if query.updated_at is None:
        return sql, {}
    column = f"src.{query.updated_at}"
    if cursor is None:
        return f"SELECT * FROM ({sql}) AS src ORDER BY {column}", {}  # noqa: S608
    where = f"SELECT * FROM ({sql}) AS src WHERE {column} >= :cursor ORDER BY {column}"  # noqa: S608
    return where, {"cursor": _load_cursor(cursor)}


def _plain(value: object) -> object:
    """A source value as the validation layer reads it (a DATE column as ``YYYY-MM-DD``)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | Decimal | bool):
        return value
    return str(value)


def _dump_cursor(value: object) -> str:
    if isinstance(value, dt.datetime):
        return f"datetime:{value.isoformat()}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"int:{value}"
    return f"str:{value}"


def _load_cursor(cursor: str) -> object:
    kind, _, value = cursor.partition(":")
    if kind == "datetime":
        return dt.datetime.fromisoformat(value)
    return int(value) if kind == "int" else value


def _later(cursor: str | None, value: object) -> str | None:
    if value is None:
        return cursor
    if cursor is None or _as_comparable(value) > _as_comparable(_load_cursor(cursor)):
        return _dump_cursor(value)
    return cursor


def _as_comparable(value: object) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _flagged(values: Mapping[str, object], column: str | None) -> bool:
    if column is None:
        return False
    try:
        return as_text(values.get(column.lower())).lower() in YES
    except TypeError:
        return False
