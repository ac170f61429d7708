"""The routing schema: accounts, their projects, API keys (digests only), the
catalog's versions, and the counters of key limits (see domain/limits.py)."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

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
    Column("ip_allowlist", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("requests_per_minute", Integer, nullable=False, server_default=text("0")),
    Column("tokens_per_minute", BigInteger, nullable=False, server_default=text("0")),
    Column("max_in_flight", Integer, nullable=False, server_default=text("0")),
    # [{"bucket": "credit", "daily_micros": 0, "total_micros": 0}, ...]
    Column("spend_caps", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("rotated_from", Text, nullable=False, server_default=""),
    Index("ix_api_keys_account", "account_id"),
)

# Every catalog ever applied; the highest version_id is the running catalog.
catalog_versions = Table(
    "catalog_versions",
    metadata,
    Column("version_id", BigInteger, primary_key=True, autoincrement=True),
    Column("content", Text, nullable=False),
    Column("content_sha256", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Fixed one-minute windows: requests and tokens per key.
rate_windows = Table(
    "rate_windows",
    metadata,
    Column("key_id", Text, nullable=False),
    Column("metric", Text, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("used", BigInteger, nullable=False),
    PrimaryKeyConstraint("key_id", "metric", "window_start"),
)

# One row per request in flight; expired rows are leaked slots of a crashed gateway.
in_flight_leases = Table(
    "in_flight_leases",
    metadata,
    Column("lease_id", Text, primary_key=True),
    Column("key_id", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_in_flight_leases_key", "key_id"),
)

# Spend per key and bucket: period is a UTC day (YYYY-MM-DD) or "total".
key_spend = Table(
    "key_spend",
    metadata,
    Column("key_id", Text, nullable=False),
    Column("bucket", Text, nullable=False),
    Column("period", Text, nullable=False),
    Column("micros", BigInteger, nullable=False),
    PrimaryKeyConstraint("key_id", "bucket", "period"),
)

# Outcome reports already counted (a retried report adds no spend twice).
outcome_reports = Table(
    "outcome_reports",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("reported_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
