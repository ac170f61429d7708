"""Where the wallet's state lives: an abstract repository and its SQLAlchemy Core
implementation. Every method runs inside the unit of work's transaction, except the
hot path's (place, settle, release, capture a part, and the reads that explain a
refusal): in a single-statement unit of work they run on the pooled connection's
asyncpg driver directly, each `Statement` compiled once for it."""

from __future__ import annotations

import abc
import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from opentelemetry import trace
from sqlalchemy import and_, func, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from services.wallet.domain.model import (
    Balance,
    EntryKind,
    Hold,
    HoldStatus,
    JournalEntry,
    Posting,
    part_charge,
    part_key,
    request_charge,
    settle_key,
)
from services.wallet.domain.reconcile import (
    RULE_BALANCED,
    RULE_DERIVABLE,
    RULE_HOLD_ENDS_ONCE,
    RULE_NOT_BELOW_ZERO,
    ReconcileReport,
    Violation,
)
from services.wallet.storage.tables import (
    accounts,
    balances,
    holds,
    journal_entries,
    postings,
    processed_events,
)
from tokenforge.holds import part_entry_id, settle_entry_id
from tokenforge.money import Bucket

UNIQUE_VIOLATION = "23505"
# Attribution folds a bucket's whole journal; past this many rows it would need a
# stored fold (docs/ARCHITECTURE.md, "Money words and attribution").
ATTRIBUTION_ROW_LIMIT = 1_000_000
OPEN_HOLDS_LIMIT = 10_000

# A row by column name: a SQLAlchemy row's `_mapping`, or an asyncpg record.
Row = Mapping[Any, Any]


class DuplicateKey(Exception):
    """Another transaction wrote the same idempotency key first; retry to replay it."""


@dataclass(frozen=True)
class LedgerQuery:
    account_id: str
    limit: int
    bucket: Bucket | None = None
    kind: EntryKind | None = None
    request_id: str = ""
    order_id: str = ""
    # Only entries older than this sequence number (the page cursor).
    before_seq: int | None = None
    from_time: datetime | None = None
    to_time: datetime | None = None


@dataclass(frozen=True)
class HoldQuery:
    account_id: str
    limit: int
    status: HoldStatus | None = None
    from_time: datetime | None = None
    to_time: datetime | None = None
    # Only holds before this (created_at, hold_id) in newest-first order (the cursor).
    before: tuple[datetime, uuid.UUID] | None = None


@dataclass(frozen=True)
class HoldPlacement:
    """What placing a hold found: the new hold, or the hold the request id already
    placed, or neither (then `balance` is the bucket as seen, None: no such account)."""

    hold: Hold | None
    existing: Hold | None
    balance: Balance | None


class WalletRepository(abc.ABC):
    """The wallet's storage. The hot path (place, settle, release) has one method per
    use case: the base class composes them from the primitive methods below (the
    reference behaviour, used by fakes); the SQL repository does each in one
    statement (docs/PERFORMANCE.md, "Wallet")."""

    async def place_hold(self, hold: Hold) -> HoldPlacement:
        """If the account already has a hold for `hold.idempotency_key`, return it (W4);
        else reserve `hold.amount` from the bucket if available (W2) and add `hold`."""
        balance = await self.lock_balance(hold.account_id, hold.bucket)
        if balance is None:
            return HoldPlacement(None, None, None)
        existing = await self.hold_by_key(hold.account_id, hold.idempotency_key)
        if existing is not None:
            return HoldPlacement(None, existing, balance)
        if balance.available < hold.amount:
            return HoldPlacement(None, None, balance)
        balance.reserve(hold.amount)
        await self.add_hold(hold)
        await self.save_balance(balance)
        return HoldPlacement(hold, None, balance)

    async def settle_open_hold(
        self, hold_id: uuid.UUID, amount: int, account_id: str, now: datetime, trace_id: str
    ) -> tuple[Hold, JournalEntry | None] | None:
        """Settle the hold if it is open, unexpired, holds at least `amount` and belongs
        to `account_id` (when given): capture `amount` into a request_charge entry (none
        when 0), give the rest back, end the hold (W3). None when it was not settled."""
        hold = await self.lock_hold(hold_id)
        if hold is None or not hold.belongs_to(account_id) or not hold.can_settle(amount, now):
            return None
        balance = await self.lock_balance(hold.account_id, hold.bucket)
        assert balance is not None, "a hold's bucket exists"
        balance_after = hold.settle(amount, balance, now)
        charge: JournalEntry | None = None
        if amount > 0:
            charge = request_charge(hold, balance, balance_after, now, trace_id, amount)
            await self.add_entry(charge)
            hold.entry_id = charge.entry_id
        await self.save_hold(hold)
        await self.save_balance(balance)
        return hold, charge

    async def capture_part(
        self,
        hold_id: uuid.UUID,
        amount: int,
        request_id: str,
        account_id: str,
        now: datetime,
        trace_id: str,
    ) -> tuple[Hold, JournalEntry] | None:
        """Capture `amount` (> 0) of the hold into a request_charge entry carrying
        `request_id`, if the hold is open, unexpired, still holds `amount`, belongs to
        `account_id` (when given) and has no part for `request_id` yet; the hold stays
        open. None when nothing was captured."""
        hold = await self.lock_hold(hold_id)
        if hold is None or not hold.belongs_to(account_id) or not hold.can_settle(amount, now):
            return None
        if amount <= 0 or await self.entry_by_key(part_key(hold_id, request_id)) is not None:
            return None
        balance = await self.lock_balance(hold.account_id, hold.bucket)
        assert balance is not None, "a hold's bucket exists"
        balance_after = hold.capture_part(amount, balance, now)
        charge = part_charge(hold, balance, amount, balance_after, request_id, now, trace_id)
        await self.add_entry(charge)
        await self.save_hold(hold)
        await self.save_balance(balance)
        return hold, charge

    async def release_open_hold(
        self, hold_id: uuid.UUID, account_id: str, now: datetime
    ) -> Hold | None:
        """Release the hold whole if it is open and belongs to `account_id` (when
        given); None when it was not released."""
        hold = await self.lock_hold(hold_id)
        if hold is None or not hold.belongs_to(account_id) or not hold.is_open:
            return None
        balance = await self.lock_balance(hold.account_id, hold.bucket)
        assert balance is not None, "a hold's bucket exists"
        hold.release(balance, now)
        await self.save_hold(hold)
        await self.save_balance(balance)
        return hold

    @abc.abstractmethod
    async def open_account(self, account_id: str) -> None:
        """Create the account and its buckets if they do not exist yet."""

    @abc.abstractmethod
    async def account_exists(self, account_id: str) -> bool: ...

    @abc.abstractmethod
    async def balances(self, account_id: str) -> list[Balance]: ...

    @abc.abstractmethod
    async def lock_balance(self, account_id: str, bucket: Bucket) -> Balance | None:
        """The bucket's row, locked until the transaction ends (W2)."""

    @abc.abstractmethod
    async def save_balance(self, balance: Balance) -> None: ...

    @abc.abstractmethod
    async def hold_by_key(self, account_id: str, idempotency_key: str) -> Hold | None: ...

    @abc.abstractmethod
    async def lock_hold(self, hold_id: uuid.UUID) -> Hold | None: ...

    @abc.abstractmethod
    async def add_hold(self, hold: Hold) -> None: ...

    @abc.abstractmethod
    async def save_hold(self, hold: Hold) -> None: ...

    @abc.abstractmethod
    async def expired_hold_ids(self, now: datetime, limit: int) -> list[uuid.UUID]: ...

    @abc.abstractmethod
    async def entry(self, entry_id: uuid.UUID) -> JournalEntry | None: ...

    @abc.abstractmethod
    async def entry_by_key(self, idempotency_key: str) -> JournalEntry | None: ...

    @abc.abstractmethod
    async def add_entry(self, entry: JournalEntry) -> None: ...

    @abc.abstractmethod
    async def event_processed(self, event_id: str) -> bool: ...

    @abc.abstractmethod
    async def record_event(self, event_id: str, entry_id: uuid.UUID | None) -> None: ...

    @abc.abstractmethod
    async def ledger(self, query: LedgerQuery) -> list[JournalEntry]:
        """The account's entries newest first (at most `query.limit`); every account's
        when `query.account_id` is empty."""

    @abc.abstractmethod
    async def holds(self, query: HoldQuery) -> list[Hold]:
        """The account's holds newest first (at most `query.limit`); every account's
        when `query.account_id` is empty."""

    @abc.abstractmethod
    async def reconcile(self) -> ReconcileReport:
        """Check every money rule over the whole wallet, from one snapshot."""

    async def bucket_rows(
        self, account_id: str, bucket: Bucket, through_seq: int | None = None
    ) -> list[JournalEntry]:
        """Every ledger row of one bucket, oldest first (what attribution folds); with
        `through_seq`, only the rows up to that one."""
        before = through_seq + 1 if through_seq is not None else None
        rows = await self.ledger(
            LedgerQuery(
                account_id=account_id,
                limit=ATTRIBUTION_ROW_LIMIT,
                bucket=bucket,
                before_seq=before,
            )
        )
        return rows[::-1]

    async def buckets_with_rows(self) -> list[tuple[str, Bucket]]:
        """Every (account, bucket) with at least one ledger row (reconciliation)."""
        rows = await self.ledger(LedgerQuery(account_id="", limit=ATTRIBUTION_ROW_LIMIT))
        return sorted({(e.account_id, e.bucket) for e in rows})

    async def open_holds(self, account_id: str) -> list[Hold]:
        """The account's open holds (few: requests in flight and budgets)."""
        return await self.holds(
            HoldQuery(account_id=account_id, limit=OPEN_HOLDS_LIMIT, status=HoldStatus.OPEN)
        )


def _balance(row: Any) -> Balance:
    return Balance(row.account_id, Bucket(row.bucket), row.posted, row.held)


def _hold(row: Row) -> Hold:
    """A hold from a row of wallet.holds (a SQLAlchemy row's `_mapping` or an asyncpg
    record)."""
    return Hold(
        hold_id=row["hold_id"],
        account_id=row["account_id"],
        bucket=Bucket(row["bucket"]),
        amount=row["amount"],
        request_id=row["request_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        status=HoldStatus(row["status"]),
        captured=row["captured"],
        entry_id=row["entry_id"],
        ended_at=row["ended_at"],
        trace_id=row["trace_id"],
        idempotency_key=row["idempotency_key"],
    )


def _journal_entry(row: Row, entry_postings: Sequence[Posting]) -> JournalEntry:
    return JournalEntry(
        entry_id=row["entry_id"],
        kind=EntryKind(row["kind"]),
        account_id=row["account_id"],
        bucket=Bucket(row["bucket"]),
        idempotency_key=row["idempotency_key"],
        postings=tuple(entry_postings),
        created_at=row["created_at"],
        request_id=row["request_id"],
        order_id=row["order_id"],
        hold_id=row["hold_id"],
        reason=row["reason"],
        operator=row["operator"],
        trace_id=row["trace_id"],
        reverses_entry_id=row["reverses_entry_id"],
        seq=row["seq"],
    )


_DRIVER_DIALECT = pg_asyncpg.dialect()  # type: ignore[no-untyped-call]


_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class Statement:
    """One statement of the hot path: its SQLAlchemy `text()` (run through a session),
    and the same SQL compiled once for the asyncpg driver (`$1, $2, ...` and the names
    of its parameters in that order). `name` names its span (the driver path is not
    traced by SQLAlchemy's instrumentation)."""

    name: str
    clause: TextClause
    sql: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, name: str, sql: str) -> Statement:
        clause = text(sql)
        compiled = clause.compile(dialect=_DRIVER_DIALECT)
        return cls(name, clause, str(compiled), tuple(compiled.positiontup or ()))

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] for name in self.names]


# One query per rule, each returning only the rows that break it.
_UNBALANCED_ENTRIES = text(
    """
    SELECT e.entry_id, coalesce(sum(p.amount), 0) AS total, count(p.posting_id) AS n,
           count(*) FILTER (WHERE p.bucket <> e.bucket) AS other_buckets
      FROM wallet.journal_entries e
      LEFT JOIN wallet.postings p ON p.entry_id = e.entry_id
     GROUP BY e.entry_id
    HAVING coalesce(sum(p.amount), 0) <> 0 OR count(p.posting_id) < 2
        OR count(*) FILTER (WHERE p.bucket <> e.bucket) > 0
    """
)
_BAD_BALANCES = text(
    """
    SELECT b.account_id, b.bucket, b.posted, b.held,
           coalesce(f.folded, 0) AS folded, coalesce(h.open_sum, 0) AS open_sum
      FROM wallet.balances b
      LEFT JOIN (SELECT ledger_account, sum(amount) AS folded FROM wallet.postings
                  WHERE ledger_account LIKE 'user:%' GROUP BY ledger_account) f
        ON f.ledger_account = 'user:' || b.account_id || ':' || b.bucket
      LEFT JOIN (SELECT account_id, bucket, sum(amount - captured) AS open_sum
                   FROM wallet.holds
                  WHERE status = 'open' GROUP BY account_id, bucket) h
        ON h.account_id = b.account_id AND h.bucket = b.bucket
     WHERE b.posted <> coalesce(f.folded, 0) OR b.held <> coalesce(h.open_sum, 0)
        OR b.posted < 0 OR b.held < 0 OR b.posted - b.held < 0
    """
)
# A hold's charge rows are its parts (key `part:<hold>:<request>`, any number, while
# open) and at most one settle row (key `settle:<hold>`, the hold's `entry_id`); what
# the hold captured is exactly their sum.
_BAD_HOLDS = text(
    """
    WITH charges AS (
        SELECT e.hold_id,
               count(*) FILTER (WHERE e.idempotency_key LIKE 'settle:%') AS settles,
               -coalesce(sum(p.amount) FILTER (WHERE e.idempotency_key LIKE 'settle:%'), 0)
                   AS settled,
               count(*) FILTER (WHERE e.idempotency_key LIKE 'part:%') AS parts,
               -coalesce(sum(p.amount), 0) AS total
          FROM wallet.journal_entries e
          JOIN wallet.postings p
            ON p.entry_id = e.entry_id AND p.ledger_account LIKE 'user:%'
         WHERE e.kind = 'request_charge' AND e.hold_id IS NOT NULL
         GROUP BY e.hold_id
    )
    SELECT h.hold_id, h.status, h.captured, h.ended_at, h.entry_id,
           coalesce(c.settles, 0) AS settles, coalesce(c.settled, 0) AS settled,
           coalesce(c.parts, 0) AS parts, coalesce(c.total, 0) AS charged
      FROM wallet.holds h
      LEFT JOIN charges c ON c.hold_id = h.hold_id
     WHERE h.captured <> coalesce(c.total, 0)
        OR coalesce(c.settles, 0) > 1
        OR (h.status = 'open' AND (h.ended_at IS NOT NULL OR h.entry_id IS NOT NULL
                                   OR coalesce(c.settles, 0) > 0))
        OR (h.status <> 'open' AND h.ended_at IS NULL)
        OR (h.status IN ('released', 'expired')
            AND (coalesce(c.settles, 0) > 0 OR h.entry_id IS NOT NULL))
        OR (h.status = 'settled'
            AND (h.entry_id IS NULL) <> (coalesce(c.settles, 0) = 0))
    """
)


# The hot path: each use case is one statement, run in autocommit (atomic on its own,
# no BEGIN/COMMIT round trips, and no row lock held across a client round trip).
# Under READ COMMITTED an UPDATE that waited for a row lock re-checks its WHERE on
# the newest row version, so the guards below hold under any concurrency (W2, W3).
# Ledger account names mirror user_ledger_account / system_ledger_account.
_PLACE_HOLD = Statement.of(
    "place hold",
    """
    WITH existing AS (
        SELECT * FROM wallet.holds
         WHERE account_id = CAST(:account_id AS text)
           AND idempotency_key = CAST(:idempotency_key AS text)
    ), reserved AS (
        UPDATE wallet.balances SET held = held + CAST(:amount AS bigint)
         WHERE account_id = CAST(:account_id AS text) AND bucket = CAST(:bucket AS text)
           AND posted - held >= CAST(:amount AS bigint)
           AND NOT EXISTS (SELECT 1 FROM existing)
        RETURNING posted, held
    ), placed AS (
        INSERT INTO wallet.holds (hold_id, account_id, bucket, amount, captured, status,
                                  request_id, trace_id, expires_at, created_at,
                                  idempotency_key)
        SELECT CAST(:hold_id AS uuid), CAST(:account_id AS text), CAST(:bucket AS text),
               CAST(:amount AS bigint), 0, 'open', CAST(:request_id AS text),
               CAST(:trace_id AS text), CAST(:expires_at AS timestamptz),
               CAST(:created_at AS timestamptz), CAST(:idempotency_key AS text)
          FROM reserved
        RETURNING hold_id
    )
    SELECT (SELECT count(*) FROM placed) AS placed,
           r.posted AS posted_after, r.held AS held_after,
           b.posted AS seen_posted, b.held AS seen_held, b.account_id IS NOT NULL AS found,
           e.hold_id, e.account_id, e.bucket, e.amount, e.captured, e.status, e.request_id,
           e.trace_id, e.expires_at, e.entry_id, e.created_at, e.ended_at, e.idempotency_key
      FROM (SELECT 1) AS one
      LEFT JOIN reserved r ON true
      LEFT JOIN wallet.balances b
        ON b.account_id = CAST(:account_id AS text) AND b.bucket = CAST(:bucket AS text)
      LEFT JOIN existing e ON true
    """,
)
# A settle captures :amount of what is still held (amount - captured: parts captured
# before stay), ends the hold and gives the rest back; `captured` in SET is the value
# before the statement, so the hold's remaining is s.amount - (s.captured - :amount).
_SETTLE_HOLD = Statement.of(
    "settle hold",
    """
    WITH settled AS (
        UPDATE wallet.holds
           SET status = 'settled', captured = captured + CAST(:amount AS bigint),
               ended_at = CAST(:now AS timestamptz),
               entry_id = CASE WHEN CAST(:amount AS bigint) > 0
                               THEN CAST(:entry_id AS uuid) END
         WHERE hold_id = CAST(:hold_id AS uuid) AND status = 'open'
           AND expires_at > CAST(:now AS timestamptz)
           AND amount - captured >= CAST(:amount AS bigint)
           AND (CAST(:account_id AS text) = '' OR account_id = CAST(:account_id AS text))
        RETURNING *
    ), balance AS (
        UPDATE wallet.balances b
           SET held = b.held - (s.amount - s.captured + CAST(:amount AS bigint)),
               posted = b.posted - CAST(:amount AS bigint)
          FROM settled s
         WHERE b.account_id = s.account_id AND b.bucket = s.bucket
        RETURNING b.posted, b.held
    ), entry AS (
        INSERT INTO wallet.journal_entries (entry_id, kind, account_id, bucket, request_id,
                                            hold_id, trace_id, idempotency_key, created_at)
        SELECT CAST(:entry_id AS uuid), 'request_charge', s.account_id, s.bucket,
               s.request_id, s.hold_id, coalesce(nullif(CAST(:trace_id AS text), ''), s.trace_id),
               CAST(:idempotency_key AS text), CAST(:now AS timestamptz)
          FROM settled s
         WHERE CAST(:amount AS bigint) > 0
        RETURNING seq
    ), charged AS (
        INSERT INTO wallet.postings (entry_id, ledger_account, bucket, amount, balance_after)
        SELECT CAST(:entry_id AS uuid), p.ledger_account, s.bucket, p.amount, p.balance_after
          FROM settled s
         CROSS JOIN balance b
         CROSS JOIN entry e
         CROSS JOIN LATERAL (VALUES
               (1, 'user:' || s.account_id || ':' || s.bucket, -CAST(:amount AS bigint),
                b.posted),
               (2, 'system:revenue:' || s.bucket, CAST(:amount AS bigint), NULL)
         ) AS p(n, ledger_account, amount, balance_after)
         ORDER BY p.n
    )
    SELECT s.*, b.posted AS posted_after, b.held AS held_after, e.seq AS entry_seq
      FROM settled s
     CROSS JOIN balance b
      LEFT JOIN entry e ON true
    """,
)
_RELEASE_HOLD = Statement.of(
    "release hold",
    """
    WITH released AS (
        UPDATE wallet.holds SET status = 'released', ended_at = CAST(:now AS timestamptz)
         WHERE hold_id = CAST(:hold_id AS uuid) AND status = 'open'
           AND (CAST(:account_id AS text) = '' OR account_id = CAST(:account_id AS text))
        RETURNING *
    ), balance AS (
        UPDATE wallet.balances b SET held = b.held - (r.amount - r.captured)
          FROM released r
         WHERE b.account_id = r.account_id AND b.bucket = r.bucket
        RETURNING b.held
    )
    SELECT r.* FROM released r CROSS JOIN balance b
    """,
)
# A part: :amount of what is still held becomes a request_charge row carrying the
# request's own id; the hold stays open. The NOT EXISTS is the fast replay check; the
# unique idempotency key (and the entry id, derived from the same hold and request:
# `tokenforge.holds.part_entry_id`) is the guard when two calls with one key race.
_CAPTURE_PART = Statement.of(
    "capture part",
    """
    WITH captured AS (
        UPDATE wallet.holds SET captured = captured + CAST(:amount AS bigint)
         WHERE hold_id = CAST(:hold_id AS uuid) AND status = 'open'
           AND expires_at > CAST(:now AS timestamptz)
           AND amount - captured >= CAST(:amount AS bigint) AND CAST(:amount AS bigint) > 0
           AND (CAST(:account_id AS text) = '' OR account_id = CAST(:account_id AS text))
           AND NOT EXISTS (SELECT 1 FROM wallet.journal_entries
                            WHERE idempotency_key = CAST(:idempotency_key AS text))
        RETURNING *
    ), balance AS (
        UPDATE wallet.balances b
           SET held = b.held - CAST(:amount AS bigint), posted = b.posted - CAST(:amount AS bigint)
          FROM captured c
         WHERE b.account_id = c.account_id AND b.bucket = c.bucket
        RETURNING b.posted, b.held
    ), entry AS (
        INSERT INTO wallet.journal_entries (entry_id, kind, account_id, bucket, request_id,
                                            hold_id, trace_id, idempotency_key, created_at)
        SELECT CAST(:entry_id AS uuid), 'request_charge', c.account_id, c.bucket,
               CAST(:request_id AS text), c.hold_id,
               coalesce(nullif(CAST(:trace_id AS text), ''), c.trace_id),
               CAST(:idempotency_key AS text), CAST(:now AS timestamptz)
          FROM captured c
        RETURNING seq
    ), charged AS (
        INSERT INTO wallet.postings (entry_id, ledger_account, bucket, amount, balance_after)
        SELECT CAST(:entry_id AS uuid), p.ledger_account, c.bucket, p.amount, p.balance_after
          FROM captured c
         CROSS JOIN balance b
         CROSS JOIN entry e
         CROSS JOIN LATERAL (VALUES
               (1, 'user:' || c.account_id || ':' || c.bucket, -CAST(:amount AS bigint),
                b.posted),
               (2, 'system:revenue:' || c.bucket, CAST(:amount AS bigint), NULL)
         ) AS p(n, ledger_account, amount, balance_after)
         ORDER BY p.n
    )
    SELECT c.*, b.posted AS posted_after, b.held AS held_after, e.seq AS entry_seq
      FROM captured c
     CROSS JOIN balance b
     CROSS JOIN entry e
    """,
)

# The reads that explain why a hot-path statement changed nothing (and answer replays).
# FOR UPDATE waits for a change of the hold in flight, so the read sees it committed.
_LOCK_HOLD = Statement.of(
    "lock hold", "SELECT * FROM wallet.holds WHERE hold_id = CAST(:hold_id AS uuid) FOR UPDATE"
)
_ENTRY_COLUMNS = """
    SELECT e.*, p.ledger_account, p.bucket AS posting_bucket, p.amount AS posting_amount,
           p.balance_after AS posting_balance_after
      FROM wallet.journal_entries e
      JOIN wallet.postings p ON p.entry_id = e.entry_id
"""
_ENTRY_BY_ID = Statement.of(
    "entry by id",
    _ENTRY_COLUMNS + " WHERE e.entry_id = CAST(:entry_id AS uuid) ORDER BY p.posting_id",
)
_ENTRY_BY_KEY = Statement.of(
    "entry by key",
    _ENTRY_COLUMNS + " WHERE e.idempotency_key = CAST(:key AS text) ORDER BY p.posting_id",
)


def _entry_of_rows(rows: Sequence[Row]) -> JournalEntry | None:
    """One entry from its rows joined with its postings (one row per posting)."""
    if not rows:
        return None
    entry_postings = [
        Posting(
            r["ledger_account"],
            Bucket(r["posting_bucket"]),
            r["posting_amount"],
            r["posting_balance_after"],
        )
        for r in rows
    ]
    return _journal_entry(rows[0], entry_postings)


def _hold_problem(row: Any) -> str:
    rows = f"{row.parts} part rows and {row.settles} settle rows totalling {row.charged}"
    if row.captured != row.charged:
        return f"{row.status} hold captured {row.captured} but has {rows}"
    if row.status == HoldStatus.OPEN.value:
        return f"open hold carries an end (ended_at, a settle or its entry): {rows}"
    if row.ended_at is None:
        return f"{row.status} hold has no ended_at"
    if row.status != HoldStatus.SETTLED.value:
        return f"{row.status} hold was settled ({rows}, entry {row.entry_id})"
    return f"settled hold names entry {row.entry_id} but has {rows}"


def _hold_values(hold: Hold) -> dict[str, Any]:
    return {
        "hold_id": hold.hold_id,
        "account_id": hold.account_id,
        "bucket": hold.bucket.value,
        "amount": hold.amount,
        "captured": hold.captured,
        "status": hold.status.value,
        "request_id": hold.request_id,
        "trace_id": hold.trace_id,
        "expires_at": hold.expires_at,
        "entry_id": hold.entry_id,
        "created_at": hold.created_at,
        "ended_at": hold.ended_at,
        "idempotency_key": hold.idempotency_key,
    }


class SqlAlchemyWalletRepository(WalletRepository):
    """The wallet's tables through SQLAlchemy Core. `session` opens the unit of work's
    session on first use. With `driver` (an asyncpg connection in autocommit, lent by
    `SqlAlchemyUnitOfWork.single_statements`), the hot path's statements run on it
    directly: one round trip each, none of SQLAlchemy's execution machinery."""

    def __init__(
        self, session: Callable[[], AsyncSession], driver: asyncpg.Connection | None = None
    ) -> None:
        self._session = session
        self._driver = driver

    @property
    def session(self) -> AsyncSession:
        return self._session()

    async def _fetch(self, statement: Statement, values: Mapping[str, Any]) -> Sequence[Row]:
        """The rows of one hot-path statement; a unique key taken by a concurrent call
        is DuplicateKey (the statement rolled back whole: the caller replays)."""
        try:
            if self._driver is not None:
                span = _tracer.start_span(
                    f"wallet {statement.name}",
                    kind=trace.SpanKind.CLIENT,
                    attributes={"db.system": "postgresql", "db.operation.name": statement.name},
                )
                try:
                    rows: Sequence[Row] = await self._driver.fetch(
                        statement.sql, *statement.arguments(values)
                    )
                finally:
                    span.end()
                return rows
            return list((await self.session.execute(statement.clause, values)).mappings())
        except asyncpg.UniqueViolationError as error:
            raise DuplicateKey(str(error)) from error
        except IntegrityError as error:
            if getattr(error.orig, "sqlstate", None) == UNIQUE_VIOLATION:
                raise DuplicateKey(str(error.orig)) from error
            raise

    async def _insert(self, statement: Any, values: Any) -> None:
        try:
            await self.session.execute(statement, values)
        except IntegrityError as error:
            if getattr(error.orig, "sqlstate", None) == UNIQUE_VIOLATION:
                raise DuplicateKey(str(error.orig)) from error
            raise

    async def place_hold(self, hold: Hold) -> HoldPlacement:
        [row] = await self._fetch(
            _PLACE_HOLD,
            {
                "hold_id": hold.hold_id,
                "account_id": hold.account_id,
                "bucket": hold.bucket.value,
                "amount": hold.amount,
                "request_id": hold.request_id,
                "trace_id": hold.trace_id,
                "expires_at": hold.expires_at,
                "created_at": hold.created_at,
                "idempotency_key": hold.idempotency_key,
            },
        )
        if row["hold_id"] is not None:
            return HoldPlacement(None, _hold(row), None)
        if not row["found"]:
            return HoldPlacement(None, None, None)
        if row["placed"]:
            after = Balance(hold.account_id, hold.bucket, row["posted_after"], row["held_after"])
            return HoldPlacement(hold, None, after)
        seen = Balance(hold.account_id, hold.bucket, row["seen_posted"], row["seen_held"])
        return HoldPlacement(None, None, seen)

    async def settle_open_hold(
        self, hold_id: uuid.UUID, amount: int, account_id: str, now: datetime, trace_id: str
    ) -> tuple[Hold, JournalEntry | None] | None:
        entry_id = settle_entry_id(hold_id)
        rows = await self._fetch(
            _SETTLE_HOLD,
            {
                "hold_id": hold_id,
                "amount": amount,
                "account_id": account_id,
                "now": now,
                "entry_id": entry_id,
                "trace_id": trace_id,
                "idempotency_key": settle_key(hold_id),
            },
        )
        if not rows:
            return None
        row = rows[0]
        hold = _hold(row)
        if amount == 0:
            return hold, None
        posted_after = row["posted_after"]
        balance = Balance(hold.account_id, hold.bucket, posted_after, row["held_after"])
        # The same entry the statement wrote, built by the domain's rule.
        charge = request_charge(hold, balance, posted_after, now, trace_id, amount)
        return hold, dataclasses.replace(charge, entry_id=entry_id, seq=row["entry_seq"])

    async def capture_part(
        self,
        hold_id: uuid.UUID,
        amount: int,
        request_id: str,
        account_id: str,
        now: datetime,
        trace_id: str,
    ) -> tuple[Hold, JournalEntry] | None:
        entry_id = part_entry_id(hold_id, request_id)
        rows = await self._fetch(
            _CAPTURE_PART,
            {
                "hold_id": hold_id,
                "amount": amount,
                "request_id": request_id,
                "account_id": account_id,
                "now": now,
                "entry_id": entry_id,
                "trace_id": trace_id,
                "idempotency_key": part_key(hold_id, request_id),
            },
        )
        if not rows:
            return None
        row = rows[0]
        hold = _hold(row)
        posted_after = row["posted_after"]
        balance = Balance(hold.account_id, hold.bucket, posted_after, row["held_after"])
        # The same entry the statement wrote (the domain's rule derives the same id).
        charge = part_charge(hold, balance, amount, posted_after, request_id, now, trace_id)
        return hold, dataclasses.replace(charge, seq=row["entry_seq"])

    async def release_open_hold(
        self, hold_id: uuid.UUID, account_id: str, now: datetime
    ) -> Hold | None:
        rows = await self._fetch(
            _RELEASE_HOLD, {"hold_id": hold_id, "account_id": account_id, "now": now}
        )
        return _hold(rows[0]) if rows else None

    async def open_account(self, account_id: str) -> None:
        await self.session.execute(
            pg_insert(accounts).values(account_id=account_id).on_conflict_do_nothing()
        )
        await self.session.execute(
            pg_insert(balances)
            .values([{"account_id": account_id, "bucket": b.value} for b in Bucket])
            .on_conflict_do_nothing()
        )

    async def account_exists(self, account_id: str) -> bool:
        found = await self.session.scalar(
            select(accounts.c.account_id).where(accounts.c.account_id == account_id)
        )
        return found is not None

    async def balances(self, account_id: str) -> list[Balance]:
        rows = await self.session.execute(
            select(balances).where(balances.c.account_id == account_id).order_by(balances.c.bucket)
        )
        return [_balance(row) for row in rows]

    async def lock_balance(self, account_id: str, bucket: Bucket) -> Balance | None:
        rows = await self.session.execute(
            select(balances)
            .where(balances.c.account_id == account_id, balances.c.bucket == bucket.value)
            .with_for_update()
        )
        row = rows.first()
        return _balance(row) if row is not None else None

    async def save_balance(self, balance: Balance) -> None:
        await self.session.execute(
            update(balances)
            .where(
                balances.c.account_id == balance.account_id,
                balances.c.bucket == balance.bucket.value,
            )
            .values(posted=balance.posted, held=balance.held)
        )

    async def hold_by_key(self, account_id: str, idempotency_key: str) -> Hold | None:
        rows = await self.session.execute(
            select(holds).where(
                holds.c.account_id == account_id, holds.c.idempotency_key == idempotency_key
            )
        )
        row = rows.first()
        return _hold(row._mapping) if row is not None else None

    async def lock_hold(self, hold_id: uuid.UUID) -> Hold | None:
        rows = await self._fetch(_LOCK_HOLD, {"hold_id": hold_id})
        return _hold(rows[0]) if rows else None

    async def add_hold(self, hold: Hold) -> None:
        await self._insert(insert(holds), _hold_values(hold))

    async def save_hold(self, hold: Hold) -> None:
        await self.session.execute(
            update(holds)
            .where(holds.c.hold_id == hold.hold_id)
            .values(
                status=hold.status.value,
                captured=hold.captured,
                entry_id=hold.entry_id,
                ended_at=hold.ended_at,
                expires_at=hold.expires_at,
            )
        )

    async def expired_hold_ids(self, now: datetime, limit: int) -> list[uuid.UUID]:
        rows = await self.session.scalars(
            select(holds.c.hold_id)
            .where(holds.c.status == HoldStatus.OPEN.value, holds.c.expires_at <= now)
            .order_by(holds.c.expires_at)
            .limit(limit)
        )
        return list(rows)

    async def _entries(self, where: Any, limit: int | None = None) -> list[JournalEntry]:
        statement = select(journal_entries).where(where).order_by(journal_entries.c.seq.desc())
        if limit is not None:
            statement = statement.limit(limit)
        entry_rows = list(await self.session.execute(statement))
        if not entry_rows:
            return []
        ids = [row.entry_id for row in entry_rows]
        posting_rows = await self.session.execute(
            select(postings).where(postings.c.entry_id.in_(ids)).order_by(postings.c.posting_id)
        )
        by_entry: dict[uuid.UUID, list[Posting]] = {}
        for p in posting_rows:
            by_entry.setdefault(p.entry_id, []).append(
                Posting(p.ledger_account, Bucket(p.bucket), p.amount, p.balance_after)
            )
        return [_journal_entry(row._mapping, by_entry[row.entry_id]) for row in entry_rows]

    async def entry(self, entry_id: uuid.UUID) -> JournalEntry | None:
        return _entry_of_rows(await self._fetch(_ENTRY_BY_ID, {"entry_id": entry_id}))

    async def entry_by_key(self, idempotency_key: str) -> JournalEntry | None:
        return _entry_of_rows(await self._fetch(_ENTRY_BY_KEY, {"key": idempotency_key}))

    async def add_entry(self, entry: JournalEntry) -> None:
        await self._insert(
            insert(journal_entries),
            {
                "entry_id": entry.entry_id,
                "kind": entry.kind.value,
                "account_id": entry.account_id,
                "bucket": entry.bucket.value,
                "request_id": entry.request_id,
                "order_id": entry.order_id,
                "hold_id": entry.hold_id,
                "reason": entry.reason,
                "operator": entry.operator,
                "trace_id": entry.trace_id,
                "reverses_entry_id": entry.reverses_entry_id,
                "idempotency_key": entry.idempotency_key,
                "created_at": entry.created_at,
            },
        )
        await self.session.execute(
            insert(postings),
            [
                {
                    "entry_id": entry.entry_id,
                    "ledger_account": p.ledger_account,
                    "bucket": p.bucket.value,
                    "amount": p.amount,
                    "balance_after": p.balance_after,
                }
                for p in entry.postings
            ],
        )

    async def event_processed(self, event_id: str) -> bool:
        found = await self.session.scalar(
            select(processed_events.c.event_id).where(processed_events.c.event_id == event_id)
        )
        return found is not None

    async def record_event(self, event_id: str, entry_id: uuid.UUID | None) -> None:
        await self.session.execute(
            pg_insert(processed_events)
            .values(event_id=event_id, entry_id=entry_id)
            .on_conflict_do_nothing()
        )

    async def ledger(self, query: LedgerQuery) -> list[JournalEntry]:
        conditions: list[Any] = []
        if query.account_id:  # none: every account (operators' reconciliation)
            conditions.append(journal_entries.c.account_id == query.account_id)
        if query.bucket is not None:
            conditions.append(journal_entries.c.bucket == query.bucket.value)
        if query.kind is not None:
            conditions.append(journal_entries.c.kind == query.kind.value)
        if query.request_id:
            conditions.append(journal_entries.c.request_id == query.request_id)
        if query.order_id:
            conditions.append(journal_entries.c.order_id == query.order_id)
        if query.before_seq is not None:
            conditions.append(journal_entries.c.seq < query.before_seq)
        if query.from_time is not None:
            conditions.append(journal_entries.c.created_at >= query.from_time)
        if query.to_time is not None:
            conditions.append(journal_entries.c.created_at < query.to_time)
        return await self._entries(and_(*conditions), query.limit)

    async def holds(self, query: HoldQuery) -> list[Hold]:
        conditions: list[Any] = []
        if query.account_id:  # none: every account (operators' reconciliation)
            conditions.append(holds.c.account_id == query.account_id)
        if query.status is not None:
            conditions.append(holds.c.status == query.status.value)
        if query.from_time is not None:
            conditions.append(holds.c.created_at >= query.from_time)
        if query.to_time is not None:
            conditions.append(holds.c.created_at < query.to_time)
        if query.before is not None:
            conditions.append(tuple_(holds.c.created_at, holds.c.hold_id) < query.before)
        rows = await self.session.execute(
            select(holds)
            .where(and_(*conditions))
            .order_by(holds.c.created_at.desc(), holds.c.hold_id.desc())
            .limit(query.limit)
        )
        return [_hold(row._mapping) for row in rows]

    async def buckets_with_rows(self) -> list[tuple[str, Bucket]]:
        rows = await self.session.execute(
            select(journal_entries.c.account_id, journal_entries.c.bucket)
            .distinct()
            .order_by(journal_entries.c.account_id, journal_entries.c.bucket)
        )
        return [(row.account_id, Bucket(row.bucket)) for row in rows]

    async def reconcile(self) -> ReconcileReport:
        # One snapshot for every check, so live traffic can not look like a violation.
        await self.session.execute(
            text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        )
        violations: list[Violation] = []
        for row in await self.session.execute(_UNBALANCED_ENTRIES):
            violations.append(
                Violation(
                    RULE_BALANCED,
                    str(row.entry_id),
                    f"{row.n} postings summing to {row.total}"
                    + (f", {row.other_buckets} in another bucket" if row.other_buckets else ""),
                )
            )
        for row in await self.session.execute(_BAD_BALANCES):
            subject = f"{row.account_id}/{row.bucket}"
            if row.posted < 0 or row.held < 0 or row.posted - row.held < 0:
                violations.append(
                    Violation(
                        RULE_NOT_BELOW_ZERO,
                        subject,
                        f"posted {row.posted}, held {row.held}, available {row.posted - row.held}",
                    )
                )
            if row.posted != row.folded:
                violations.append(
                    Violation(
                        RULE_DERIVABLE,
                        subject,
                        f"posted {row.posted} but the journal folds to {row.folded}",
                    )
                )
            if row.held != row.open_sum:
                violations.append(
                    Violation(
                        RULE_DERIVABLE,
                        subject,
                        f"held {row.held} but open holds sum to {row.open_sum}",
                    )
                )
        for row in await self.session.execute(_BAD_HOLDS):
            violations.append(Violation(RULE_HOLD_ENDS_ONCE, str(row.hold_id), _hold_problem(row)))
        accounts_checked = await self.session.scalar(select(func.count()).select_from(accounts))
        entries_checked = await self.session.scalar(
            select(func.count()).select_from(journal_entries)
        )
        holds_checked = await self.session.scalar(select(func.count()).select_from(holds))
        return ReconcileReport(
            accounts_checked=accounts_checked or 0,
            entries_checked=entries_checked or 0,
            holds_checked=holds_checked or 0,
            violations=violations,
        )
