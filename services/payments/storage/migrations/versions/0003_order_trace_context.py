"""payments: the trace context of each order's creation

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.add_column(
        "orders",
        sa.Column("trace_context", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("orders", "trace_context", schema=SCHEMA)
