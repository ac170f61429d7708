"""One transaction per use case: rolls back unless the handler commits."""

from __future__ import annotations

import abc
from collections.abc import Callable
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .repository import OrderRepository, SqlAlchemyOrderRepository


class UnitOfWork(abc.ABC):
    orders: OrderRepository

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
    """A session per `async with`; `on_events_committed` runs after a commit that wrote
    outbox events (it wakes the relay, so events leave within milliseconds)."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        on_events_committed: Callable[[], None] | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._on_events_committed = on_events_committed
        self._session: AsyncSession | None = None
        self._repo: SqlAlchemyOrderRepository | None = None

    async def __aenter__(self) -> Self:
        self._session = self._session_factory()
        self._repo = SqlAlchemyOrderRepository(self._session)
        self.orders = self._repo
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.rollback()
        finally:
            if self._session is not None:
                await self._session.close()
            self._session = None

    async def commit(self) -> None:
        assert self._session is not None and self._repo is not None
        await self._session.commit()
        if self._repo.wrote_events:
            self._repo.wrote_events = False
            if self._on_events_committed is not None:
                self._on_events_committed()

    async def rollback(self) -> None:
        if self._session is not None:
            await self._session.rollback()
