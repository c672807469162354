"""reminder view indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 18:30:00

Measured by the benchmarks of issue 9 (``python -m tests.perf --only 7``):
- The outbox lists a state's reminders newest due first and the upcoming ones in send order, a
  page at a time by keyset. ``(status, due_at, id)`` serves the first (and lease recovery, which
  looks up the few ``claimed`` rows by status, as the old ``(status, lease_until)`` index did);
  a partial ``(next_attempt_at, id)`` over pending and claimed rows serves the second.
- SQLite uses a partial index only when the query's WHERE implies the index's: SQLAlchemy
  renders ``Treatment.needs_plan`` as ``needs_plan = 1``, which does not match a bare
  ``WHERE needs_plan``, so an idle planning pass scanned every treatment (370 ms at 1,000,000).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPCOMING = "status IN ('pending', 'claimed')"


def upgrade() -> None:
    op.drop_index("ix_reminders_status_lease", table_name="reminders")
    op.create_index("ix_reminders_status_due", "reminders", ["status", "due_at", "id"])
    op.create_index(
        "ix_reminders_upcoming",
        "reminders",
        ["next_attempt_at", "id"],
        postgresql_where=sa.text(UPCOMING),
        sqlite_where=sa.text(UPCOMING),
    )
    if op.get_bind().dialect.name == "sqlite":
        _needs_plan_index("needs_plan = 1")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _needs_plan_index("needs_plan")
    op.drop_index("ix_reminders_upcoming", table_name="reminders")
    op.drop_index("ix_reminders_status_due", table_name="reminders")
    op.create_index("ix_reminders_status_lease", "reminders", ["status", "lease_until"])


def _needs_plan_index(where: str) -> None:
    op.drop_index("ix_treatments_needs_plan", table_name="treatments")
    op.create_index(
        "ix_treatments_needs_plan",
        "treatments",
        ["patient_id", "protocol"],
        sqlite_where=sa.text(where),
    )
