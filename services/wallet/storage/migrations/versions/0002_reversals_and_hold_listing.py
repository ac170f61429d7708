"""Reversals reference the entry they reverse (once each); holds list by account
and time.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "wallet"


def upgrade() -> None:
    # A new nullable column rewrites no row, so the append-only triggers stay quiet.
    op.add_column(
        "journal_entries",
        sa.Column(
            "reverses_entry_id",
            sa.Uuid,
            sa.ForeignKey(f"{S}.journal_entries.entry_id"),
            nullable=True,
        ),
        schema=S,
    )
    op.create_index(
        "journal_entries_reverses",
        "journal_entries",
        ["reverses_entry_id"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("reverses_entry_id IS NOT NULL"),
    )
    op.create_index("holds_account_created", "holds", ["account_id", "created_at"], schema=S)


def downgrade() -> None:
    op.drop_index("holds_account_created", table_name="holds", schema=S)
    op.drop_index("journal_entries_reverses", table_name="journal_entries", schema=S)
    op.drop_column("journal_entries", "reverses_entry_id", schema=S)
