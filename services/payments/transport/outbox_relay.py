"""The outbox relay: moves committed order events from `payments.outbox` to JetStream.

At-least-once: a row is marked published only after JetStream acknowledged it, in the
same transaction that locked it (`FOR UPDATE SKIP LOCKED`, so two relays never send
the same batch at once). A crash between the publish and the commit sends the event
again on the next round; the stream drops the copy by its `Nats-Msg-Id` (the event id)
within its duplicate window, so consumers see it once.

Each publish is a PRODUCER span in the trace of the call that wrote the event (its
`traceparent` is stored with the row), and the message carries that span's context,
so the wallet's credit joins the same trace. The relay also samples the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from opentelemetry import trace
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payments import metrics
from services.payments.storage.tables import outbox
from tokenforge.runtime.nats import (
    context_from_headers,
    ensure_payments_stream,
    order_origin_links,
    trace_headers,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

BATCH = 100
POLL_INTERVAL_S = 0.5
PUBLISH_TIMEOUT_S = 5.0
BACKLOG_SAMPLE_S = 1.0


class Publisher(Protocol):
    """The part of nats.js.JetStreamContext the relay uses."""

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> Any: ...


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        js: Publisher,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        batch: int = BATCH,
    ) -> None:
        self._engine = engine
        self._js = js
        self._poll_interval_s = poll_interval_s
        self._batch = batch
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a commit that wrote events: publish them now, not at the next poll."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """One round: publish up to a batch of unpublished events; returns how many left."""
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(
                        outbox.c.event_id,
                        outbox.c.order_id,
                        outbox.c.subject,
                        outbox.c.payload,
                        outbox.c.headers,
                    )
                    .where(outbox.c.published_at.is_(None))
                    .order_by(outbox.c.created_at, outbox.c.event_id)
                    .limit(self._batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            sent: list[str] = []
            for row in rows:
                event_id = str(row.event_id)
                with tracer.start_as_current_span(
                    f"publish {row.subject}",
                    context=context_from_headers(row.headers),
                    kind=trace.SpanKind.PRODUCER,
                    links=order_origin_links(row.headers),
                    attributes={
                        "messaging.system": "nats",
                        "messaging.destination.name": row.subject,
                        "messaging.message.id": event_id,
                        "tokenforge.order_id": str(row.order_id),
                    },
                ):
                    headers = trace_headers({**(row.headers or {}), "Nats-Msg-Id": event_id})
                    try:
                        await self._js.publish(
                            row.subject, row.payload, timeout=PUBLISH_TIMEOUT_S, headers=headers
                        )
                    except Exception as error:  # any failure: this row and later ones wait
                        log.warning(
                            "outbox event %s not published (%s); will retry", event_id, error
                        )
                        break
                sent.append(event_id)
            if sent:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.event_id.in_(sent))
                    .values(published_at=func.now())
                )
        metrics.OUTBOX_PUBLISHED.inc(len(sent))
        return len(sent)

    async def sample_backlog(self) -> int:
        """Count the unpublished events (the partial index keeps this cheap)."""
        async with self._engine.connect() as conn:
            backlog = int(
                (
                    await conn.execute(select(func.count()).where(outbox.c.published_at.is_(None)))
                ).scalar_one()
            )
        metrics.OUTBOX_BACKLOG.set(backlog)
        return backlog

    async def run(self) -> None:
        """Publish forever: right after each commit that wrote events, and every poll."""
        sampled_at = 0.0
        while True:
            try:
                sent = await self.publish_pending()
                if time.monotonic() - sampled_at >= BACKLOG_SAMPLE_S:
                    sampled_at = time.monotonic()
                    await self.sample_backlog()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay round failed; retrying")
                sent = 0
            if sent >= self._batch:
                continue  # a full batch: there may be more waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            self._wake.clear()


async def start_relay(
    engine: AsyncEngine, js: Any, replicas: int = 1
) -> tuple[OutboxRelay, asyncio.Task[None]]:
    """Ensure the PAYMENTS stream exists with `replicas` copies, then run the relay in
    the background."""
    await ensure_payments_stream(js, replicas)
    relay = OutboxRelay(engine, js)
    task = asyncio.create_task(relay.run(), name="payments-outbox-relay")
    return relay, task
