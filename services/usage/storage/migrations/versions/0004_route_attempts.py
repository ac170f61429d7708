"""usage: receipts list the routes a request was tried on when it fell back to another
route (each with its hold, released ones included)

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "usage"


def upgrade() -> None:
    op.add_column(
        "receipts",
        sa.Column("route_attempts", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("receipts", "route_attempts", schema=SCHEMA)
