"""One transaction per use case: rolls back unless the handler commits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.payments.metrics import count_orders
from services.payments.storage.repository import OrderRepository, SqlAlchemyOrderRepository
from tokenforge.runtime import unit_of_work as base
from tokenforge.runtime.unit_of_work import utcnow


class UnitOfWork(base.UnitOfWork):
    orders: OrderRepository


class SqlAlchemyUnitOfWork(base.SqlAlchemyUnitOfWork, UnitOfWork):
    """`on_events_committed` runs after a commit that wrote outbox events (it wakes the
    relay, so events leave within milliseconds)."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        on_events_committed: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(session_factory, clock)
        self._on_events_committed = on_events_committed
        self._repo: SqlAlchemyOrderRepository | None = None

    def bind(self, session: AsyncSession) -> None:
        self._repo = SqlAlchemyOrderRepository(session)
        self.orders = self._repo

    async def commit(self) -> None:
        await super().commit()
        assert self._repo is not None
        count_orders(self._repo.moves)
        self._repo.moves.clear()
        if self._repo.wrote_events:
            self._repo.wrote_events = False
            if self._on_events_committed is not None:
                self._on_events_committed()
