"""A Hypothesis state machine drives the wallet's use cases (credit, hold, capture a
part, settle, release, extend, expire, adjust, reverse) against the REAL database through the
handlers and the SQLAlchemy unit of work, next to a plain-Python model; after every
step the stored balances must equal the model, available is never below zero, and
every balance is the fold of its ledger; after every run the whole wallet reconciles.

The clock is injected and starts a day ahead, so the service's own background
sweeper (real clock) never touches these holds; "expire" advances the model clock
and runs the sweeper's pass. Examples are kept few so the test takes seconds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from services.wallet import app, handlers
from services.wallet.domain import commands
from services.wallet.domain.model import MAX_HOLD_LIFETIME_S, EntryKind
from services.wallet.storage.unit_of_work import SqlAlchemyUnitOfWork, utcnow
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket
from tokenforge.runtime.db import create_engine, sessionmaker

T = TypeVar("T")
BUCKETS = st.sampled_from(list(Bucket))


@dataclass
class ModelHold:
    hold_id: str
    bucket: Bucket
    amount: int
    created_at: datetime
    expires_at: datetime
    status: str = "open"
    # Parts and the settle together.
    captured: int = 0
    # What the settle itself took (parts captured before it are not part of it).
    settled: int = 0
    # Parts by request id (zero parts are not remembered).
    parts: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelEntry:
    entry_id: str
    kind: EntryKind
    bucket: Bucket
    amount: int
    reversed_by: str = ""


@dataclass
class Model:
    posted: dict[Bucket, int] = field(default_factory=lambda: dict.fromkeys(Bucket, 0))
    holds: list[ModelHold] = field(default_factory=list)
    entries: list[ModelEntry] = field(default_factory=list)

    def held(self, bucket: Bucket) -> int:
        return sum(
            h.amount - h.captured for h in self.holds if h.bucket is bucket and h.status == "open"
        )

    def available(self, bucket: Bucket) -> int:
        return self.posted[bucket] - self.held(bucket)


class Runner:
    """An event loop of its own (the test runs in a worker thread) and an engine."""

    def __init__(self, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = create_engine(database_url, pool_size=2)
        self.sessions = sessionmaker(self.engine)

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def close(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()


class WalletMachine(RuleBasedStateMachine):
    runner: Runner

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.now = utcnow() + timedelta(days=1)
        self.account = f"acct-sm-{uuid.uuid4()}"
        self.do(handlers.open_account(commands.OpenAccount(self.account), self.uow()))

    def uow(self) -> SqlAlchemyUnitOfWork:
        return SqlAlchemyUnitOfWork(self.runner.sessions, lambda: self.now)

    def do(self, awaitable: Awaitable[T]) -> T:
        return self.runner.run(awaitable)

    def refused(self, awaitable: Awaitable[Any]) -> Reason | None:
        try:
            self.do(awaitable)
        except DomainError as error:
            return error.reason
        return None

    def pick_hold(self, pick: int) -> ModelHold:
        return self.model.holds[pick % len(self.model.holds)]

    # Money in.

    @rule(bucket=BUCKETS, amount=st.integers(1, 1_000))
    def credit(self, bucket: Bucket, amount: int) -> None:
        entry = self.do(
            handlers.credit_topup(
                commands.CreditTopUp(self.account, bucket, amount, f"order-{uuid.uuid4()}"),
                self.uow(),
            )
        )
        self.model.posted[bucket] += amount
        self.model.entries.append(
            ModelEntry(str(entry.entry_id), EntryKind.TOPUP_CREDIT, bucket, amount)
        )

    @rule(bucket=BUCKETS, amount=st.integers(-600, 600).filter(bool))
    def adjust(self, bucket: Bucket, amount: int) -> None:
        cmd = commands.AdjustBalance(
            self.account, bucket, amount, "model", "sm", f"adj-{uuid.uuid4()}"
        )
        if amount < 0 and self.model.available(bucket) < -amount:
            assert self.refused(handlers.adjust_balance(cmd, self.uow())) is (
                Reason.INSUFFICIENT_BALANCE
            )
            return
        entry = self.do(handlers.adjust_balance(cmd, self.uow()))
        self.model.posted[bucket] += amount
        self.model.entries.append(
            ModelEntry(str(entry.entry_id), EntryKind.ADJUSTMENT, bucket, amount)
        )

    # Holds.

    @rule(bucket=BUCKETS, amount=st.integers(1, 1_500), ttl=st.integers(1, 900))
    def hold(self, bucket: Bucket, amount: int, ttl: int) -> None:
        cmd = commands.PlaceHold(self.account, bucket, amount, f"req-{uuid.uuid4()}", ttl)
        if self.model.available(bucket) < amount:
            assert self.refused(handlers.place_hold(cmd, self.uow())) is (
                Reason.INSUFFICIENT_BALANCE
            )
            return
        hold = self.do(handlers.place_hold(cmd, self.uow()))
        self.model.holds.append(
            ModelHold(
                str(hold.hold_id), bucket, amount, self.now, self.now + timedelta(seconds=ttl)
            )
        )

    @precondition(lambda self: self.model.holds)
    @rule(pick=st.integers(0, 10_000), extra=st.integers(-5, 5), fraction=st.floats(0, 1))
    def settle(self, pick: int, extra: int, fraction: float) -> None:
        h = self.pick_hold(pick)
        amount = max(0, int(h.amount * fraction) + extra)
        call = handlers.settle_hold(commands.SettleHold(h.hold_id, amount), self.uow())
        if h.status == "settled" and h.settled == amount:
            assert self.refused(call) is None  # a replay answers the first result
        elif h.status == "expired" or (h.status == "open" and self.now >= h.expires_at):
            assert self.refused(call) is Reason.HOLD_EXPIRED
        elif h.status != "open":
            assert self.refused(call) is Reason.HOLD_NOT_OPEN
        elif amount > h.amount - h.captured:
            assert self.refused(call) is Reason.SETTLE_ABOVE_HOLD
        else:
            settled = self.do(call)
            assert settled.hold.captured == h.captured + amount
            h.status, h.captured, h.settled = "settled", h.captured + amount, amount
            self.model.posted[h.bucket] -= amount
            if amount:
                assert settled.entry is not None
                self.model.entries.append(
                    ModelEntry(
                        str(settled.entry.entry_id), EntryKind.REQUEST_CHARGE, h.bucket, -amount
                    )
                )

    @precondition(lambda self: self.model.holds)
    @rule(
        pick=st.integers(0, 10_000),
        extra=st.integers(-5, 5),
        fraction=st.floats(0, 1),
        again=st.booleans(),
    )
    def capture_part(self, pick: int, extra: int, fraction: float, again: bool) -> None:
        h = self.pick_hold(pick)
        amount = max(0, int((h.amount - h.captured) * fraction) + extra)
        request_id = next(iter(h.parts)) if again and h.parts else f"part-{uuid.uuid4()}"
        call = handlers.capture_part(
            commands.CapturePart(h.hold_id, amount, request_id), self.uow()
        )
        if request_id in h.parts:
            if h.parts[request_id] == amount:
                assert self.refused(call) is None  # a replay answers the first part
            else:
                assert self.refused(call) is Reason.IDEMPOTENCY_CONFLICT
        elif h.status == "expired" or (h.status == "open" and self.now >= h.expires_at):
            assert self.refused(call) is Reason.HOLD_EXPIRED
        elif h.status != "open":
            assert self.refused(call) is Reason.HOLD_NOT_OPEN
        elif amount > h.amount - h.captured:
            assert self.refused(call) is Reason.SETTLE_ABOVE_HOLD
        else:
            captured = self.do(call)
            assert captured.hold.status.value == "open"
            if amount == 0:
                assert captured.entry is None
                return
            assert captured.entry is not None and captured.entry.request_id == request_id
            h.captured += amount
            h.parts[request_id] = amount
            self.model.posted[h.bucket] -= amount
            self.model.entries.append(
                ModelEntry(
                    str(captured.entry.entry_id), EntryKind.REQUEST_CHARGE, h.bucket, -amount
                )
            )

    @precondition(lambda self: self.model.holds)
    @rule(pick=st.integers(0, 10_000))
    def release(self, pick: int) -> None:
        h = self.pick_hold(pick)
        call = handlers.release_hold(commands.ReleaseHold(h.hold_id), self.uow())
        if h.status == "settled":
            assert self.refused(call) is Reason.HOLD_NOT_OPEN
            return
        assert self.refused(call) is None
        if h.status == "open":
            h.status = "released"

    @precondition(lambda self: self.model.holds)
    @rule(pick=st.integers(0, 10_000), ttl=st.integers(1, 3_600))
    def extend(self, pick: int, ttl: int) -> None:
        h = self.pick_hold(pick)
        call = handlers.extend_hold(commands.ExtendHold(h.hold_id, ttl), self.uow())
        cap = h.created_at + timedelta(seconds=MAX_HOLD_LIFETIME_S)
        wanted = min(self.now + timedelta(seconds=ttl), cap)
        if h.status == "expired" or (h.status == "open" and self.now >= h.expires_at):
            assert self.refused(call) is Reason.HOLD_EXPIRED
        elif h.status != "open":
            assert self.refused(call) is Reason.HOLD_NOT_OPEN
        elif wanted > h.expires_at:
            assert self.do(call).expires_at == wanted
            h.expires_at = wanted
        elif h.expires_at >= cap and self.now + timedelta(seconds=ttl) > cap:
            assert self.refused(call) is Reason.INVALID_TRANSITION
        else:
            assert self.do(call).expires_at == h.expires_at

    @rule(seconds=st.integers(1, 1_200))
    def expire(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self.do(app.sweep_expired_holds(self.uow()))
        for h in self.model.holds:
            if h.status == "open" and self.now >= h.expires_at:
                h.status = "expired"

    # Corrections.

    @precondition(lambda self: self.model.entries)
    @rule(pick=st.integers(0, 10_000))
    def reverse(self, pick: int) -> None:
        e = self.model.entries[pick % len(self.model.entries)]
        call = handlers.reverse_entry(commands.ReverseEntry(e.entry_id, "model", "sm"), self.uow())
        if e.kind is EntryKind.REVERSAL:
            assert self.refused(call) is Reason.INVALID_TRANSITION
        elif e.reversed_by:
            assert str(self.do(call).entry_id) == e.reversed_by  # same reason: a replay
        elif e.amount > 0 and self.model.available(e.bucket) < e.amount:
            assert self.refused(call) is Reason.INSUFFICIENT_BALANCE
        else:
            entry = self.do(call)
            e.reversed_by = str(entry.entry_id)
            self.model.posted[e.bucket] -= e.amount
            self.model.entries.append(
                ModelEntry(str(entry.entry_id), EntryKind.REVERSAL, e.bucket, -e.amount)
            )

    # Every money rule, after every step.

    @invariant()
    def balances_match_the_model_and_the_journal(self) -> None:
        stored = self.do(handlers.get_balances(commands.GetBalances(self.account), self.uow()))
        page = self.do(
            handlers.list_ledger(commands.ListLedger(self.account, page_size=500), self.uow())
        )
        for b in stored:
            assert (b.posted, b.held) == (self.model.posted[b.bucket], self.model.held(b.bucket))
            assert b.held >= 0 and b.available >= 0  # W2
            rows = [e for e in page.entries if e.bucket is b.bucket]
            assert sum(e.amount for e in rows) == b.posted  # W7
            if rows:
                assert rows[0].balance_after == b.posted
        assert len(page.entries) == len(self.model.entries)

    def teardown(self) -> None:
        report = self.do(handlers.reconcile(commands.Reconcile(), self.uow()))
        assert report.ok, report.violations
        # Give the model's open holds back, so the shared database stays tidy.
        for h in self.model.holds:
            if h.status == "open":
                self.do(handlers.release_hold(commands.ReleaseHold(h.hold_id), self.uow()))


def run_machine(database_url: str) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    runner = Runner(database_url)
    WalletMachine.runner = runner
    try:
        run_state_machine_as_test(
            WalletMachine,
            settings=settings(
                max_examples=12,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            ),
        )
    finally:
        runner.close()


async def test_the_wallet_keeps_every_money_rule_under_random_operations(
    database_url: str, wallet_app: object
) -> None:
    await asyncio.to_thread(run_machine, database_url)
