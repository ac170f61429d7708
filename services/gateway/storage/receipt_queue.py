"""Receipts that wait for the usage service, in the gateway's own schema.

A request's charge is settled before its receipt is recorded. When the usage service
cannot be reached then (after the client's retries), the receipt is not lost and the
client is not told that nothing was charged: the gateway keeps the receipt here, in
the same durable commit as everything else, answers the request (its receipt is
durably queued, as docs/ARCHITECTURE.md allows), and a relay delivers the waiting
receipts once usage answers again (`handlers.relay_queued_receipts`). A request id
is queued once; recording a receipt is idempotent on usage's side, so a delivery
repeated after a crash answers the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.storage.tables import receipt_queue as t


@dataclass(frozen=True)
class Waiting:
    request_id: str
    receipt: bytes
    attempts: int


class ReceiptQueue:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, request_id: str, receipt: bytes) -> None:
        """Keep the receipt (a second put of the request id keeps the first)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(t)
                .values(request_id=request_id, receipt=receipt, queued_at=datetime.now(UTC))
                .on_conflict_do_nothing()
            )

    async def waiting(self, limit: int) -> list[Waiting]:
        """The oldest waiting receipts first (not those usage refused: see `refused`)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(t.c.request_id, t.c.receipt, t.c.attempts)
                .where(t.c.last_error.is_(None))
                .order_by(t.c.queued_at, t.c.request_id)
                .limit(limit)
            )
            return [Waiting(r.request_id, r.receipt, r.attempts) for r in rows]

    async def delivered(self, request_ids: list[str]) -> None:
        if request_ids:
            async with self.engine.begin() as conn:
                await conn.execute(delete(t).where(t.c.request_id.in_(request_ids)))

    async def refused(self, request_id: str, error: str) -> None:
        """Usage answered but refused it: kept, with the reason, for an operator, and
        no longer relayed."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t)
                .where(t.c.request_id == request_id)
                .values(attempts=t.c.attempts + 1, last_error=error)
            )

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(t))).scalar_one())
