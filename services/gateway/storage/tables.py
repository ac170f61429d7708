"""The gateway's own schema: request-scoped state only (idempotency records)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, Table, Text
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
)
