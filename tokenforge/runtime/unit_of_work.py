"""The unit of work every service uses: one transaction per use case, rolled back
unless the handler commits, with the clock its rules read (injected in tests).

A service subclasses `UnitOfWork` to name its repositories and
`SqlAlchemyUnitOfWork` to bind them to the session (`bind`).

A hot use case whose every write is one self-contained statement may instead borrow
a pooled connection's asyncpg driver (`_borrow_driver`) and run its statements there
in autocommit: no BEGIN and COMMIT round trips and none of SQLAlchemy's execution
machinery (docs/PERFORMANCE.md). The connection goes back to the pool when the unit
of work ends, or is dropped when it may be in an unknown state.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tokenforge.errors import DomainError
from tokenforge.runtime.db import give_back


def utcnow() -> datetime:
    return datetime.now(UTC)


class UnitOfWork(abc.ABC):
    """`async with uow:` opens a transaction; leaving without `commit()` rolls it back.

    `now()` is the clock every rule of the use case reads (injected for tests).
    """

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.rollback()

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def rollback(self) -> None: ...


class SqlAlchemyUnitOfWork(UnitOfWork):
    """A session and a transaction per `async with`; subclasses attach repositories."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(clock)
        self._session_factory = session_factory
        self._session: AsyncSession | None = None
        # The pooled connection lent to single statements (see `_borrow_driver`).
        self._pooled: Any = None

    async def _borrow_driver(self) -> asyncpg.Connection:
        """A pooled connection's asyncpg driver, in autocommit, until the unit of work
        ends."""
        assert self._pooled is None, "one borrowed connection per unit of work"
        engine: AsyncEngine = self._session_factory.kw["bind"]
        self._pooled = await engine.raw_connection()
        driver: asyncpg.Connection = self._pooled.driver_connection
        return driver

    async def _return_driver(
        self, exc: BaseException | None, sound: tuple[type[BaseException], ...] = ()
    ) -> None:
        """Back to the pool when the database answered (no error, a refusal, an error
        PostgreSQL raised, or one of `sound`); dropped otherwise (a lost connection, a
        statement cancelled midway): never lent again in an unknown state."""
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            await give_back(pooled, exc, (DomainError, *sound))

    @abc.abstractmethod
    def bind(self, session: AsyncSession) -> None:
        """Attach this service's repositories to the session."""

    async def __aenter__(self) -> Self:
        self._session = self._session_factory()
        self._pooled = None
        await self._session.begin()
        self.bind(self._session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._return_driver(exc)
        session, self._session = self._session, None
        if session is not None:
            try:
                await session.rollback()
            finally:
                await session.close()

    async def commit(self) -> None:
        assert self._session is not None, "commit() outside `async with uow`"
        await self._session.commit()

    async def rollback(self) -> None:
        if self._session is not None:
            await self._session.rollback()
