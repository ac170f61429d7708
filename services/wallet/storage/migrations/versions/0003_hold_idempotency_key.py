"""Holds are unique per (account, idempotency key), no longer per request id: a request
that falls back to another route places a second hold (another bucket) under a key of
its own, keeping its request id. Existing holds keep their request id as their key.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "wallet"


def upgrade() -> None:
    op.add_column("holds", sa.Column("idempotency_key", sa.Text, nullable=True), schema=S)
    op.execute(f"UPDATE {S}.holds SET idempotency_key = request_id")
    op.alter_column("holds", "idempotency_key", nullable=False, schema=S)
    op.create_unique_constraint(
        "holds_account_key", "holds", ["account_id", "idempotency_key"], schema=S
    )
    op.drop_constraint("holds_account_request", "holds", schema=S, type_="unique")


def downgrade() -> None:
    op.create_unique_constraint(
        "holds_account_request", "holds", ["account_id", "request_id"], schema=S
    )
    op.drop_constraint("holds_account_key", "holds", schema=S, type_="unique")
    op.drop_column("holds", "idempotency_key", schema=S)
