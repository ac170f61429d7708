"""routing: catalog versions, key limits and their counters

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "routing"


def upgrade() -> None:
    for column in (
        sa.Column("ip_allowlist", postgresql.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("requests_per_minute", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tokens_per_minute", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("max_in_flight", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "spend_caps",
            postgresql.JSONB,
            nullable=False,
            server_default=sa.text("'[]'::jsonb"),
        ),
        sa.Column("rotated_from", sa.Text, nullable=False, server_default=""),
    ):
        op.add_column("api_keys", column, schema=SCHEMA)
    op.create_table(
        "catalog_versions",
        sa.Column("version_id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("content_sha256", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    op.create_table(
        "rate_windows",
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("key_id", "metric", "window_start"),
        schema=SCHEMA,
    )
    op.create_table(
        "in_flight_leases",
        sa.Column("lease_id", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_in_flight_leases_key", "in_flight_leases", ["key_id"], schema=SCHEMA)
    op.create_table(
        "key_spend",
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("period", sa.Text, nullable=False),
        sa.Column("micros", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("key_id", "bucket", "period"),
        schema=SCHEMA,
    )
    op.create_table(
        "outcome_reports",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column(
            "reported_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in (
        "outcome_reports",
        "key_spend",
        "in_flight_leases",
        "rate_windows",
        "catalog_versions",
    ):
        op.drop_table(table, schema=SCHEMA)
    for column in (
        "rotated_from",
        "spend_caps",
        "max_in_flight",
        "tokens_per_minute",
        "requests_per_minute",
        "ip_allowlist",
    ):
        op.drop_column("api_keys", column, schema=SCHEMA)
