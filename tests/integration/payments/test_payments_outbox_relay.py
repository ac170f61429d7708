"""The outbox relay on a database of its own (no other relay around): restarts, publish
failures and the wake-up after a commit, against the real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from nats.aio.client import Client
from sqlalchemy import update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.payments import app, handlers
from services.payments.domain.providers import ProvidersOn
from services.payments.storage.tables import outbox
from services.payments.storage.unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork
from services.payments.transport.outbox_relay import OutboxRelay
from tokenforge.config import Settings
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.payments.v1.payments_pb2_grpc import PaymentsServiceStub
from tokenforge.money import Bucket
from tokenforge.runtime.db import async_url, create_engine, sessionmaker
from tokenforge.runtime.grpc_client import Peer

MakeRequest = Callable[..., payments_pb2.CreateTopUpRequest]


@pytest.fixture(scope="module")
async def relay_database_url(database_url: str) -> str:
    """A fresh database with the payments schema, on the session's server."""
    name = f"payments_relay_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(async_url(database_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    await admin.dispose()
    url = make_url(async_url(database_url)).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(app.migrate, url)
    return url


@pytest.fixture(scope="module")
async def relay_db(relay_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(relay_database_url, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture
def relay_outbox(relay_db: AsyncEngine, outbox_reader: Callable[[AsyncEngine], Any]) -> Any:
    return outbox_reader(relay_db)


def units_of_work(
    engine: AsyncEngine, wake: Callable[[], None] | None = None
) -> Callable[[], UnitOfWork]:
    factory = sessionmaker(engine)
    return lambda: SqlAlchemyUnitOfWork(factory, wake)


SANDBOX_ON = ProvidersOn.configured(sandbox=True, card=False)


class FlakyPublisher:
    """JetStream that fails its `fail_on`-th publish (1-based), like a broker blip."""

    def __init__(self, js: Any, fail_on: int) -> None:
        self.js = js
        self.fail_on = fail_on
        self.calls = 0

    async def publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_on:
            raise TimeoutError("nats: timeout")
        return await self.js.publish(subject, payload, **kwargs)


async def paid_orders(uow: Callable[[], UnitOfWork], count: int) -> list[str]:
    """`count` sandbox orders paid through the use cases (their events wait in the outbox)."""
    account_id = f"acct-{uuid.uuid4()}"
    order_ids = []
    for _ in range(count):
        order = await handlers.create_top_up(
            handlers.CreateTopUp(account_id, Bucket.CREDIT, "sandbox", 300, "USD"),
            uow(),
            providers=SANDBOX_ON,
        )
        await handlers.simulate_sandbox_outcome(
            handlers.SimulateSandboxOutcome(
                account_id, order.order_id, handlers.SandboxOutcome.PAY
            ),
            uow(),
            providers=SANDBOX_ON,
        )
        order_ids.append(order.order_id)
    return order_ids


async def test_relay_restart_after_publishing_but_before_marking_leaves_one_message(
    relay_database_url: str,
    relay_db: AsyncEngine,
    relay_outbox: Any,
    nats_urls: dict[str, str],
    payments_nats: Client,
    payments_stream: Any,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    settings = Settings(
        database_url=relay_database_url,
        nats_url=nats_urls["payments"],
        internal_token="t-internal",
        sandbox_provider=True,
    )
    first = await app.start(settings)
    peer = Peer("payments", first.address, "t-internal")
    try:
        stub = PaymentsServiceStub(peer.channel)
        created = await peer.call(stub.CreateTopUp, create_request(account_id))
        order_id = created.top_up.order_id
        await peer.call(
            stub.SimulateSandboxOutcome,
            payments_pb2.SimulateSandboxOutcomeRequest(
                account_id=account_id, order_id=order_id, outcome=payments_pb2.SANDBOX_OUTCOME_PAY
            ),
        )
        await relay_outbox.wait_published({order_id})
    finally:
        await peer.close()
        await first.stop()
    # As if the relay crashed after JetStream acknowledged, before its commit.
    async with relay_db.begin() as conn:
        await conn.execute(
            update(outbox).where(outbox.c.order_id == order_id).values(published_at=None)
        )
    [row] = (await relay_outbox.rows({order_id}))[order_id]
    assert not row.published

    second = await app.start(settings)
    try:
        await relay_outbox.wait_published({order_id})
    finally:
        await second.stop()
    direct = await payments_nats.jetstream().publish(
        row.subject, row.event.SerializeToString(), headers={"Nats-Msg-Id": row.event_id}
    )
    await asyncio.sleep(0.2)
    messages = await payments_stream.messages(order_id)

    assert direct.duplicate is True
    assert len(messages) == 1
    assert messages[0].headers["Nats-Msg-Id"] == row.event_id


async def test_a_failed_publish_leaves_its_row_for_the_next_round(
    relay_db: AsyncEngine,
    relay_outbox: Any,
    payments_nats: Client,
    payments_stream: Any,
) -> None:
    order_ids = await paid_orders(units_of_work(relay_db), 3)
    flaky = FlakyPublisher(payments_nats.jetstream(), fail_on=2)
    relay = OutboxRelay(relay_db, flaky)

    sent_first = await relay.publish_pending()
    after_failure = await relay_outbox.rows(set(order_ids))
    sent_second = await relay.publish_pending()
    stream = await payments_stream.messages_for(set(order_ids))

    assert sent_first == 1 and sent_second == 2
    assert [after_failure[o][0].published for o in order_ids] == [True, False, False]
    assert all(len(stream[o]) == 1 for o in order_ids)
    assert await relay.publish_pending() == 0


async def test_relay_publishes_right_after_a_commit_without_waiting_for_its_poll(
    relay_db: AsyncEngine,
    relay_outbox: Any,
    payments_nats: Client,
) -> None:
    relay = OutboxRelay(relay_db, payments_nats.jetstream(), poll_interval_s=60.0)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.1)  # the relay's first round finds nothing, then sleeps
        order_ids = await paid_orders(units_of_work(relay_db, relay.wake), 1)

        await relay_outbox.wait_published(set(order_ids), timeout=3.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
