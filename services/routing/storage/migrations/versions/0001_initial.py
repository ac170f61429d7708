"""routing: accounts, projects, API keys

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from tokenforge.runtime.db import ensure_schema_sql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "routing"


def upgrade() -> None:
    op.execute(ensure_schema_sql(SCHEMA))
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False, server_default=""),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    op.create_table(
        "projects",
        sa.Column("project_id", sa.Text, primary_key=True),
        sa.Column(
            "account_id",
            sa.Text,
            sa.ForeignKey(f"{SCHEMA}.accounts.account_id"),
            nullable=False,
        ),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_projects_account", "projects", ["account_id"], schema=SCHEMA)
    op.create_index(
        "uq_projects_default",
        "projects",
        ["account_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("is_default"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column(
            "account_id",
            sa.Text,
            sa.ForeignKey(f"{SCHEMA}.accounts.account_id"),
            nullable=False,
        ),
        sa.Column(
            "project_id",
            sa.Text,
            sa.ForeignKey(f"{SCHEMA}.projects.project_id"),
            nullable=False,
        ),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False, unique=True),
        sa.Column("scopes", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column(
            "allowed_models",
            postgresql.ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{*}'"),
        ),
        sa.Column(
            "allowed_route_kinds",
            postgresql.ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{official,routed}'"),
        ),
        sa.Column(
            "route_preference",
            postgresql.ARRAY(sa.Text),
            nullable=False,
            server_default=sa.text("'{official,routed}'"),
        ),
        sa.Column("fallback_allowed", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_index("ix_api_keys_account", "api_keys", ["account_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("api_keys", schema=SCHEMA)
    op.drop_table("projects", schema=SCHEMA)
    op.drop_table("accounts", schema=SCHEMA)
