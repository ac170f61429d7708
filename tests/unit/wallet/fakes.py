"""In-memory doubles of the wallet's repository and unit of work, for use-case tests
that run without a database."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime

from services.wallet.domain.model import Balance, Hold, JournalEntry
from services.wallet.domain.reconcile import ReconcileReport, Violation
from services.wallet.storage.repository import HoldQuery, LedgerQuery, WalletRepository
from services.wallet.storage.unit_of_work import UnitOfWork
from tokenforge.money import Bucket

NOW = datetime(2025, 1, 1, tzinfo=UTC)


class FakeWalletRepository(WalletRepository):
    def __init__(self) -> None:
        self.accounts: set[str] = set()
        self.balances_: dict[tuple[str, Bucket], Balance] = {}
        self.holds_: dict[uuid.UUID, Hold] = {}
        self.entries: list[JournalEntry] = []
        self.events: dict[str, uuid.UUID | None] = {}

    async def open_account(self, account_id: str) -> None:
        self.accounts.add(account_id)
        for bucket in Bucket:
            self.balances_.setdefault((account_id, bucket), Balance(account_id, bucket))

    async def account_exists(self, account_id: str) -> bool:
        return account_id in self.accounts

    async def balances(self, account_id: str) -> list[Balance]:
        return [copy.copy(b) for (a, _), b in self.balances_.items() if a == account_id]

    async def lock_balance(self, account_id: str, bucket: Bucket) -> Balance | None:
        found = self.balances_.get((account_id, bucket))
        return copy.copy(found) if found else None

    async def save_balance(self, balance: Balance) -> None:
        self.balances_[(balance.account_id, balance.bucket)] = copy.copy(balance)

    async def hold_by_key(self, account_id: str, idempotency_key: str) -> Hold | None:
        return next(
            (
                copy.copy(h)
                for h in self.holds_.values()
                if (h.account_id, h.idempotency_key) == (account_id, idempotency_key)
            ),
            None,
        )

    async def lock_hold(self, hold_id: uuid.UUID) -> Hold | None:
        found = self.holds_.get(hold_id)
        return copy.copy(found) if found else None

    async def add_hold(self, hold: Hold) -> None:
        self.holds_[hold.hold_id] = copy.copy(hold)

    async def save_hold(self, hold: Hold) -> None:
        self.holds_[hold.hold_id] = copy.copy(hold)

    async def expired_hold_ids(self, now: datetime, limit: int) -> list[uuid.UUID]:
        return [h.hold_id for h in self.holds_.values() if h.is_open and now >= h.expires_at]

    async def entry(self, entry_id: uuid.UUID) -> JournalEntry | None:
        return next((e for e in self.entries if e.entry_id == entry_id), None)

    async def entry_by_key(self, idempotency_key: str) -> JournalEntry | None:
        return next((e for e in self.entries if e.idempotency_key == idempotency_key), None)

    async def add_entry(self, entry: JournalEntry) -> None:
        self.entries.append(entry)

    async def event_processed(self, event_id: str) -> bool:
        return event_id in self.events

    async def record_event(self, event_id: str, entry_id: uuid.UUID | None) -> None:
        self.events.setdefault(event_id, entry_id)

    async def ledger(self, query: LedgerQuery) -> list[JournalEntry]:
        rows = [
            e
            for e in reversed(self.entries)
            if not query.account_id or e.account_id == query.account_id
        ]
        return rows[: query.limit]

    async def holds(self, query: HoldQuery) -> list[Hold]:
        rows = sorted(
            (
                h
                for h in self.holds_.values()
                if not query.account_id or h.account_id == query.account_id
            ),
            key=lambda h: (h.created_at, h.hold_id),
            reverse=True,
        )
        if query.status is not None:
            rows = [h for h in rows if h.status is query.status]
        if query.before is not None:
            rows = [h for h in rows if (h.created_at, h.hold_id) < query.before]
        return [copy.copy(h) for h in rows[: query.limit]]

    async def reconcile(self) -> ReconcileReport:
        violations: list[Violation] = []
        for (account, bucket), b in self.balances_.items():
            user = f"user:{account}:{bucket.value}"
            folded = sum(
                p.amount for e in self.entries for p in e.postings if p.ledger_account == user
            )
            held = sum(
                h.amount - h.captured
                for h in self.holds_.values()
                if h.is_open and (h.account_id, h.bucket) == (account, bucket)
            )
            if (b.posted, b.held) != (folded, held) or b.available < 0:
                violations.append(Violation("W7", f"{account}/{bucket.value}", "mismatch"))
        return ReconcileReport(len(self.accounts), len(self.entries), len(self.holds_), violations)


class FakeUnitOfWork(UnitOfWork):
    """Applies changes only on commit, like the real one."""

    def __init__(self, now: datetime = NOW) -> None:
        super().__init__(lambda: self.clock)
        self.clock = now
        self.committed = FakeWalletRepository()
        self.commits = 0

    async def __aenter__(self) -> FakeUnitOfWork:
        self.wallet = copy.deepcopy(self.committed)
        return self

    async def commit(self) -> None:
        assert isinstance(self.wallet, FakeWalletRepository)
        self.committed = self.wallet
        self.commits += 1

    async def rollback(self) -> None:
        pass
