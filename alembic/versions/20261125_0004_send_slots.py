"""send slots: one rate per sender across every replica

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 18:35:00

Each process used to space its own sends: N replicas sent N times a sender's rate.
``send_slots`` holds each sender's next free moment, reserved atomically by
:class:`reminders.ratelimit.SharedRateLimiter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_slots",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("next_slot", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("channel"),
    )


def downgrade() -> None:
    op.drop_table("send_slots")
