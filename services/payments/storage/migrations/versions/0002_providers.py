"""payments: provider references on orders, processed provider events

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "payments"


def upgrade() -> None:
    op.add_column(
        "orders",
        sa.Column("checkout_url", sa.Text, nullable=False, server_default=""),
        schema=SCHEMA,
    )
    op.add_column(
        "orders", sa.Column("provider_transaction_id", sa.Text, nullable=True), schema=SCHEMA
    )
    op.add_column(
        "orders",
        sa.Column("transfer_reference", sa.Text, nullable=False, server_default=""),
        schema=SCHEMA,
    )
    op.create_index(
        "orders_provider_transaction",
        "orders",
        ["provider", "provider_transaction_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("provider_transaction_id IS NOT NULL"),
    )
    op.create_index(
        "orders_status_newest",
        "orders",
        ["status", sa.text("created_at DESC"), sa.text("order_id DESC")],
        schema=SCHEMA,
    )
    op.create_table(
        "provider_events",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("order_id", sa.Text, nullable=False, server_default=""),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("provider_events", schema=SCHEMA)
    op.drop_index("orders_status_newest", "orders", schema=SCHEMA)
    op.drop_index("orders_provider_transaction", "orders", schema=SCHEMA)
    op.drop_column("orders", "transfer_reference", schema=SCHEMA)
    op.drop_column("orders", "provider_transaction_id", schema=SCHEMA)
    op.drop_column("orders", "checkout_url", schema=SCHEMA)
