"""Idempotency records for POST requests carrying `Idempotency-Key`.

The first request with a key claims it (`running`); when it ends, its answer is
stored (`done`). A repeat within the window with the same body gets the stored
answer; while the first still runs, or with another body, it is refused. Answers
that charged nothing and may succeed later (5xx) give the key back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway.storage.tables import idempotency_records as t

WINDOW = timedelta(hours=24)


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
                )
                .on_conflict_do_nothing()
                .returning(t.c.request_id)
            )
            if inserted.first() is not None:
                return None
            row = (
                await conn.execute(
                    select(t).where(and_(t.c.key_digest == key_digest, t.c.idempotency_key == key))
                )
            ).one()
        return Stored(
            row.state, row.body_digest, row.request_id, row.status_code, row.body, row.headers
        )

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
