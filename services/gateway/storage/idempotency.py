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
from typing import Any

from sqlalchemy import Row, and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.gateway.storage.tables import idempotency_records as t
from tokenforge.errors import DomainError, Reason

log = logging.getLogger("tokenforge.gateway.idempotency")

WINDOW = timedelta(hours=24)
# A running claim holds its key this long unless renewed; renewed a third of it apart.
LEASE = timedelta(seconds=30)
# A running claim written before leases existed (no lease_until) lapses this long after
# it was made.
LEGACY_LEASE = timedelta(minutes=10)
# A claim that meets a record given back between its insert and its read claims again
# this many times in all.
CLAIM_TRIES = 3


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
        """Claim the key for this request (None), or answer the record that holds it.

        The record that held the key may be given back (deleted) between this claim's
        insert, which found it, and its read: the key is then free, and the claim is
        made again (up to CLAIM_TRIES times, then the client is asked to retry)."""
        key_digest = digest(api_key)
        for _ in range(CLAIM_TRIES):
            now = datetime.now(UTC)
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
                row = await self._holder(conn, key_digest, key)
            if row is not None:
                return _stored(row, now)
        raise DomainError(
            Reason.REQUEST_IN_PROGRESS,
            "Another request with this Idempotency-Key is being taken and given back right "
            "now; nothing was run or charged. Retry in a moment.",
            {"retry_after_s": "1"},
        )

    async def _holder(self, conn: AsyncConnection, key_digest: str, key: str) -> Row[Any] | None:
        """The record holding the key (None once it was given back)."""
        found = await conn.execute(
            select(t).where(and_(t.c.key_digest == key_digest, t.c.idempotency_key == key))
        )
        return found.first()

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


def _stored(row: Row[Any], now: datetime) -> Stored:
    state = row.state
    if state == "running" and (row.lease_until or row.created_at + LEGACY_LEASE) < now:
        state = "abandoned"  # its gateway stopped mid-request: nobody renews it
    return Stored(state, row.body_digest, row.request_id, row.status_code, row.body, row.headers)
