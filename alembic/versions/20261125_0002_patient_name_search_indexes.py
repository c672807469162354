"""patient name search indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 16:07:31

The console's name search is a prefix range on lower(given_name) / lower(family_name);
these expression indexes serve it (a full scan took about 2 s at 1,000,000 patients).
Alembic's autogenerate cannot compare expression indexes, so this revision is written by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_patients_given_name_lower", "patients", [sa.text("lower(given_name)")])
    op.create_index("ix_patients_family_name_lower", "patients", [sa.text("lower(family_name)")])


def downgrade() -> None:
    op.drop_index("ix_patients_family_name_lower", table_name="patients")
    op.drop_index("ix_patients_given_name_lower", table_name="patients")
