"""gateway: the receipt queue also carries finishes (a part to capture, a settle, a release)

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "gateway"


def upgrade() -> None:
    op.add_column("receipt_queue", sa.Column("account_id", sa.Text), schema=SCHEMA)
    op.add_column("receipt_queue", sa.Column("hold_id", sa.Text), schema=SCHEMA)
    op.add_column(
        "receipt_queue",
        sa.Column("finish", sa.Text),
        schema=SCHEMA,
    )
    op.add_column("receipt_queue", sa.Column("owner", sa.Text), schema=SCHEMA)
    op.add_column("receipt_queue", sa.Column("traceparent", sa.Text), schema=SCHEMA)
    op.create_index("receipt_queue_account", "receipt_queue", ["account_id"], schema=SCHEMA)
    op.create_index("receipt_queue_hold", "receipt_queue", ["hold_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("receipt_queue_hold", "receipt_queue", schema=SCHEMA)
    op.drop_index("receipt_queue_account", "receipt_queue", schema=SCHEMA)
    for column in ("traceparent", "owner", "finish", "hold_id", "account_id"):
        op.drop_column("receipt_queue", column, schema=SCHEMA)
