"""A borrowed connection goes back to the pool cleanly when the pool is full of
returns (tokenforge.runtime.db.borrowed_driver): an overflow connection the pool
cannot keep is closed, not leaked with SQLAlchemy's MissingGreenlet error (seen
in the wallet's logs under the conservation soak)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tokenforge.runtime.db import borrowed_driver, create_engine


async def test_overflow_connections_close_cleanly(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(database_url, pool_size=1)  # one kept, one overflow
    both = asyncio.Barrier(2)

    async def borrow() -> int:
        async with borrowed_driver(engine) as driver:
            await both.wait()  # both connections out at once: one is an overflow
            return int(await driver.fetchval("SELECT 1"))

    caplog.set_level(logging.ERROR)
    try:
        assert await asyncio.gather(borrow(), borrow()) == [1, 1]
        pool = engine.pool
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        assert pool.overflow() <= 0  # type: ignore[attr-defined]
        failed = [r for r in caplog.records if "greenlet" in f"{r.getMessage()} {r.exc_text}"]
        assert not failed, failed[0].exc_text
        async with borrowed_driver(engine) as driver:  # the kept one still works
            assert await driver.fetchval("SELECT 2") == 2
    finally:
        await engine.dispose()


async def test_a_dropped_connection_is_closed(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An error that leaves the connection in an unknown state drops it: closed, with
    no MissingGreenlet, and the pool lends a fresh one next."""
    engine = create_engine(database_url, pool_size=1)
    caplog.set_level(logging.ERROR)
    try:
        with pytest.raises(RuntimeError):
            async with borrowed_driver(engine) as driver:
                first = await driver.fetchval("SELECT pg_backend_pid()")
                raise RuntimeError("the statement was cancelled midway")
        failed = [r for r in caplog.records if "greenlet" in f"{r.getMessage()} {r.exc_text}"]
        assert not failed, failed[0].exc_text
        async with borrowed_driver(engine) as driver:
            assert await driver.fetchval("SELECT pg_backend_pid()") != first
    finally:
        await engine.dispose()
