"""One transaction per use case: rolls back unless the handler commits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.routing.storage.repository import (
    AccessRepository,
    CatalogRepository,
    LimitsRepository,
    SqlAlchemyAccessRepository,
    SqlAlchemyCatalogRepository,
    SqlAlchemyLimitsRepository,
)
from tokenforge.runtime import unit_of_work as base
from tokenforge.runtime.unit_of_work import utcnow

__all__ = ["SqlAlchemyUnitOfWork", "UnitOfWork", "utcnow"]


class UnitOfWork(base.UnitOfWork):
    access: AccessRepository
    limits: LimitsRepository
    catalogs: CatalogRepository


class SqlAlchemyUnitOfWork(base.SqlAlchemyUnitOfWork, UnitOfWork):
    def bind(self, session: AsyncSession) -> None:
        self.access = SqlAlchemyAccessRepository(session)
        self.limits = SqlAlchemyLimitsRepository(session)
        self.catalogs = SqlAlchemyCatalogRepository(session)
