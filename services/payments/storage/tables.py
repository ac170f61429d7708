"""The `payments` schema: orders, their audit trail, and the outbox."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

SCHEMA = "payments"

metadata = MetaData(schema=SCHEMA)

STATUSES = (
    "pending",
    "awaiting_review",
    "succeeded",
    "failed",
    "expired",
    "rejected",
    "canceled",
)
_STATUS_LIST = ", ".join(f"'{s}'" for s in STATUSES)

orders = Table(
    "orders",
    metadata,
    Column("order_id", UUID(as_uuid=False), primary_key=True),
    Column("account_id", Text, nullable=False),
    Column("bucket", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("paid_amount_minor", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    Column("received_micros", BigInteger, nullable=False),
    Column("rate_micros_per_minor", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("provider_reference", Text, nullable=False, server_default=""),
    Column("idempotency_key", Text, nullable=True),
    Column("version", Integer, nullable=False, server_default="0"),
    Column("checkout_url", Text, nullable=False, server_default=""),
    # One provider transaction (a Stripe PaymentIntent) pays one order only.
    Column("provider_transaction_id", Text, nullable=True),
    Column("transfer_reference", Text, nullable=False, server_default=""),
    # traceparent/tracestate of the call that created the order: each later event
    # carries it, so the publish span links the payment's trace to the creation's.
    Column("trace_context", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    UniqueConstraint("account_id", "idempotency_key", name="orders_account_idempotency_key"),
    CheckConstraint("bucket IN ('credit', 'routed')", name="orders_bucket"),
    CheckConstraint(f"status IN ({_STATUS_LIST})", name="orders_status"),
    CheckConstraint("paid_amount_minor > 0", name="orders_paid_positive"),
    CheckConstraint("received_micros > 0", name="orders_received_positive"),
    Index("orders_account_newest", "account_id", text("created_at DESC"), text("order_id DESC")),
    Index(
        "orders_pending_expiry",
        "expires_at",
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "orders_provider_transaction",
        "provider",
        "provider_transaction_id",
        unique=True,
        postgresql_where=text("provider_transaction_id IS NOT NULL"),
    ),
    Index("orders_status_newest", "status", text("created_at DESC"), text("order_id DESC")),
)

order_transitions = Table(
    "order_transitions",
    metadata,
    Column("transition_id", BigInteger, primary_key=True, autoincrement=True),
    Column(
        "order_id",
        UUID(as_uuid=False),
        ForeignKey(f"{SCHEMA}.orders.order_id"),
        nullable=False,
    ),
    Column("from_status", Text, nullable=False),
    Column("to_status", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("order_transitions_order", "order_id", "transition_id"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("event_id", UUID(as_uuid=False), primary_key=True),
    Column("order_id", UUID(as_uuid=False), nullable=False),
    Column("subject", Text, nullable=False),
    # A serialized tokenforge.payments.v1.TopUpEvent.
    Column("payload", LargeBinary, nullable=False),
    # traceparent/tracestate of the call that wrote the event.
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Index(
        "outbox_unpublished",
        "created_at",
        postgresql_where=text("published_at IS NULL"),
    ),
    Index("outbox_order", "order_id"),
)

# Each provider event (webhook) id is processed once, whatever the retries.
provider_events = Table(
    "provider_events",
    metadata,
    Column("provider", Text, primary_key=True),
    Column("event_id", Text, primary_key=True),
    Column("event_type", Text, nullable=False),
    Column("order_id", Text, nullable=False, server_default=""),
    # accepted | ignored, and why.
    Column("outcome", Text, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
