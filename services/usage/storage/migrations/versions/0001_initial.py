"""usage: receipts

Revision ID: 0001
Revises:
Create Date: 2025-01-01
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

SCHEMA = "usage"


def upgrade() -> None:
    op.execute(ensure_schema_sql(SCHEMA))
    op.create_table(
        "receipts",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("project_id", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("selected_model", sa.Text, nullable=False),
        sa.Column("upstream_model", sa.Text, nullable=False),
        sa.Column("route_kind", sa.Text),
        sa.Column("bucket", sa.Text),
        sa.Column("attempts", postgresql.JSONB, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("tokens_reported", sa.Boolean, nullable=False),
        sa.Column("input_price_micros", sa.BigInteger, nullable=False),
        sa.Column("cached_input_price_micros", sa.BigInteger, nullable=False),
        sa.Column("output_price_micros", sa.BigInteger, nullable=False),
        sa.Column("request_fee_micros", sa.BigInteger, nullable=False),
        sa.Column("charge_micros", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("hold_id", sa.Text, nullable=False),
        sa.Column("entry_id", sa.Text, nullable=False),
        sa.Column("trace_id", sa.Text, nullable=False),
        sa.Column("catalog_version", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("fallback_used", sa.Boolean, nullable=False),
        sa.Column("error_code", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.CheckConstraint("charge_micros >= 0", name="ck_receipts_charge_not_negative"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_receipts_account_finished",
        "receipts",
        ["account_id", sa.text("finished_at DESC"), sa.text("request_id DESC")],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("receipts", schema=SCHEMA)
