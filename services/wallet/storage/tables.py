"""The wallet schema: accounts, balances, the journal (entries + postings), holds,
and the NATS events already processed. Migrations: storage/migrations/versions."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)

SCHEMA = "wallet"

metadata = MetaData(schema=SCHEMA)

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# One row per account x bucket; `SELECT ... FOR UPDATE` on it serializes every change
# of the bucket (W2). The check constraints are the last line of defence.
balances = Table(
    "balances",
    metadata,
    Column("account_id", Text, ForeignKey("accounts.account_id"), primary_key=True),
    Column("bucket", String(16), primary_key=True),
    Column("posted", BigInteger, nullable=False, server_default="0"),
    Column("held", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("bucket IN ('credit', 'routed')", name="balances_bucket"),
    CheckConstraint("held >= 0", name="balances_held_not_negative"),
    CheckConstraint("posted - held >= 0", name="balances_available_not_negative"),
)

journal_entries = Table(
    "journal_entries",
    metadata,
    # Insertion order: the ledger's newest-first order and its page cursor.
    Column("seq", BigInteger, Identity(), unique=True, nullable=False),
    Column("entry_id", Uuid, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("bucket", String(16), nullable=False),
    Column("request_id", Text, nullable=False, server_default=""),
    Column("order_id", Text, nullable=False, server_default=""),
    Column("hold_id", Uuid, nullable=True),
    Column("reason", Text, nullable=False, server_default=""),
    Column("operator", Text, nullable=False, server_default=""),
    Column("trace_id", Text, nullable=False, server_default=""),
    # On a reversal: the entry it reverses (at most one reversal per entry).
    Column("reverses_entry_id", Uuid, ForeignKey("journal_entries.entry_id"), nullable=True),
    Column("idempotency_key", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(
        "kind IN ('topup_credit', 'request_charge', 'adjustment', 'reversal')",
        name="journal_entries_kind",
    ),
    Index("journal_entries_account_seq", "account_id", "seq"),
    Index("journal_entries_request", "request_id"),
    Index("journal_entries_order", "order_id"),
    Index(
        "journal_entries_reverses",
        "reverses_entry_id",
        unique=True,
        postgresql_where=text("reverses_entry_id IS NOT NULL"),
    ),
)

postings = Table(
    "postings",
    metadata,
    Column("posting_id", BigInteger, Identity(), primary_key=True),
    Column("entry_id", Uuid, ForeignKey("journal_entries.entry_id"), nullable=False),
    Column("ledger_account", Text, nullable=False),
    Column("bucket", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=True),
    Index("postings_entry", "entry_id"),
    Index("postings_ledger_account", "ledger_account"),
)

holds = Table(
    "holds",
    metadata,
    Column("hold_id", Uuid, primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("bucket", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("captured", BigInteger, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False),
    Column("request_id", Text, nullable=False),
    Column("trace_id", Text, nullable=False, server_default=""),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("entry_id", Uuid, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    # One hold per (account, key): the request id, or the key of a request's second
    # hold (a fallback route); several holds may carry one request id.
    Column("idempotency_key", Text, nullable=False),
    UniqueConstraint("account_id", "idempotency_key", name="holds_account_key"),
    CheckConstraint("amount > 0", name="holds_amount_positive"),
    CheckConstraint("captured >= 0 AND captured <= amount", name="holds_captured_within"),
    CheckConstraint("status IN ('open', 'settled', 'released', 'expired')", name="holds_status"),
    Index("holds_open_expiry", "expires_at", postgresql_where=text("status = 'open'")),
    Index("holds_account_created", "account_id", "created_at"),
)

processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("entry_id", Uuid, nullable=True),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
