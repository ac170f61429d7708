"""The outbox relay killed between publishing an event and marking it sent, on 10 of
100 paid orders: every event still reaches the wallet, which credits each order
exactly once (P2). The relay under test runs on a payments database of its own, so
the system's relay cannot help it. A wallet consumer of the test's own (its own
durable, the system's wallet database) credits them, confirming each order with a
payments service on that database; the system's wallet, whose payments knows none of
these orders, refuses them (S1) and credits nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.payments import app as payments_app
from services.payments import handlers
from services.payments.client import PaymentsClient
from services.payments.domain import commands
from services.payments.domain.providers import ProvidersOn
from services.payments.storage.tables import outbox
from services.payments.storage.unit_of_work import SqlAlchemyUnitOfWork
from services.payments.transport.outbox_relay import OutboxRelay
from services.wallet.storage.unit_of_work import SqlAlchemyUnitOfWork as WalletUnitOfWork
from services.wallet.transport.nats_consumer import TopUpConsumer
from tests.e2e.harness import ADMIN, INTERNAL, System
from tokenforge.config import Settings
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tokenforge.money import Bucket
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.db import async_url, create_engine, sessionmaker

SANDBOX_ON = ProvidersOn.configured(sandbox=True, card=False)


class Killed(BaseException):
    """The relay process dying: nothing after this line of its code runs."""


class DiesAfterPublishing:
    """JetStream that publishes, then kills the relay the first time it sends one of
    `doomed` events: the event is out, its row is not marked sent."""

    def __init__(self, js: Any, doomed: set[str]) -> None:
        self.js = js
        self.doomed = set(doomed)
        self.kills = 0

    async def publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> Any:
        ack = await self.js.publish(subject, payload, **kwargs)
        event_id = (kwargs.get("headers") or {}).get("Nats-Msg-Id", "")
        if event_id in self.doomed:
            self.doomed.discard(event_id)
            self.kills += 1
            raise Killed(event_id)
        return ack


@pytest.fixture(scope="module")
async def own_payments_db(database_url: str) -> AsyncIterator[AsyncEngine]:
    name = f"payments_e2e_relay_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(async_url(database_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    await admin.dispose()
    url = make_url(async_url(database_url)).set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(payments_app.migrate, url)
    engine = create_engine(url, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def own_payments_url(own_payments_db: AsyncEngine) -> AsyncIterator[str]:
    """A payments service (no NATS: the test's relay publishes) on that database."""
    url = own_payments_db.url.render_as_string(hide_password=False)
    running = await payments_app.start(
        Settings(database_url=url, internal_token=INTERNAL, admin_token=ADMIN), port=0
    )
    yield running.address
    await running.stop(grace=0.5)


async def credits_of(system: System, accounts: list[str]) -> dict[str, int]:
    """order id -> ledger credits the wallet wrote for it (fewer than 100 rows each)."""
    stub = wallet_pb2_grpc.WalletServiceStub(system.operator.wallet.channel)
    credits: dict[str, int] = {}
    for account_id in accounts:
        page = await system.operator.wallet.call(
            stub.ListLedger, wallet_pb2.ListLedgerRequest(account_id=account_id, page_size=100)
        )
        for entry in page.entries:
            credits[entry.order_id] = credits.get(entry.order_id, 0) + 1
    return credits


async def test_relay_killed_after_publish_on_10_of_100_events_loses_nothing_and_credits_once(
    system: System,
    own_payments_db: AsyncEngine,
    own_payments_url: str,
    nats_url: str,
    database_url: str,
) -> None:
    uow = sessionmaker(own_payments_db)
    accounts = [(await system.new_account(credit=0, routed=0))[0] for _ in range(4)]
    order_ids: list[str] = []
    for i in range(100):
        account_id = accounts[i % len(accounts)]
        order = await handlers.create_top_up(
            commands.CreateTopUp(account_id, Bucket.CREDIT, "sandbox", 100 + i, "USD", f"k{i}"),
            SqlAlchemyUnitOfWork(uow),
            providers=SANDBOX_ON,
        )
        await handlers.simulate_sandbox_outcome(
            commands.SimulateSandboxOutcome(
                account_id, order.order_id, commands.SandboxOutcome.PAY
            ),
            SqlAlchemyUnitOfWork(uow),
            providers=SANDBOX_ON,
        )
        order_ids.append(order.order_id)
    async with own_payments_db.connect() as conn:
        event_ids = [str(e) for e in (await conn.execute(select(outbox.c.event_id))).scalars()]
    doomed = set(event_ids[5::10])
    assert len(doomed) == 10

    nc = await tf_nats.connect(nats_url, "e2e-dying-relay")
    wallet_db = create_engine(database_url, pool_size=5)
    payments = PaymentsClient.connect(own_payments_url, INTERNAL)
    consumer = TopUpConsumer(
        nc,
        lambda: WalletUnitOfWork(sessionmaker(wallet_db)),
        payments,
        durable=f"e2e-relay-{uuid.uuid4().hex[:12]}",
    )
    await consumer.start()
    try:
        js = DiesAfterPublishing(nc.jetstream(), doomed)
        while True:
            relay = OutboxRelay(own_payments_db, js, batch=7)  # a fresh process each time
            try:
                if await relay.publish_pending() == 0:
                    break
            except Killed:
                continue

        async with own_payments_db.connect() as conn:
            unsent = (
                await conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
                )
            ).scalar_one()
        assert js.kills == 10 and unsent == 0

        credits: dict[str, int] = {}
        for _ in range(400):
            credits = await credits_of(system, accounts)
            if len(credits) >= 100:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a double credit would have landed by now
    finally:
        await consumer.stop()
        await payments.close()
        await nc.close()
        await wallet_db.dispose()
    assert await credits_of(system, accounts) == dict.fromkeys(order_ids, 1)
    balances = await system.operator.balances(accounts[0])
    credit = next(b for b in balances if b.bucket == common_pb2.BUCKET_CREDIT)
    assert credit.posted_micros == sum((100 + i) * 10_000 for i in range(0, 100, 4))
