"""gateway: receipts waiting for the usage service

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

SCHEMA = "gateway"


def upgrade() -> None:
    op.create_table(
        "receipt_queue",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("receipt", sa.LargeBinary, nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        schema=SCHEMA,
    )
    op.create_index("receipt_queue_queued", "receipt_queue", ["queued_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("receipt_queue", schema=SCHEMA)
