"""Server-side row generation for PostgreSQL and SQLite: ``INSERT ... SELECT`` over a series of
numbers, joined with small lookup tables written from Python.

Everything that needs real logic (the planner's due and expiry instants, dates, time zones) is
computed in Python into a lookup table; the SQL only does integer arithmetic on the row number,
so both backends run the same statements and the database writes millions of rows itself.
Datetimes go through the project's ``UTCDateTime`` type, so they are stored exactly as the
application stores them (naive UTC text on SQLite, ``timestamptz`` on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    text,
)
from sqlalchemy.types import TypeEngine

from reminders.db import UTCDateTime

LOOKUPS = MetaData()
NAMES = Table(
    "perf_names",
    LOOKUPS,
    Column("kind", String(8), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("name", String(200)),
)
ZONES = Table(
    "perf_zones", LOOKUPS, Column("idx", Integer, primary_key=True), Column("zone", String(64))
)
PROTOCOLS = Table(
    "perf_protocols", LOOKUPS, Column("idx", Integer, primary_key=True), Column("code", String(64))
)
DAYS = Table("perf_days", LOOKUPS, Column("idx", Integer, primary_key=True), Column("day", Date))
INSTANTS = Table(
    "perf_instants", LOOKUPS, Column("idx", Integer, primary_key=True), Column("at", UTCDateTime())
)
SCHEDULE = Table(
    "perf_schedule",
    LOOKUPS,
    Column("protocol", String(64), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("zone", String(64), primary_key=True),
    Column("lead", Integer, primary_key=True),
    Column("step", String(64), primary_key=True),
    Column("due_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),
)
TYPES: dict[str, TypeEngine[Any]] = {
    "now": UTCDateTime(),
    "later": UTCDateTime(),
    "yes": Boolean(),
    "no": Boolean(),
    "cutoff": Date(),
}


def numbers(conn: Connection, count: int) -> tuple[str, str]:
    """``(prefix, source)``: put ``prefix`` before SELECT and select ``FROM source`` to get the
    rows ``g.i`` = 1 .. count."""
    if conn.dialect.name == "postgresql":
        return "", f"generate_series(1, {int(count)}) AS g(i)"
    recursive = f"g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {int(count)})"
    return f"WITH RECURSIVE {recursive} ", "g"


def pad(conn: Connection, expr: str, width: int) -> str:
    """``expr`` (an integer) as text, zero-padded to ``width`` digits."""
    if conn.dialect.name == "postgresql":
        return f"lpad(CAST({expr} AS text), {width}, '0')"
    return f"printf('%0{width}d', {expr})"


def run(conn: Connection, sql: str, **params: Any) -> int:
    """Execute generated SQL; datetimes and booleans named in TYPES are bound with the
    project's types. Returns the row count."""
    stmt = text(sql).bindparams(
        *(bindparam(name, type_=TYPES[name]) for name in params if name in TYPES)
    )
    result = conn.execute(stmt, params)
    return int(getattr(result, "rowcount", 0) or 0)


def fill(conn: Connection, table: Table, rows: Iterable[Mapping[str, Any]]) -> None:
    """(Re)create a lookup table and write ``rows`` into it."""
    table.drop(conn, checkfirst=True)
    table.create(conn)
    batch = list(rows)
    for start in range(0, len(batch), 5000):
        conn.execute(insert(table), batch[start : start + 5000])
    conn.exec_driver_sql(f"ANALYZE {table.name}")  # or the planner guesses a nested loop


def drop_lookups(conn: Connection) -> None:
    LOOKUPS.drop_all(conn, checkfirst=True)


def scalar(conn: Connection, sql: str, **params: Any) -> Any:
    stmt = text(sql).bindparams(
        *(bindparam(name, type_=TYPES[name]) for name in params if name in TYPES)
    )
    return conn.execute(stmt, params).scalar()
