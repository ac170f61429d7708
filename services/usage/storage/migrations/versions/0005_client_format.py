"""usage: receipts name the API format the client spoke (legacy completions, Responses,
Anthropic Messages; empty for OpenAI chat and embeddings)

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "usage"


def upgrade() -> None:
    op.add_column(
        "receipts",
        sa.Column("client_format", sa.Text, nullable=False, server_default=""),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("receipts", "client_format", schema=SCHEMA)
