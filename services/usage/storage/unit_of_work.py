"""One transaction per use case: rolls back unless the handler commits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.usage.storage.repository import (
    ReceiptRepository,
    RunRepository,
    SqlAlchemyReceiptRepository,
    SqlAlchemyRunRepository,
)
from tokenforge.runtime import unit_of_work as base
from tokenforge.runtime.unit_of_work import utcnow

__all__ = ["SqlAlchemyUnitOfWork", "UnitOfWork", "utcnow"]


class UnitOfWork(base.UnitOfWork):
    receipts: ReceiptRepository
    runs: RunRepository


class SqlAlchemyUnitOfWork(base.SqlAlchemyUnitOfWork, UnitOfWork):
    def bind(self, session: AsyncSession) -> None:
        self.receipts = SqlAlchemyReceiptRepository(session)
        self.runs = SqlAlchemyRunRepository(session)
