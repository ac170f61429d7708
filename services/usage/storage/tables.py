"""The usage schema: one row per receipt, keyed by the request id."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema="usage")

receipts = Table(
    "receipts",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("account_id", Text, nullable=False),
    Column("project_id", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("selected_model", Text, nullable=False),
    Column("upstream_model", Text, nullable=False),
    Column("route_kind", Text),
    Column("bucket", Text),
    # [{"channel_id", "outcome", "latency_ms"}, ...] in the order they ran.
    Column("attempts", JSONB, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("tokens_reported", Boolean, nullable=False),
    Column("input_price_micros", BigInteger, nullable=False),
    Column("cached_input_price_micros", BigInteger, nullable=False),
    Column("output_price_micros", BigInteger, nullable=False),
    Column("request_fee_micros", BigInteger, nullable=False),
    Column("charge_micros", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("hold_id", Text, nullable=False),
    Column("entry_id", Text, nullable=False),
    Column("trace_id", Text, nullable=False),
    Column("catalog_version", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("fallback_used", Boolean, nullable=False),
    Column("error_code", Text, nullable=False),
    Column("settlement_rule", Text, nullable=False, server_default=""),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("charge_micros >= 0", name="ck_receipts_charge_not_negative"),
)

# Newest first per account, with the request id as the cursor's tie-breaker.
Index(
    "ix_receipts_account_finished",
    receipts.c.account_id,
    receipts.c.finished_at.desc(),
    receipts.c.request_id.desc(),
)
