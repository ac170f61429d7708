"""The unit of work every service uses: one transaction per use case, rolled back
unless the handler commits, with the clock its rules read (injected in tests).

A service subclasses `UnitOfWork` to name its repositories and
`SqlAlchemyUnitOfWork` to bind them to the session (`bind`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


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

    @abc.abstractmethod
    def bind(self, session: AsyncSession) -> None:
        """Attach this service's repositories to the session."""

    async def __aenter__(self) -> Self:
        self._session = self._session_factory()
        await self._session.begin()
        self.bind(self._session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
