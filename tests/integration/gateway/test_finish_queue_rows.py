"""The finish queue's rows on the real PostgreSQL, on a database of their own (no
gateway's relay of the session picks them up): which rows a relay round sees, and what
a delivery, a refusal and the count do to them (services/gateway/storage/finish_queue.py
runs these as fixed statements on the driver)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway import app
from services.gateway.storage.finish_queue import ORPHAN_AFTER_S, PART, RELEASE, FinishQueue
from tests.databases import new_database
from tokenforge.runtime.db import borrowed_driver, create_engine


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    url = await new_database(database_url, "gw_queue")
    await asyncio.to_thread(app.migrate, url)
    engine = create_engine(url, pool_size=2)
    yield engine
    await engine.dispose()


async def aged(engine: AsyncEngine, request_id: str, seconds: float) -> None:
    """The row as if queued `seconds` ago."""
    async with borrowed_driver(engine) as conn:
        await conn.execute(
            "UPDATE gateway.finish_queue SET queued_at = $2 WHERE request_id = $1",
            request_id,
            datetime.now(UTC) - timedelta(seconds=seconds),
        )


async def test_a_round_sees_its_own_rows_unowned_rows_and_orphans_oldest_first(
    engine: AsyncEngine,
) -> None:
    mine, other = FinishQueue(engine, owner="replica-a"), FinishQueue(engine, owner="replica-b")
    unowned = FinishQueue(engine)
    await mine.put("r-mine-1", b"m1", account_id="acct-1", hold_id="hold-1", finish=PART)
    await other.put("r-other-fresh", b"of", account_id="acct-1", hold_id="hold-1", finish=PART)
    await other.put("r-other-old", b"oo", account_id="acct-2", hold_id="hold-2", finish=RELEASE)
    await unowned.put("r-unowned", b"un", account_id="acct-2", traceparent="00-ab-cd-01")
    await mine.put("r-mine-2", b"m2", account_id="acct-1", hold_id="hold-1", finish=PART)
    await aged(engine, "r-other-old", ORPHAN_AFTER_S + 1)

    seen = await mine.waiting(10)
    # The orphan first (queued longest ago), then in the order queued; another
    # replica's fresh row is its own relay's.
    assert [w.request_id for w in seen] == ["r-other-old", "r-mine-1", "r-unowned", "r-mine-2"]
    by_id = {w.request_id: w for w in seen}
    assert (by_id["r-mine-1"].receipt, by_id["r-mine-1"].finish) == (b"m1", PART)
    assert (by_id["r-unowned"].finish, by_id["r-unowned"].traceparent) == ("", "00-ab-cd-01")
    assert by_id["r-other-old"].attempts == 0
    assert [w.request_id for w in await mine.waiting(2)] == ["r-other-old", "r-mine-1"]
    # A queue of no replica sees every row; a read or a budget sees every replica's.
    assert len(await unowned.waiting(10)) == 5
    assert {w.request_id for w in await mine.waiting(10, account_id="acct-1")} == {
        "r-mine-1",
        "r-other-fresh",
        "r-mine-2",
    }
    assert [w.request_id for w in await mine.waiting(10, hold_id="hold-2")] == ["r-other-old"]
    assert await mine.count() == 5


async def test_delivered_rows_go_and_a_refused_row_waits_for_an_operator(
    engine: AsyncEngine,
) -> None:
    queue = FinishQueue(engine, owner="replica-a")
    for n in range(4):
        await queue.put(f"r-{n}", b"x", account_id="acct-1", hold_id="hold-1", finish=PART)
    await queue.put("r-0", b"second put", account_id="acct-1")  # the first is kept

    await queue.delivered(["r-0", "r-2", "r-unknown"])
    await queue.delivered([])
    assert [w.request_id for w in await queue.waiting(10)] == ["r-1", "r-3"]

    await queue.refused("r-1", "HOLD_NOT_OPEN: gone")
    assert [w.request_id for w in await queue.waiting(10)] == ["r-3"]
    assert [w.request_id for w in await queue.waiting(10, hold_id="hold-1")] == ["r-3"]
    assert await queue.count() == 2  # the refused row stays, counted
    [refused] = [row for row in await queue.overview(10) if row["refused"]]
    assert (refused["request_id"], refused["attempts"]) == ("r-1", 1)
    assert refused["refused"] == "HOLD_NOT_OPEN: gone"
