"""usage: receipts name every token class (cache writes and reasoning beside prompt,
cached and completion tokens), the cache-write price, and the protocol of the channel
that answered

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

SCHEMA = "usage"
COLUMNS = (
    ("cache_write_tokens", sa.BigInteger, "0"),
    ("reasoning_tokens", sa.BigInteger, "0"),
    ("cache_write_price_micros", sa.BigInteger, "0"),
    ("channel_protocol", sa.Text, ""),
)


def upgrade() -> None:
    for name, kind, default in COLUMNS:
        op.add_column(
            "receipts",
            sa.Column(name, kind, nullable=False, server_default=default),
            schema=SCHEMA,
        )


def downgrade() -> None:
    for name, _, _ in reversed(COLUMNS):
        op.drop_column("receipts", name, schema=SCHEMA)
