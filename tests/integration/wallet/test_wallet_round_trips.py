"""The hot path's cost on the wire: Hold, Settle and Release are each one database
round trip (one statement that commits itself: no BEGIN, no COMMIT, no pre-ping),
once the statement is prepared on the pooled connection (asyncpg's statement cache
does that on a connection's first use of it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest

from services.wallet import handlers
from services.wallet.domain import commands
from services.wallet.storage.unit_of_work import UnitOfWork
from tests.integration.round_trips import counting, spy_statements
from tokenforge.money import Bucket


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return spy_statements(monkeypatch)


async def test_hold_settle_and_release_are_one_round_trip_each(
    wallet, uow_at: Callable[[timedelta], UnitOfWork], round_trips: list[str]
) -> None:
    account = await wallet.open_funded(credit=10_000_000)
    counting.set(True)

    def uow() -> UnitOfWork:
        return uow_at(timedelta())

    async def pair(n: int) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}
        round_trips.clear()
        hold = await handlers.place_hold(
            commands.PlaceHold(account, Bucket.CREDIT, 3_000, f"rt-{n}-{uuid.uuid4()}"), uow()
        )
        seen["hold"], round_trips[:] = list(round_trips), []
        await handlers.settle_hold(
            commands.SettleHold(str(hold.hold_id), 1_000, account_id=account), uow()
        )
        seen["settle"], round_trips[:] = list(round_trips), []
        other = await handlers.place_hold(
            commands.PlaceHold(account, Bucket.CREDIT, 3_000, f"rt-{n}-{uuid.uuid4()}"), uow()
        )
        round_trips.clear()
        await handlers.release_hold(
            commands.ReleaseHold(str(other.hold_id), account_id=account), uow()
        )
        seen["release"] = list(round_trips)
        return seen

    await pair(0)  # may open a pooled connection (its set-up queries)
    for n in range(1, 4):
        seen = await pair(n)
        assert {name: len(sent) for name, sent in seen.items()} == {
            "hold": 1,
            "settle": 1,
            "release": 1,
        }, seen
    balance = await wallet.balance(account)
    assert (balance.posted_micros, balance.held_micros) == (10_000_000 - 4 * 1_000, 0)
