"""The routing schema: accounts, their projects, and API keys (digests only)."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    Table,
    Text,
    func,
    text,
)

metadata = MetaData(schema="routing")

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("display_name", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

projects = Table(
    "projects",
    metadata,
    Column("project_id", Text, primary_key=True),
    Column("account_id", Text, ForeignKey("routing.accounts.account_id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("is_default", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_projects_account", "account_id"),
    # One default project per account, so opening an account twice makes one.
    Index(
        "uq_projects_default",
        "account_id",
        unique=True,
        postgresql_where=text("is_default"),
    ),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("account_id", Text, ForeignKey("routing.accounts.account_id"), nullable=False),
    Column("project_id", Text, ForeignKey("routing.projects.project_id"), nullable=False),
    Column("name", Text, nullable=False, server_default=""),
    Column("prefix", Text, nullable=False),
    # SHA-256 hex of the key; the key itself is never stored.
    Column("digest", Text, nullable=False, unique=True),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("allowed_models", ARRAY(Text), nullable=False, server_default=text("'{*}'")),
    Column(
        "allowed_route_kinds",
        ARRAY(Text),
        nullable=False,
        server_default=text("'{official,routed}'"),
    ),
    Column(
        "route_preference",
        ARRAY(Text),
        nullable=False,
        server_default=text("'{official,routed}'"),
    ),
    Column("fallback_allowed", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    Index("ix_api_keys_account", "account_id"),
)
