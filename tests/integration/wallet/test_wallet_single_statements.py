"""The single-statement unit of work on the real PostgreSQL: the hot path borrows one
pooled connection and runs on its asyncpg driver, and every connection it borrows goes
back to the pool, whatever the use case answered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.wallet import handlers
from services.wallet.domain import commands
from services.wallet.storage.unit_of_work import UnitOfWork
from tests.integration.wallet.conftest import Wallet
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket


async def test_every_connection_the_hot_path_borrows_goes_back_to_the_pool(
    wallet: Wallet, engine: AsyncEngine, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account = await wallet.open_funded(credit=100)

    def uow() -> UnitOfWork:
        return uow_at(timedelta())

    async def hold(n: int) -> str:
        try:
            placed = await handlers.place_hold(
                commands.PlaceHold(account, Bucket.CREDIT, 10, f"req-pool-{n % 15}-{account}"),
                uow(),
            )
        except DomainError as error:
            return error.reason.value
        return str(placed.hold_id)

    # 15 request ids sent twice each at once (replays and key races), 10 of them fit.
    outcomes = await asyncio.gather(*(hold(n) for n in range(30)))
    placed = {o for o in outcomes if o != Reason.INSUFFICIENT_BALANCE.value}
    assert len(placed) == 10
    assert outcomes.count(Reason.INSUFFICIENT_BALANCE.value) == 10
    [first, *others] = sorted(placed)
    await handlers.settle_hold(commands.SettleHold(first, 3), uow())
    # A replay, a refusal and an unknown hold each explain themselves with a fresh read.
    await handlers.settle_hold(commands.SettleHold(first, 3), uow())
    with pytest.raises(DomainError):
        await handlers.release_hold(commands.ReleaseHold(first), uow())
    with pytest.raises(DomainError):
        await handlers.settle_hold(commands.SettleHold(str(uuid.uuid4()), 1), uow())
    await asyncio.gather(*(handlers.release_hold(commands.ReleaseHold(h), uow()) for h in others))

    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    balance = await wallet.balance(account)
    assert (balance.posted_micros, balance.held_micros) == (97, 0)


async def test_a_single_statement_use_case_can_not_open_a_transaction_on_the_side(
    uow_at: Callable[[timedelta], UnitOfWork], engine: AsyncEngine
) -> None:
    uow = uow_at(timedelta())
    async with uow:
        await uow.single_statements()
        with pytest.raises(RuntimeError, match="single_statements"):
            await uow.wallet.balances("anyone")
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
