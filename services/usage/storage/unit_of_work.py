"""One transaction per use case: rolls back unless the handler commits; recording
receipts that touch nothing else runs as single statements (see `single_statements`)."""

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

    async def single_statements(self) -> None:
        """Declare, first thing in `async with uow`, that every statement of this use
        case stands alone (recording receipts of no run: one insert, then reading
        what a replay conflicts with). Each then commits on its own, on the driver:
        no BEGIN and COMMIT round trips. A fake keeps its transaction."""


class SqlAlchemyUnitOfWork(base.SqlAlchemyUnitOfWork, UnitOfWork):
    def bind(self, session: AsyncSession) -> None:
        self.receipts = SqlAlchemyReceiptRepository(session)
        self.runs = SqlAlchemyRunRepository(session)

    async def single_statements(self) -> None:
        assert self._session is not None, "single_statements() comes inside `async with uow`"
        self.receipts = SqlAlchemyReceiptRepository(self._session, await self._borrow_driver())

    async def commit(self) -> None:
        """Commit the session's transaction; single statements committed themselves."""
        if self._pooled is None:
            await super().commit()
