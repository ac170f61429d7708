"""usage: indexes for the history filters; runs and their draws

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

SCHEMA = "usage"
NEWEST = [sa.text("finished_at DESC"), sa.text("request_id DESC")]


def upgrade() -> None:
    for name, column in (
        ("ix_receipts_account_model_finished", "selected_model"),
        ("ix_receipts_account_key_finished", "key_id"),
        ("ix_receipts_account_project_finished", "project_id"),
    ):
        op.create_index(name, "receipts", ["account_id", column, *NEWEST], schema=SCHEMA)
    op.create_index("ix_receipts_finished", "receipts", NEWEST, schema=SCHEMA)
    op.create_index(
        "ix_receipts_run",
        "receipts",
        ["run_id"],
        schema=SCHEMA,
        postgresql_where=sa.text("run_id <> ''"),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("project_id", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("budget_micros", sa.BigInteger, nullable=False),
        sa.Column("reserved_micros", sa.BigInteger, nullable=False),
        sa.Column("spent_micros", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("hold_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("expiring", sa.Boolean, nullable=False),
        sa.Column("entry_id", sa.Text, nullable=False),
        sa.Column("captured_micros", sa.BigInteger, nullable=False),
        sa.Column("trace_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closing_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "reserved_micros >= 0 AND spent_micros >= 0 "
            "AND reserved_micros + spent_micros <= budget_micros",
            name="ck_runs_within_budget",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_runs_account_created",
        "runs",
        ["account_id", sa.text("created_at DESC")],
        schema=SCHEMA,
    )
    op.create_index(
        "ix_runs_open_expires",
        "runs",
        ["expires_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('open', 'closing')"),
    )
    op.create_table(
        "run_draws",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("reserved_micros", sa.BigInteger, nullable=False),
        sa.Column("charge_micros", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_run_draws_run", "run_draws", ["run_id", "state"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("run_draws", schema=SCHEMA)
    op.drop_table("runs", schema=SCHEMA)
    for name in (
        "ix_receipts_run",
        "ix_receipts_finished",
        "ix_receipts_account_project_finished",
        "ix_receipts_account_key_finished",
        "ix_receipts_account_model_finished",
    ):
        op.drop_index(name, "receipts", schema=SCHEMA)
