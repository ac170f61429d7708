"""Idempotency records for POST requests carrying `Idempotency-Key`.

The first request with a key claims it (`running`); when it ends, its answer is
stored (`done`). A repeat within the window with the same body gets the stored
answer; while the first still runs, or with another body, it is refused. Answers
that charged nothing and may succeed later (5xx) give the key back.

A running claim holds its key for `LEASE` at a time, renewed by the gateway process
that runs the request (`keep_leases`). A claim whose lease lapsed belongs to a gateway
that stopped mid-request (SIGKILL, a crash): a repeat finds it `abandoned` (the
request's answer was never kept) instead of "still running" for the whole window.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.storage.tables import idempotency_records as t

log = logging.getLogger("tokenforge.gateway.idempotency")

WINDOW = timedelta(hours=24)
# A running claim holds its key this long unless renewed; renewed a third of it apart.
LEASE = timedelta(seconds=30)
# A running claim written before leases existed (no lease_until) lapses this long after
# it was made.
LEGACY_LEASE = timedelta(minutes=10)


def digest(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Stored:
    state: str
    body_digest: str
    request_id: str
    status_code: int | None
    body: bytes | None
    headers: dict[str, str] | None


class IdempotencyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # The request ids whose running claims this process holds (and renews).
        self.held: set[str] = set()

    async def claim(self, api_key: str, key: str, body: bytes, request_id: str) -> Stored | None:
        """Claim the key for this request (None), or answer the record that holds it."""
        now = datetime.now(UTC)
        key_digest = digest(api_key)
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(t).where(
                    and_(
                        t.c.key_digest == key_digest,
                        t.c.idempotency_key == key,
                        t.c.created_at < now - WINDOW,
                    )
                )
            )
            inserted = await conn.execute(
                insert(t)
                .values(
                    key_digest=key_digest,
                    idempotency_key=key,
                    body_digest=digest(body),
                    request_id=request_id,
                    state="running",
                    created_at=now,
                    lease_until=now + LEASE,
                )
                .on_conflict_do_nothing()
                .returning(t.c.request_id)
            )
            if inserted.first() is not None:
                self.held.add(request_id)
                return None
            row = (
                await conn.execute(
                    select(t).where(and_(t.c.key_digest == key_digest, t.c.idempotency_key == key))
                )
            ).one()
        state = row.state
        if state == "running" and (row.lease_until or row.created_at + LEGACY_LEASE) < now:
            state = "abandoned"  # its gateway stopped mid-request: nobody renews it
        return Stored(
            state, row.body_digest, row.request_id, row.status_code, row.body, row.headers
        )

    def let_go(self, request_id: str) -> None:
        """The request ended (its answer stored or its key given back): no more renewals."""
        self.held.discard(request_id)

    async def renew(self) -> None:
        """Extend the lease of every running claim this process holds."""
        if not self.held:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t)
                .where(and_(t.c.request_id.in_(sorted(self.held)), t.c.state == "running"))
                .values(lease_until=datetime.now(UTC) + LEASE)
            )

    async def keep_leases(self) -> None:
        """Renew this process's claims a third of a lease apart, until cancelled."""
        while True:
            await asyncio.sleep(LEASE.total_seconds() / 3)
            try:
                await self.renew()
            except Exception as error:  # noqa: BLE001 - tried again next round
                log.warning("idempotency leases not renewed (%r)", error)

    async def complete(
        self, api_key: str, key: str, status_code: int, body: bytes, headers: dict[str, str]
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t)
                .where(and_(t.c.key_digest == digest(api_key), t.c.idempotency_key == key))
                .values(state="done", status_code=status_code, body=body, headers=headers)
            )

    async def give_back(self, api_key: str, key: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(t).where(and_(t.c.key_digest == digest(api_key), t.c.idempotency_key == key))
            )
