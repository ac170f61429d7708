"""gateway: idempotency_records.lease_until, how long a running request's claim holds
its key without being renewed (a claim whose gateway stopped lapses instead of holding
the key for the whole window).

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "gateway"


def upgrade() -> None:
    op.add_column(
        "idempotency_records",
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("idempotency_records", "lease_until", schema=SCHEMA)
