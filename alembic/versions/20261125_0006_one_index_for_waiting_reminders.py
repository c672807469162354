"""one index for waiting reminders

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 19:45:00

``ix_reminders_upcoming`` (next_attempt_at, id) over pending and claimed rows also serves the
claim, the due gauge and tomorrow's forecast (their ``status = 'pending'`` implies its
predicate, written out beside it: see ``reminders.queries.waiting``). ``ix_reminders_due``
(next_attempt_at) over pending rows only was a second copy of it that every insert and every
status change had to maintain: an import's reminder inserts took about a third longer with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_reminders_due", table_name="reminders")


def downgrade() -> None:
    op.create_index(
        "ix_reminders_due",
        "reminders",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
