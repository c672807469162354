"""Alembic environment: the URL comes from the caller (``reminders migrate``) or the env."""

from __future__ import annotations

import os

from sqlalchemy import Connection

from alembic import context
from reminders.db import make_engine
from reminders.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
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
