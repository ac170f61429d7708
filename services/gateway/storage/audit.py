"""The operator audit log: one row per action an operator takes through the console,
naming who, what, on what, why and how it ended (services/gateway/storage/tables.py,
`operator_audit`). Rows are only ever added."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.storage.tables import operator_audit as t


@dataclass(frozen=True)
class AuditRow:
    audit_id: int
    at: datetime
    operator: str
    action: str
    subject: str
    reason: str
    outcome: str
    detail: dict[str, Any]
    request_id: str


class AuditLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(
        self,
        *,
        operator: str,
        action: str,
        subject: str,
        reason: str,
        outcome: str,
        detail: dict[str, Any] | None = None,
        request_id: str = "",
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(t).values(
                    at=datetime.now(UTC),
                    operator=operator,
                    action=action,
                    subject=subject,
                    reason=reason,
                    outcome=outcome,
                    detail=detail or {},
                    request_id=request_id,
                )
            )

    async def rows(self, limit: int, before_id: int | None = None) -> list[AuditRow]:
        """Newest first; `before_id` pages back."""
        statement = select(t).order_by(t.c.audit_id.desc()).limit(limit)
        if before_id is not None:
            statement = statement.where(t.c.audit_id < before_id)
        async with self.engine.connect() as conn:
            found = await conn.execute(statement)
            return [AuditRow(**row._mapping) for row in found]
