"""A batch of hot-path items runs in one transaction on the real PostgreSQL (one
commit), with every guard of the unary calls; when that transaction cannot finish
(a row lock held too long elsewhere), nothing of it stays and the items run one by
one with the same answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta

from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.wallet import handlers
from services.wallet.domain import commands
from services.wallet.domain.model import Hold
from services.wallet.storage.unit_of_work import UnitOfWork
from tests.integration.wallet.conftest import Wallet
from tokenforge.errors import DomainError, Reason
from tokenforge.holds import part_entry_id
from tokenforge.money import Bucket


def batches(how: str) -> float:
    return REGISTRY.get_sample_value("tokenforge_wallet_batches_total", {"how": how}) or 0.0


def holds_placed() -> float:
    found = REGISTRY.get_sample_value(
        "tokenforge_wallet_holds_total", {"bucket": "credit", "outcome": "placed"}
    )
    return found or 0.0


async def funded_hold(
    wallet: Wallet, uow_at: Callable[[timedelta], UnitOfWork], tag: str
) -> tuple[str, str, Callable[[], UnitOfWork]]:
    """An account with 1,000 on Credit and a hold of 100 on it (as a run's)."""
    account = await wallet.open_funded(credit=1_000)

    def uow() -> UnitOfWork:
        return uow_at(timedelta())

    hold = await handlers.place_hold(
        commands.PlaceHold(account, Bucket.CREDIT, 100, f"run-{tag}-{account}"), uow()
    )
    return account, str(hold.hold_id), uow


async def test_a_hold_batch_is_one_transaction_and_never_overdraws(
    wallet: Wallet, engine: AsyncEngine, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account = await wallet.open_funded(credit=30)
    before, counted = batches("one_transaction"), holds_placed()
    cmds = [
        commands.PlaceHold(account, Bucket.CREDIT, 1, f"req-tx-{n}-{account}") for n in range(50)
    ]
    # The key of item 0 again: the batch's second item with it replays the first.
    cmds.append(commands.PlaceHold(account, Bucket.CREDIT, 1, f"req-tx-0-{account}"))
    outcomes = await handlers.place_holds(cmds, lambda: uow_at(timedelta()))

    placed = [o for o in outcomes if isinstance(o, Hold)]
    refused = [o for o in outcomes if isinstance(o, DomainError)]
    assert len({h.hold_id for h in placed}) == 30
    assert outcomes[50] == outcomes[0]  # the replay answers the first hold
    assert {e.reason for e in refused} == {Reason.INSUFFICIENT_BALANCE}
    assert len(refused) == 20
    assert batches("one_transaction") == before + 1
    assert holds_placed() == counted + 30  # counted once, after the commit
    async with engine.connect() as conn:
        xids = (
            await conn.execute(
                text("SELECT DISTINCT xmin::text FROM wallet.holds WHERE account_id = :a"),
                {"a": account},
            )
        ).all()
    assert len(xids) == 1  # one transaction wrote every hold
    balance = await wallet.balance(account)
    assert (balance.posted_micros, balance.held_micros) == (30, 30)


async def test_a_settle_batch_charges_once_each_and_answers_replays(
    wallet: Wallet, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account = await wallet.open_funded(credit=100)

    def uow() -> UnitOfWork:
        return uow_at(timedelta())

    holds = await handlers.place_holds(
        [commands.PlaceHold(account, Bucket.CREDIT, 10, f"req-st-{n}-{account}") for n in range(5)],
        uow,
    )
    ids = [str(h.hold_id) for h in holds if isinstance(h, Hold)]
    assert len(ids) == 5
    settles = [commands.SettleHold(h, 4, account_id=account) for h in ids]
    settles.append(commands.SettleHold(ids[0], 4, account_id=account))  # a replay
    settles.append(commands.SettleHold(ids[1], 11, account_id=account))  # above the hold
    before = batches("one_transaction")
    outcomes = await handlers.settle_holds(settles, uow)
    assert batches("one_transaction") == before + 1
    assert not any(isinstance(o, DomainError) for o in outcomes[:6])
    assert outcomes[5] == outcomes[0]
    assert isinstance(outcomes[6], DomainError)
    balance = await wallet.balance(account)
    assert (balance.posted_micros, balance.held_micros) == (80, 0)


async def test_a_part_batch_is_one_transaction_that_captures_each_part_once(
    wallet: Wallet, engine: AsyncEngine, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account, hold_id, uow = await funded_hold(wallet, uow_at, "pt")
    parts = [commands.CapturePart(hold_id, 30, f"req-pt-{n}", account_id=account) for n in range(4)]
    parts.append(commands.CapturePart(hold_id, 30, "req-pt-0", account_id=account))  # a replay
    before = batches("one_transaction")
    outcomes = await handlers.capture_parts(parts, uow)
    assert batches("one_transaction") == before + 1
    captured = [o for o in outcomes[:3] if isinstance(o, handlers.Settled)]
    assert len(captured) == 3
    assert isinstance(outcomes[3], DomainError)
    assert outcomes[3].reason is Reason.SETTLE_ABOVE_HOLD  # 10 left
    assert isinstance(outcomes[4], handlers.Settled)
    assert outcomes[4].entry == captured[0].entry
    assert [c.entry.entry_id for c in captured if c.entry] == [
        part_entry_id(hold_id, f"req-pt-{n}") for n in range(3)
    ]
    async with engine.connect() as conn:
        xids = (
            await conn.execute(
                text("SELECT DISTINCT xmin::text FROM wallet.journal_entries WHERE hold_id = :h"),
                {"h": uuid.UUID(hold_id)},
            )
        ).all()
    assert len(xids) == 1  # one transaction wrote every part
    balance = await wallet.balance(account)
    assert (balance.posted_micros, balance.held_micros) == (910, 10)
    await handlers.release_hold(commands.ReleaseHold(hold_id), uow())


async def test_a_batch_that_waits_too_long_for_a_lock_runs_item_by_item_with_the_same_answers(
    wallet: Wallet, engine: AsyncEngine, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account = await wallet.open_funded(credit=5)
    before = batches("item_by_item"), batches("one_transaction")
    cmds = [
        commands.PlaceHold(account, Bucket.CREDIT, 1, f"req-lk-{n}-{account}") for n in range(8)
    ]
    async with engine.connect() as blocker:
        # Another transaction holds the balance row longer than the batch may wait.
        await blocker.execute(
            text("SELECT 1 FROM wallet.balances WHERE account_id = :a FOR UPDATE"), {"a": account}
        )
        batch = asyncio.create_task(handlers.place_holds(cmds, lambda: uow_at(timedelta())))
        await asyncio.sleep(handlers.BATCH_LOCK_TIMEOUT_MS / 1000 * 2)
        assert not batch.done()  # item by item now, each waiting for the row
        await blocker.rollback()
    outcomes = await batch
    assert sum(isinstance(o, Hold) for o in outcomes) == 5
    assert sum(isinstance(o, DomainError) for o in outcomes) == 3
    assert (batches("item_by_item"), batches("one_transaction")) == (before[0] + 1, before[1])
    balance = await wallet.balance(account)
    assert (balance.posted_micros, balance.held_micros) == (5, 5)


async def test_a_part_batch_that_waits_too_long_for_its_hold_runs_item_by_item_capturing_once(
    wallet: Wallet, engine: AsyncEngine, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account, hold_id, uow = await funded_hold(wallet, uow_at, "lk")
    parts = [commands.CapturePart(hold_id, 30, f"req-lk-{n}") for n in range(4)]
    parts.append(commands.CapturePart(hold_id, 30, "req-lk-0"))  # the same part again
    before = batches("item_by_item"), batches("one_transaction")
    async with engine.connect() as blocker:
        # Another transaction holds the hold's row longer than the batch may wait.
        await blocker.execute(
            text("SELECT 1 FROM wallet.holds WHERE hold_id = :h FOR UPDATE"), {"h": hold_id}
        )
        batch = asyncio.create_task(handlers.capture_parts(parts, uow))
        await asyncio.sleep(handlers.BATCH_LOCK_TIMEOUT_MS / 1000 * 2)
        assert not batch.done()  # item by item now, each waiting for the row
        await blocker.rollback()
    outcomes = await batch
    assert (batches("item_by_item"), batches("one_transaction")) == (before[0] + 1, before[1])
    captured = [o for o in outcomes if isinstance(o, handlers.Settled)]
    refused = [o for o in outcomes if isinstance(o, DomainError)]
    assert {e.reason for e in refused} == {Reason.SETTLE_ABOVE_HOLD}
    # Three parts of 30 fit in 100, each once; the part sent twice names one row.
    rows = {c.entry.entry_id: c.entry.request_id for c in captured if c.entry}
    assert len(rows) == 3
    assert all(e == part_entry_id(hold_id, r) for e, r in rows.items())
    balance = await wallet.balance(account)
    assert (balance.posted_micros, balance.held_micros) == (910, 10)
    await handlers.release_hold(commands.ReleaseHold(hold_id), uow())
