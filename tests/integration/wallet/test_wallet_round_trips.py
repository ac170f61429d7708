"""The hot path's cost on the wire: Hold, Settle and Release are each one database
round trip (one statement that commits itself: no BEGIN, no COMMIT, no pre-ping),
once the statement is prepared on the pooled connection (asyncpg's statement cache
does that on a connection's first use of it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from asyncpg import prepared_stmt

from services.wallet import handlers
from services.wallet.domain import commands
from services.wallet.storage.unit_of_work import UnitOfWork
from tokenforge.money import Bucket

# Set in the test's own task: the in-process wallet server's sweeper and other
# background tasks share the process (and asyncpg) but must not be counted.
_counting: ContextVar[bool] = ContextVar("counting", default=False)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement asyncpg sends for the test's task (prepared executions, simple
    queries, prepares)."""
    sent: list[str] = []

    def spy(cls: Any, name: str) -> None:
        original = getattr(cls, name)

        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            if name != "prepare" and _counting.get():  # prepare: once per connection
                query = args[0] if args and isinstance(args[0], str) else self._query
                sent.append(" ".join(query.split())[:30])
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)

    for name in ("fetch", "fetchrow", "fetchval", "executemany"):
        spy(prepared_stmt.PreparedStatement, name)
    for name in ("execute", "executemany", "prepare", "fetch", "fetchrow", "fetchval"):
        spy(asyncpg.Connection, name)
    return sent


async def test_hold_settle_and_release_are_one_round_trip_each(
    wallet, uow_at: Callable[[timedelta], UnitOfWork], round_trips: list[str]
) -> None:
    account = await wallet.open_funded(credit=10_000_000)
    _counting.set(True)

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
