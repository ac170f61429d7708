"""usage: receipts name the settlement rule that decided their charge

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "usage"


def upgrade() -> None:
    op.add_column(
        "receipts",
        sa.Column("settlement_rule", sa.Text, nullable=False, server_default=""),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("receipts", "settlement_rule", schema=SCHEMA)
