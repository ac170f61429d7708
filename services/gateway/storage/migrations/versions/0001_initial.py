"""gateway: idempotency records

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tokenforge.runtime.db import ensure_schema_sql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "gateway"


def upgrade() -> None:
    op.execute(ensure_schema_sql(SCHEMA))
    op.create_table(
        "idempotency_records",
        sa.Column("key_digest", sa.Text, primary_key=True),
        sa.Column("idempotency_key", sa.Text, primary_key=True),
        sa.Column("body_digest", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("body", sa.LargeBinary),
        sa.Column("headers", postgresql.JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('running', 'done')", name="idempotency_state"),
        schema=SCHEMA,
    )
    op.create_index(
        "idempotency_records_created", "idempotency_records", ["created_at"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_table("idempotency_records", schema=SCHEMA)
