"""Where the wallet's state lives: an abstract repository and its SQLAlchemy Core
implementation. Every method runs inside the unit of work's transaction."""

from __future__ import annotations

import abc
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.wallet.domain.model import (
    Balance,
    EntryKind,
    Hold,
    HoldStatus,
    JournalEntry,
    Posting,
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
from tokenforge.money import Bucket

UNIQUE_VIOLATION = "23505"


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


class WalletRepository(abc.ABC):
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
    async def hold_by_request(self, account_id: str, request_id: str) -> Hold | None: ...

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
        """The account's entries newest first (at most `query.limit`)."""

    @abc.abstractmethod
    async def holds(self, query: HoldQuery) -> list[Hold]:
        """The account's holds newest first (at most `query.limit`)."""

    @abc.abstractmethod
    async def reconcile(self) -> ReconcileReport:
        """Check every money rule over the whole wallet, from one snapshot."""


def _balance(row: Any) -> Balance:
    return Balance(row.account_id, Bucket(row.bucket), row.posted, row.held)


def _hold(row: Any) -> Hold:
    return Hold(
        hold_id=row.hold_id,
        account_id=row.account_id,
        bucket=Bucket(row.bucket),
        amount=row.amount,
        request_id=row.request_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        status=HoldStatus(row.status),
        captured=row.captured,
        entry_id=row.entry_id,
        ended_at=row.ended_at,
        trace_id=row.trace_id,
    )


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
      LEFT JOIN (SELECT account_id, bucket, sum(amount) AS open_sum FROM wallet.holds
                  WHERE status = 'open' GROUP BY account_id, bucket) h
        ON h.account_id = b.account_id AND h.bucket = b.bucket
     WHERE b.posted <> coalesce(f.folded, 0) OR b.held <> coalesce(h.open_sum, 0)
        OR b.posted < 0 OR b.held < 0 OR b.posted - b.held < 0
    """
)
_BAD_HOLDS = text(
    """
    WITH charges AS (
        SELECT e.hold_id, count(DISTINCT e.entry_id) AS n, -coalesce(sum(p.amount), 0) AS total
          FROM wallet.journal_entries e
          JOIN wallet.postings p
            ON p.entry_id = e.entry_id AND p.ledger_account LIKE 'user:%'
         WHERE e.kind = 'request_charge' AND e.hold_id IS NOT NULL
         GROUP BY e.hold_id
    )
    SELECT h.hold_id, h.status, h.captured, h.ended_at, h.entry_id,
           coalesce(c.n, 0) AS charges, coalesce(c.total, 0) AS charged
      FROM wallet.holds h
      LEFT JOIN charges c ON c.hold_id = h.hold_id
     WHERE (h.status = 'open' AND (h.ended_at IS NOT NULL OR h.captured <> 0
                                   OR h.entry_id IS NOT NULL OR coalesce(c.n, 0) > 0))
        OR (h.status <> 'open' AND h.ended_at IS NULL)
        OR (h.status IN ('released', 'expired') AND (h.captured <> 0 OR coalesce(c.n, 0) > 0))
        OR (h.status = 'settled' AND h.captured > 0
            AND (coalesce(c.n, 0) <> 1 OR h.entry_id IS NULL OR c.total <> h.captured))
        OR (h.status = 'settled' AND h.captured = 0 AND coalesce(c.n, 0) > 0)
    """
)


def _hold_problem(row: Any) -> str:
    if row.status == HoldStatus.OPEN.value:
        return "open hold carries an end (ended_at, a capture or a charge)"
    if row.ended_at is None:
        return f"{row.status} hold has no ended_at"
    if row.status != HoldStatus.SETTLED.value:
        return f"{row.status} hold was charged ({row.charges} charge rows, captured {row.captured})"
    return (
        f"settled hold captured {row.captured} but has {row.charges} charge rows "
        f"totalling {row.charged}"
    )


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
    }


class SqlAlchemyWalletRepository(WalletRepository):
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _insert(self, statement: Any, values: Any) -> None:
        try:
            await self.session.execute(statement, values)
        except IntegrityError as error:
            if getattr(error.orig, "sqlstate", None) == UNIQUE_VIOLATION:
                raise DuplicateKey(str(error.orig)) from error
            raise

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

    async def hold_by_request(self, account_id: str, request_id: str) -> Hold | None:
        rows = await self.session.execute(
            select(holds).where(holds.c.account_id == account_id, holds.c.request_id == request_id)
        )
        row = rows.first()
        return _hold(row) if row is not None else None

    async def lock_hold(self, hold_id: uuid.UUID) -> Hold | None:
        rows = await self.session.execute(
            select(holds).where(holds.c.hold_id == hold_id).with_for_update()
        )
        row = rows.first()
        return _hold(row) if row is not None else None

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
        return [
            JournalEntry(
                entry_id=row.entry_id,
                kind=EntryKind(row.kind),
                account_id=row.account_id,
                bucket=Bucket(row.bucket),
                idempotency_key=row.idempotency_key,
                postings=tuple(by_entry[row.entry_id]),
                created_at=row.created_at,
                request_id=row.request_id,
                order_id=row.order_id,
                hold_id=row.hold_id,
                reason=row.reason,
                operator=row.operator,
                trace_id=row.trace_id,
                reverses_entry_id=row.reverses_entry_id,
                seq=row.seq,
            )
            for row in entry_rows
        ]

    async def entry(self, entry_id: uuid.UUID) -> JournalEntry | None:
        found = await self._entries(journal_entries.c.entry_id == entry_id)
        return found[0] if found else None

    async def entry_by_key(self, idempotency_key: str) -> JournalEntry | None:
        found = await self._entries(journal_entries.c.idempotency_key == idempotency_key)
        return found[0] if found else None

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
        conditions: list[Any] = [journal_entries.c.account_id == query.account_id]
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
        conditions: list[Any] = [holds.c.account_id == query.account_id]
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
        return [_hold(row) for row in rows]

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
