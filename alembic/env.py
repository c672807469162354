"""Alembic environment: the URL comes from the caller (``reminders migrate``) or the env."""

from __future__ import annotations

import os
import warnings
from typing import Any

from sqlalchemy import Connection, Index
from sqlalchemy import exc as sa_exc

from alembic import context
from reminders.db import make_engine
from reminders.models import Base

config = context.config
target_metadata = Base.metadata


# SQLite cannot reflect expression indexes (lower(name)), so autogenerate cannot compare
# them there; PostgreSQL can. Revision 0002 creates them on both.
warnings.filterwarnings(
    "ignore", "Skipped unsupported reflection of expression-based index", sa_exc.SAWarning
)
warnings.filterwarnings(
    "ignore", "autogenerate skipping metadata-specified expression-based index", UserWarning
)


def _comparable(obj: Any, _name: str | None, type_: str, _reflected: bool, _other: Any) -> bool:
    if type_ == "index" and context.get_context().dialect.name == "sqlite":
        return not (isinstance(obj, Index) and any(not hasattr(c, "name") for c in obj.expressions))
    return True


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_comparable,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("REMINDERS_DATABASE_URL", "sqlite:///reminders.db")
    engine = make_engine(url)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run `reminders migrate`")
run_migrations_online()
