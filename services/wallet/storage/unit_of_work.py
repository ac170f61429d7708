"""One transaction per use case: rolls back unless the handler commits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.wallet.storage.repository import SqlAlchemyWalletRepository, WalletRepository
from tokenforge.runtime import unit_of_work as base
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


class SqlAlchemyUnitOfWork(base.SqlAlchemyUnitOfWork, UnitOfWork):
    def bind(self, session: AsyncSession) -> None:
        self.wallet = SqlAlchemyWalletRepository(session)

    async def single_statements(self) -> None:
        assert self._session is not None, "single_statements() outside `async with uow`"
        await self._session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
