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
    text,
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
    # [{"route_kind", "bucket", "upstream_model", "prices", "hold_id", "outcome",
    #   "channel_attempts"}, ...] when the request fell back to another route.
    Column("route_attempts", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("client_format", Text, nullable=False, server_default=""),
    # Parts of prompt_tokens (cache writes) and completion_tokens (reasoning), the
    # cache-write price, and the protocol of the channel that answered.
    Column("cache_write_tokens", BigInteger, nullable=False, server_default="0"),
    Column("reasoning_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cache_write_price_micros", BigInteger, nullable=False, server_default="0"),
    Column("channel_protocol", Text, nullable=False, server_default=""),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("charge_micros >= 0", name="ck_receipts_charge_not_negative"),
)

# Newest first per account, with the request id as the cursor's tie-breaker. It also
# serves the time window, the bucket and status filters (few values: filtered while
# walking the index) and the aggregates over one account's window.
Index(
    "ix_receipts_account_finished",
    receipts.c.account_id,
    receipts.c.finished_at.desc(),
    receipts.c.request_id.desc(),
)
# The selective filters get their own (account, value, time) index so a page of one
# model's / key's / project's receipts is an index range, not a scan (0003).
Index(
    "ix_receipts_account_model_finished",
    receipts.c.account_id,
    receipts.c.selected_model,
    receipts.c.finished_at.desc(),
    receipts.c.request_id.desc(),
)
Index(
    "ix_receipts_account_key_finished",
    receipts.c.account_id,
    receipts.c.key_id,
    receipts.c.finished_at.desc(),
    receipts.c.request_id.desc(),
)
Index(
    "ix_receipts_account_project_finished",
    receipts.c.account_id,
    receipts.c.project_id,
    receipts.c.finished_at.desc(),
    receipts.c.request_id.desc(),
)
# Operators' listing across accounts (the reconciliation) walks time only.
Index("ix_receipts_finished", receipts.c.finished_at.desc(), receipts.c.request_id.desc())
# A run's lines.
Index("ix_receipts_run", receipts.c.run_id, postgresql_where=receipts.c.run_id != "")

runs = Table(
    "runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("account_id", Text, nullable=False),
    Column("project_id", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("bucket", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("budget_micros", BigInteger, nullable=False),
    Column("reserved_micros", BigInteger, nullable=False),
    Column("spent_micros", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("hold_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("expiring", Boolean, nullable=False),
    Column("entry_id", Text, nullable=False),
    Column("captured_micros", BigInteger, nullable=False),
    Column("trace_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("closing_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    CheckConstraint(
        "reserved_micros >= 0 AND spent_micros >= 0 "
        "AND reserved_micros + spent_micros <= budget_micros",
        name="ck_runs_within_budget",
    ),
)
Index("ix_runs_account_created", runs.c.account_id, runs.c.created_at.desc())
# The sweeper's look-up: runs not ended, by expiry.
Index(
    "ix_runs_open_expires",
    runs.c.expires_at,
    postgresql_where=runs.c.status.in_(["open", "closing"]),
)

run_draws = Table(
    "run_draws",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("reserved_micros", BigInteger, nullable=False),
    Column("charge_micros", BigInteger, nullable=False),
    # reserved -> committed | abandoned
    Column("state", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("ix_run_draws_run", run_draws.c.run_id, run_draws.c.state)
