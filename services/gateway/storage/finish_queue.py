"""The finish queue: requests' finishes (the wallet command left to do with each
request's hold, then its receipt) that wait for the relay, in the gateway's own schema.

Two kinds of rows, one relay (`services.gateway.relay`):

- **A receipt usage could not take.** A request on a run (and a finish this queue
  could not take) is settled on its path, then its receipt is recorded. When the usage
  service cannot be reached then (after the client's retries), the receipt is not lost
  and the client is not told that nothing was charged: the gateway keeps the receipt
  here and answers the request (its receipt is durably queued, as docs/ARCHITECTURE.md
  allows).
- **A request's finish** (`finish`): every request (but a run's) ends by queueing its
  receipt here with what is still to be done with its hold: `part` for a request drawn
  from a budget (see services/gateway/domain/budgets.py: its charge is its own part of
  the budget's hold), `settle` or `release` for a request's own hold. The answer names
  the ledger entry id, which the wallet derives from the hold (and the request, for a
  part: `tokenforge.holds`); the relay does the wallet's part, then records the
  receipt.

A request id is queued once; capturing a part and recording a receipt are idempotent
on the wallet's and usage's side, so a delivery repeated after a crash (or by two
replicas' relays) answers the first. Each replica's relay delivers its own rows at
once and another replica's rows once they have waited `ORPHAN_AFTER_S` (their replica
may be gone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.storage.tables import finish_queue as t
from tokenforge.runtime.batching import Batcher
from tokenforge.runtime.db import borrowed_driver

ORPHAN_AFTER_S = 5.0

_COLUMNS = "(request_id, receipt, queued_at, account_id, hold_id, finish, owner, traceparent)"
_PUT_SQL = (
    f"INSERT INTO gateway.finish_queue {_COLUMNS} "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (request_id) DO NOTHING"
)
# Many rows in one statement (one commit for all).
_PUT_MANY_SQL = (
    f"INSERT INTO gateway.finish_queue {_COLUMNS} "
    "SELECT * FROM unnest($1::text[], $2::bytea[], $3::timestamptz[], $4::text[], "
    "$5::text[], $6::text[], $7::text[], $8::text[]) ON CONFLICT (request_id) DO NOTHING"
)

# The relay's statements run every round, each a statement of its own on the driver
# (borrowed_driver): fixed text, prepared once per connection, no transaction around it.
# Measured: about a tenth of the CPU of the same through SQLAlchemy's Core and a
# transaction (docs/PERFORMANCE.md). The order is the oldest first; refused rows
# (`last_error`) wait for an operator.
_WAITING = (
    "SELECT request_id, receipt, attempts, finish, traceparent FROM gateway.finish_queue "
    "WHERE last_error IS NULL AND {} ORDER BY queued_at, request_id LIMIT ${}"
)
_WAITING_OF_HOLD_SQL = _WAITING.format("hold_id = $1", 2)
_WAITING_OF_ACCOUNT_SQL = _WAITING.format("account_id = $1", 2)
# This replica's rows, rows of no replica, and other replicas' once orphaned.
_WAITING_MINE_SQL = _WAITING.format("(owner IS NULL OR owner = $1 OR queued_at < $2)", 3)
_WAITING_ALL_SQL = _WAITING.format("TRUE", 1)
_DELIVERED_SQL = "DELETE FROM gateway.finish_queue WHERE request_id = ANY($1::text[])"
_REFUSED_SQL = (
    "UPDATE gateway.finish_queue SET attempts = attempts + 1, last_error = $2 WHERE request_id = $1"
)
_COUNT_SQL = "SELECT count(*) FROM gateway.finish_queue"

# What is left to do with a queued receipt's hold (`Waiting.finish`).
PART, SETTLE, RELEASE = "part", "settle", "release"

Row = tuple[str, bytes, datetime, str | None, str | None, str | None, str | None, str | None]


@dataclass(frozen=True)
class Waiting:
    request_id: str
    receipt: bytes
    attempts: int
    # PART, SETTLE, RELEASE, or "" (the receipt only).
    finish: str = ""
    # The request's span, W3C `traceparent` ("" when unknown).
    traceparent: str = ""


class FinishQueue:
    def __init__(self, engine: AsyncEngine, owner: str = "") -> None:
        self.engine = engine
        self.owner = owner
        # Set once something was queued: the relay wakes up.
        self.queued = asyncio.Event()
        # Puts that arrive together commit together (one statement, one commit).
        self._puts: Batcher[Row, None] = Batcher(
            self._put_one, self._put_many, name="gateway.finish_queue.put"
        )

    async def put(
        self,
        request_id: str,
        receipt: bytes,
        *,
        account_id: str = "",
        hold_id: str = "",
        finish: str = "",
        traceparent: str = "",
    ) -> None:
        """Keep the receipt (a second put of the request id keeps the first): one
        statement that commits on its own, on the request's path; puts made at the
        same time share one statement."""
        row = (
            request_id,
            receipt,
            datetime.now(UTC),
            account_id or None,
            hold_id or None,
            finish or None,
            self.owner or None,
            traceparent or None,
        )
        await self._puts.submit(row)
        self.queued.set()

    async def _put_one(self, row: Row) -> None:
        async with borrowed_driver(self.engine) as conn:
            await conn.execute(_PUT_SQL, *row)

    async def _put_many(self, rows: Sequence[Row]) -> list[None]:
        columns = [list(column) for column in zip(*rows, strict=True)]
        async with borrowed_driver(self.engine) as conn:
            await conn.execute(_PUT_MANY_SQL, *columns)
        return [None] * len(rows)

    async def waiting(
        self, limit: int, *, account_id: str = "", hold_id: str = ""
    ) -> list[Waiting]:
        """The oldest waiting rows first (not those refused: see `refused`): this
        replica's, and other replicas' that waited `ORPHAN_AFTER_S`; with `account_id`
        or `hold_id`, every replica's rows of that account or hold (a read that must see
        them, a budget about to close)."""
        args: tuple[Any, ...]
        if hold_id:
            sql, args = _WAITING_OF_HOLD_SQL, (hold_id, limit)
        elif account_id:
            sql, args = _WAITING_OF_ACCOUNT_SQL, (account_id, limit)
        elif self.owner:
            orphaned = datetime.now(UTC) - timedelta(seconds=ORPHAN_AFTER_S)
            sql, args = _WAITING_MINE_SQL, (self.owner, orphaned, limit)
        else:
            sql, args = _WAITING_ALL_SQL, (limit,)
        async with borrowed_driver(self.engine) as conn:
            rows = await conn.fetch(sql, *args)
        return [Waiting(r[0], r[1], r[2], r[3] or "", r[4] or "") for r in rows]

    async def delivered(self, request_ids: list[str]) -> None:
        if request_ids:
            async with borrowed_driver(self.engine) as conn:
                await conn.execute(_DELIVERED_SQL, request_ids)

    async def refused(self, request_id: str, error: str) -> None:
        """Usage (or the wallet) answered but refused it: kept, with the reason, for an
        operator, and no longer relayed."""
        async with borrowed_driver(self.engine) as conn:
            await conn.execute(_REFUSED_SQL, request_id, error)

    async def overview(self, limit: int) -> list[dict[str, Any]]:
        """The oldest rows of every replica, refused ones included, for an operator."""
        columns = (
            t.c.request_id,
            t.c.account_id,
            t.c.finish,
            t.c.attempts,
            t.c.last_error,
            t.c.queued_at,
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(*columns).order_by(t.c.queued_at, t.c.request_id).limit(limit)
            )
            return [
                {
                    "request_id": r.request_id,
                    "account_id": r.account_id,
                    "finish": r.finish or "receipt",
                    "attempts": r.attempts,
                    "refused": r.last_error,
                    "queued_at": r.queued_at.isoformat(),
                }
                for r in rows
            ]

    async def count(self) -> int:
        async with borrowed_driver(self.engine) as conn:
            return int(await conn.fetchval(_COUNT_SQL))
