"""The payments service on the real PostgreSQL and NATS of the session, and ways to
look at what it wrote (its tables) and what it published (the PAYMENTS stream)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payments import app
from services.payments.storage.tables import outbox
from services.payments.storage.unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork
from tests.integration.services import INTERNAL, started
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.db import create_engine, sessionmaker
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService


@pytest.fixture(scope="session")
async def payments_migrated(database_url: str) -> str:
    await asyncio.to_thread(app.migrate, database_url)
    return database_url


@pytest.fixture(scope="session")
async def payments_service(
    payments_migrated: str, nats_urls: dict[str, str]
) -> AsyncIterator[RunningService]:
    async with started(
        app, payments_migrated, nats_url=nats_urls["payments"], sandbox_provider=True
    ) as running:
        yield running


@pytest.fixture(scope="session")
async def payments_peer(payments_service: RunningService) -> AsyncIterator[Peer]:
    peer = Peer("payments", payments_service.address, INTERNAL)
    yield peer
    await peer.close()


@pytest.fixture(scope="session")
def payments_stub(payments_peer: Peer) -> payments_pb2_grpc.PaymentsServiceStub:
    return payments_pb2_grpc.PaymentsServiceStub(payments_peer.channel)


@pytest.fixture(scope="session")
async def payments_db(payments_migrated: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(payments_migrated, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def payments_nats(nats_url: str) -> AsyncIterator[Client]:
    nc = await tf_nats.connect(nats_url, "payments-tests")
    await tf_nats.ensure_payments_stream(nc.jetstream())
    yield nc
    await nc.close()


@pytest.fixture
def account_id() -> str:
    return f"acct-{uuid.uuid4()}"


class PaymentsStream:
    """Reads the PAYMENTS stream from its start, keeping one order's messages."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def messages(self, order_id: str) -> list[Msg]:
        """Every message of the stream about `order_id`, oldest first."""
        return (await self.messages_for({order_id}))[order_id]

    async def messages_for(self, order_ids: set[str]) -> dict[str, list[Msg]]:
        """Every message of the stream about each of `order_ids`, oldest first."""
        sub = await self.js.pull_subscribe(
            tf_nats.PAYMENTS_SUBJECTS,
            stream=tf_nats.PAYMENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
            ),
        )
        found: dict[str, list[Msg]] = {order_id: [] for order_id in order_ids}
        try:
            while True:
                try:
                    batch = await sub.fetch(batch=1000, timeout=0.3)
                except TimeoutError:
                    break
                for msg in batch:
                    order_id = payments_pb2.TopUpEvent.FromString(msg.data).order_id
                    if order_id in found:
                        found[order_id].append(msg)
        finally:
            await sub.unsubscribe()
        return found

    async def wait_for(self, order_id: str, count: int, timeout: float = 5.0) -> list[Msg]:
        """The order's messages once `count` arrived (or whatever is there at the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await self.messages(order_id)
            if len(found) >= count or loop.time() > deadline:
                return found
            await asyncio.sleep(0.1)


@pytest.fixture(scope="session")
def payments_stream(payments_nats: Client) -> PaymentsStream:
    return PaymentsStream(payments_nats.jetstream())


def _create_request(account_id: str, /, **overrides: Any) -> payments_pb2.CreateTopUpRequest:
    fields: dict[str, Any] = {
        "account_id": account_id,
        "bucket": common_pb2.BUCKET_CREDIT,
        "provider": "sandbox",
        "paid_amount_minor": 2500,
        "currency": "USD",
        "idempotency_key": str(uuid.uuid4()),
    }
    fields.update(overrides)
    return payments_pb2.CreateTopUpRequest(**fields)


@pytest.fixture
def create_request() -> Callable[..., payments_pb2.CreateTopUpRequest]:
    """A valid CreateTopUpRequest (25.00 USD for Credit, a fresh key); override any field."""
    return _create_request


@dataclass(frozen=True)
class OutboxRow:
    event_id: str
    subject: str
    event: payments_pb2.TopUpEvent
    headers: dict[str, str]
    published: bool


class PaymentsOutbox:
    """What the service wrote to `payments.outbox`: the truth the stream must match."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def rows(self, order_ids: set[str]) -> dict[str, list[OutboxRow]]:
        """Each order's outbox rows in the order they happened."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(outbox)
                    .where(outbox.c.order_id.in_(list(order_ids)))
                    .order_by(outbox.c.created_at)
                )
            ).all()
        found: dict[str, list[OutboxRow]] = {order_id: [] for order_id in order_ids}
        for row in rows:
            found[str(row.order_id)].append(
                OutboxRow(
                    event_id=str(row.event_id),
                    subject=row.subject,
                    event=payments_pb2.TopUpEvent.FromString(row.payload),
                    headers=dict(row.headers),
                    published=row.published_at is not None,
                )
            )
        return found

    async def wait_published(self, order_ids: set[str], timeout: float = 5.0) -> None:
        """Until every outbox row of these orders is marked published."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            rows = await self.rows(order_ids)
            if all(r.published for rs in rows.values() for r in rs):
                return
            if loop.time() > deadline:
                raise AssertionError(f"outbox rows still unpublished after {timeout}s: {rows}")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def payments_outbox(payments_db: AsyncEngine) -> PaymentsOutbox:
    return PaymentsOutbox(payments_db)


@pytest.fixture(scope="session")
def outbox_reader() -> Callable[[AsyncEngine], PaymentsOutbox]:
    """Reads the outbox of another database (tests that run their own relay)."""
    return PaymentsOutbox


@pytest.fixture(scope="session")
def payments_uow(payments_db: AsyncEngine) -> Callable[[], UnitOfWork]:
    """Units of work on the service's database, to run use cases (the sweeper) directly."""
    factory = sessionmaker(payments_db)
    return lambda: SqlAlchemyUnitOfWork(factory)
