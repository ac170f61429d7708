"""The gateway's own schema: request-scoped state only (idempotency records, receipts
and finishes waiting for the usage service and the wallet)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema="gateway")

idempotency_records = Table(
    "idempotency_records",
    metadata,
    # SHA-256 of the API key: a key's idempotency keys never meet another key's.
    Column("key_digest", Text, primary_key=True),
    Column("idempotency_key", Text, primary_key=True),
    Column("body_digest", Text, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("state", Text, nullable=False),  # running | done
    Column("status_code", Integer),
    Column("body", LargeBinary),
    Column("headers", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # While `running`: the claim holds the key until then, renewed by its gateway.
    Column("lease_until", DateTime(timezone=True)),
)

# Requests' finishes waiting for the relay, kept durably: what is left to do with each
# request's hold (a part of a budget to capture, a settle, a release: the wallet
# commands) and its receipt to record; and receipts alone, of requests finished at once
# while the usage service could not take them.
finish_queue = Table(
    "finish_queue",
    metadata,
    Column("request_id", Text, primary_key=True),
    # The usage.v1.Receipt, serialized.
    Column("receipt", LargeBinary, nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("account_id", Text),
    # The hold the receipt names, and what is still to be done with it before the
    # receipt is recorded: `part` (its charge taken from a budget, CapturePart),
    # `settle` (the request's own hold settled for the charge) or `release`; none: the
    # receipt only.
    Column("hold_id", Text),
    Column("finish", Text),
    # The gateway replica that queued it (its relay delivers it first).
    Column("owner", Text),
    # The request's span (W3C traceparent): its delivery joins the request's trace.
    Column("traceparent", Text),
)

# One row per operator action taken through the console: who (the name the operator
# signed in with, holding the operator credential), what, on what, why, how it ended.
operator_audit = Table(
    "operator_audit",
    metadata,
    Column("audit_id", BigInteger, Identity(), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("operator", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default="{}"),
    Column("request_id", Text, nullable=False, server_default=""),
    Index("operator_audit_at", "at"),
)
