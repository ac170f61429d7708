"""payments: orders, order_transitions, outbox

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tokenforge.runtime.db import ensure_schema_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "payments"
STATUSES = "'pending', 'awaiting_review', 'succeeded', 'failed', 'expired', 'rejected', 'canceled'"


def upgrade() -> None:
    op.execute(ensure_schema_sql(SCHEMA))
    op.create_table(
        "orders",
        sa.Column("order_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("paid_amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("received_micros", sa.BigInteger, nullable=False),
        sa.Column("rate_micros_per_minor", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider_reference", sa.Text, nullable=False, server_default=""),
        sa.Column("idempotency_key", sa.Text, nullable=True),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("account_id", "idempotency_key", name="orders_account_idempotency_key"),
        sa.CheckConstraint("bucket IN ('credit', 'routed')", name="orders_bucket"),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="orders_status"),
        sa.CheckConstraint("paid_amount_minor > 0", name="orders_paid_positive"),
        sa.CheckConstraint("received_micros > 0", name="orders_received_positive"),
        schema=SCHEMA,
    )
    op.create_index(
        "orders_account_newest",
        "orders",
        ["account_id", sa.text("created_at DESC"), sa.text("order_id DESC")],
        schema=SCHEMA,
    )
    op.create_index(
        "orders_pending_expiry",
        "orders",
        ["expires_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "order_transitions",
        sa.Column("transition_id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column(
            "order_id",
            postgresql.UUID(as_uuid=False),
            sa.ForeignKey(f"{SCHEMA}.orders.order_id"),
            nullable=False,
        ),
        sa.Column("from_status", sa.Text, nullable=False),
        sa.Column("to_status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "order_transitions_order",
        "order_transitions",
        ["order_id", "transition_id"],
        schema=SCHEMA,
    )
    op.create_table(
        "outbox",
        sa.Column("event_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("order_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column(
            "headers",
            postgresql.JSONB,
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        schema=SCHEMA,
    )
    op.create_index(
        "outbox_unpublished",
        "outbox",
        ["created_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index("outbox_order", "outbox", ["order_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("outbox", schema=SCHEMA)
    op.drop_table("order_transitions", schema=SCHEMA)
    op.drop_table("orders", schema=SCHEMA)
