"""One transaction per use case: rolls back unless the handler commits.

The hot path (place, settle, release, capture a part) declares `single_statements()`:
its unit of work then opens no session at all. It borrows one pooled connection and
runs each statement on the connection's asyncpg driver in autocommit, which costs a
fraction of SQLAlchemy's session and execution (docs/PERFORMANCE.md, "Wallet").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Self

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.wallet.storage.repository import (
    DuplicateKey,
    SqlAlchemyWalletRepository,
    WalletRepository,
)
from tokenforge.errors import DomainError
from tokenforge.runtime import unit_of_work as base
from tokenforge.runtime.db import return_to_pool
from tokenforge.runtime.unit_of_work import utcnow

__all__ = ["SqlAlchemyUnitOfWork", "UnitOfWork", "utcnow"]


class UnitOfWork(base.UnitOfWork):
    wallet: WalletRepository

    async def single_statements(self) -> None:
        """Declare, first thing in `async with uow`, that every write of this use case
        is one self-contained statement (the hot path: place, settle, release). The
        database may then commit each statement on its own: no BEGIN and COMMIT round
        trips, and no row lock held while the client thinks. A fake keeps its
        transaction."""

    @asynccontextmanager
    async def shared_transaction(
        self, lock_timeout_ms: int
    ) -> AsyncIterator[Callable[[], UnitOfWork] | None]:
        """One transaction on one connection for several single-statement use cases
        run one after the other (a batch): yields a factory of units of work whose
        statements run in it, and commits when the block ends without error (rolls
        back otherwise). A lock wait longer than `lock_timeout_ms` fails the
        transaction instead of stalling it. Yields None where there is no such thing
        (the fakes): the caller then runs each use case on its own."""
        yield None


def _no_session() -> AsyncSession:
    raise RuntimeError(
        "A single-statement use case runs on its one pooled connection; this repository "
        "method needs a session (a transaction): use a unit of work without "
        "single_statements()."
    )


class SqlAlchemyUnitOfWork(base.SqlAlchemyUnitOfWork, UnitOfWork):
    """The session opens on the repository's first use of it (a use case that never
    touches the database never builds one); `single_statements()` uses none."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        clock: Callable[[], datetime] = utcnow,
        shared: asyncpg.Connection | None = None,
    ) -> None:
        super().__init__(session_factory, clock)
        self._engine: AsyncEngine = session_factory.kw["bind"]
        # A batch's connection, inside its transaction (see shared_transaction).
        self._shared = shared

    def bind(self, session: AsyncSession) -> None:
        self.wallet = SqlAlchemyWalletRepository(lambda: session)

    def _opened_session(self) -> AsyncSession:
        if self._session is None:
            # It begins its transaction with its first statement (autobegin).
            self._session = self._session_factory()
        return self._session

    async def __aenter__(self) -> Self:
        self._session = None
        self._pooled = None
        self.wallet = SqlAlchemyWalletRepository(self._opened_session)
        return self

    async def single_statements(self) -> None:
        assert self._session is None and self._pooled is None, (
            "single_statements() comes first in `async with uow`"
        )
        if self._shared is not None:
            self.wallet = SqlAlchemyWalletRepository(_no_session, self._shared)
            return
        self.wallet = SqlAlchemyWalletRepository(_no_session, await self._borrow_driver())

    @asynccontextmanager
    async def shared_transaction(
        self, lock_timeout_ms: int
    ) -> AsyncIterator[Callable[[], UnitOfWork] | None]:
        pooled = await self._engine.raw_connection()
        healthy = False
        try:
            driver: asyncpg.Connection = pooled.driver_connection
            transaction = driver.transaction()
            await transaction.start()
            try:
                await driver.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                yield lambda: SqlAlchemyUnitOfWork(self._session_factory, self._clock, driver)
                # A statement that failed inside a use case which then went on (a
                # caught error) leaves the transaction aborted, and PostgreSQL answers
                # COMMIT with a rollback, not an error: ask first, so it raises.
                await driver.fetchval("SELECT 1")
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()
            healthy = True
        except (DomainError, asyncpg.PostgresError):
            healthy = True  # the database answered: the connection is sound
            raise
        finally:
            await return_to_pool(pooled, healthy=healthy)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Each single statement committed on its own; a replayed key is an answer too.
        await self._return_driver(exc, sound=(DuplicateKey,))
        await super().__aexit__(exc_type, exc, tb)

    async def commit(self) -> None:
        """Commit the session's transaction; a single-statement use case has none (each
        statement committed itself)."""
        if self._session is not None:
            await self._session.commit()
