"""The wallet schema: accounts, balances, journal (entries + postings), holds,
processed NATS events; triggers for W1 (postings sum to zero) and W5 (append-only).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "wallet"


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=S,
    )
    op.create_table(
        "balances",
        sa.Column(
            "account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.account_id"), primary_key=True
        ),
        sa.Column("bucket", sa.String(16), primary_key=True),
        sa.Column("posted", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint("bucket IN ('credit', 'routed')", name="balances_bucket"),
        sa.CheckConstraint("held >= 0", name="balances_held_not_negative"),
        sa.CheckConstraint("posted - held >= 0", name="balances_available_not_negative"),
        schema=S,
    )
    op.create_table(
        "journal_entries",
        sa.Column("seq", sa.BigInteger, sa.Identity(), unique=True, nullable=False),
        sa.Column("entry_id", sa.Uuid, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.account_id"), nullable=False),
        sa.Column("bucket", sa.String(16), nullable=False),
        sa.Column("request_id", sa.Text, nullable=False, server_default=""),
        sa.Column("order_id", sa.Text, nullable=False, server_default=""),
        sa.Column("hold_id", sa.Uuid, nullable=True),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("operator", sa.Text, nullable=False, server_default=""),
        sa.Column("trace_id", sa.Text, nullable=False, server_default=""),
        sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('topup_credit', 'request_charge', 'adjustment', 'reversal')",
            name="journal_entries_kind",
        ),
        schema=S,
    )
    op.create_index(
        "journal_entries_account_seq", "journal_entries", ["account_id", "seq"], schema=S
    )
    op.create_index("journal_entries_request", "journal_entries", ["request_id"], schema=S)
    op.create_index("journal_entries_order", "journal_entries", ["order_id"], schema=S)
    op.create_table(
        "postings",
        sa.Column("posting_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "entry_id", sa.Uuid, sa.ForeignKey(f"{S}.journal_entries.entry_id"), nullable=False
        ),
        sa.Column("ledger_account", sa.Text, nullable=False),
        sa.Column("bucket", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("balance_after", sa.BigInteger, nullable=True),
        schema=S,
    )
    op.create_index("postings_entry", "postings", ["entry_id"], schema=S)
    op.create_index("postings_ledger_account", "postings", ["ledger_account"], schema=S)
    op.create_table(
        "holds",
        sa.Column("hold_id", sa.Uuid, primary_key=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.account_id"), nullable=False),
        sa.Column("bucket", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("captured", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("trace_id", sa.Text, nullable=False, server_default=""),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry_id", sa.Uuid, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("account_id", "request_id", name="holds_account_request"),
        sa.CheckConstraint("amount > 0", name="holds_amount_positive"),
        sa.CheckConstraint("captured >= 0 AND captured <= amount", name="holds_captured_within"),
        sa.CheckConstraint(
            "status IN ('open', 'settled', 'released', 'expired')", name="holds_status"
        ),
        schema=S,
    )
    op.create_index(
        "holds_open_expiry",
        "holds",
        ["expires_at"],
        schema=S,
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("entry_id", sa.Uuid, nullable=True),
        sa.Column(
            "processed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        schema=S,
    )

    # W5: the ledger is append-only; corrections are new entries.
    op.execute(
        f"""
        CREATE FUNCTION {S}.refuse_ledger_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the wallet ledger is append-only (% on %): write a new entry',
                TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
        END $$
        """
    )
    for table in ("journal_entries", "postings"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {S}.{table} "
            f"FOR EACH ROW EXECUTE FUNCTION {S}.refuse_ledger_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {S}.{table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {S}.refuse_ledger_change()"
        )

    # W1: at commit, every entry touched has at least two postings summing to zero.
    op.execute(
        f"""
        CREATE FUNCTION {S}.check_entry_balanced() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            total bigint;
            n integer;
        BEGIN
            SELECT coalesce(sum(amount), 0), count(*) INTO total, n
              FROM {S}.postings WHERE entry_id = NEW.entry_id;
            IF n < 2 OR total <> 0 THEN
                RAISE EXCEPTION 'journal entry % is unbalanced: % postings summing to %',
                    NEW.entry_id, n, total USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END $$
        """
    )
    for table in ("journal_entries", "postings"):
        op.execute(
            f"CREATE CONSTRAINT TRIGGER {table}_balanced AFTER INSERT ON {S}.{table} "
            "DEFERRABLE INITIALLY DEFERRED "
            f"FOR EACH ROW EXECUTE FUNCTION {S}.check_entry_balanced()"
        )


def downgrade() -> None:
    for table in ("processed_events", "holds", "postings", "journal_entries", "balances"):
        op.drop_table(table, schema=S)
    op.drop_table("accounts", schema=S)
    op.execute(f"DROP FUNCTION IF EXISTS {S}.check_entry_balanced()")
    op.execute(f"DROP FUNCTION IF EXISTS {S}.refuse_ledger_change()")
