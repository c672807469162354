"""treatment source: a full sync deletes only what it wrote

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:15:00

A full sync deleted every stored treatment its source no longer returned, including ones
imported from a CSV file or put through the API. ``treatments.source`` records who wrote a
treatment last (``import``, ``api``, ``sync:<name>``); rows from before this revision have
none and are treated as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("treatments") as batch:
        batch.add_column(sa.Column("source", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("treatments") as batch:
        batch.drop_column("source")
