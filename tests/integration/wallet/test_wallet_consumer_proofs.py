"""Issue 4's wallet-side proofs on real PostgreSQL and NATS JetStream (P2): paid
top-up events credit exactly once whatever the duplicates, the missing Nats-Msg-Id
headers and the consumer crashes; balances always equal a plain-Python model. Every
event names a real paid order of the payments service, which the wallet confirms."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass

from nats.aio.msg import Msg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payments.client import PaymentsClient
from services.wallet.domain import commands
from services.wallet.storage.unit_of_work import SqlAlchemyUnitOfWork
from services.wallet.transport.nats_consumer import DURABLE, SUBJECT, TopUpConsumer
from tests.integration.wallet.conftest import INTERNAL
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.db import sessionmaker

BUCKETS = {"credit": common_pb2.BUCKET_CREDIT, "routed": common_pb2.BUCKET_ROUTED}


@dataclass(frozen=True)
class Paid:
    event_id: str
    order_id: str
    account_id: str
    bucket: str
    amount: int

    def payload(self) -> bytes:
        return payments_pb2.TopUpEvent(
            event_id=self.event_id,
            order_id=self.order_id,
            account_id=self.account_id,
            bucket=BUCKETS[self.bucket],
            received_micros=self.amount,
            status=payments_pb2.TOP_UP_STATUS_SUCCEEDED,
        ).SerializeToString()


async def paid_events(payments, rng: random.Random, accounts: list[str], n: int) -> list[Paid]:
    """`n` orders paid in the payments service (sandbox), each with its event."""
    wanted = [
        (rng.choice(accounts), rng.choice(list(BUCKETS)), rng.randint(1, 500)) for _ in range(n)
    ]
    events: list[Paid] = []
    for start in range(0, n, 50):
        orders = await asyncio.gather(
            *(payments.order(a, BUCKETS[b], cents) for a, b, cents in wanted[start : start + 50])
        )
        events += [
            Paid(
                event_id=f"evt-{uuid.uuid4()}",
                order_id=order.order_id,
                account_id=account,
                bucket=bucket,
                amount=order.received_micros,
            )
            for order, (account, bucket, _) in zip(orders, wanted[start : start + 50], strict=True)
        ]
    return events


def model_balances(events: list[Paid]) -> Counter[tuple[str, str]]:
    model: Counter[tuple[str, str]] = Counter()
    for e in events:
        model[(e.account_id, e.bucket)] += e.amount
    return model


async def credits_of(engine: AsyncEngine, events: list[Paid]) -> list[tuple[str, str, str, int]]:
    """(order_id, account_id, bucket, amount) of every top-up credit of these orders."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT e.order_id, e.account_id, e.bucket, p.amount"
                "  FROM wallet.journal_entries e"
                "  JOIN wallet.postings p ON p.entry_id = e.entry_id"
                "   AND p.ledger_account LIKE 'user:%'"
                " WHERE e.kind = 'topup_credit' AND e.order_id = ANY(:orders)"
            ),
            {"orders": [e.order_id for e in events]},
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def assert_balances_match_model(wallet, events: list[Paid]) -> None:
    model = model_balances(events)
    for account in sorted({e.account_id for e in events}):
        response = await wallet.call(
            "GetBalances", wallet_pb2.GetBalancesRequest(account_id=account)
        )
        for name, pb in BUCKETS.items():
            found = next(b for b in response.balances if b.bucket == pb)
            assert found.posted_micros == model[(account, name)], (account, name)
            assert found.held_micros == 0


def assert_exactly_one_credit_each(credits: list[tuple[str, str, str, int]], events: list[Paid]):
    per_order = Counter(order for order, *_ in credits)
    assert len(credits) == len(events)
    assert set(per_order.values()) == {1}
    by_order = {e.order_id: e for e in events}
    for order, account, bucket, amount in credits:
        paid = by_order[order]
        assert (account, bucket, amount) == (paid.account_id, paid.bucket, paid.amount)


async def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not in {seconds} s: {what}")


async def test_a_thousand_paid_events_delivered_three_times_credit_exactly_once_each(
    wallet, operator, nats_url: str, engine: AsyncEngine, payments
) -> None:
    rng = random.Random(4)
    accounts = [await wallet.open_funded() for _ in range(5)]
    events = await paid_events(payments, rng, accounts, 1_000)
    # Three deliveries of every event, shuffled; half of them without Nats-Msg-Id, so
    # JetStream's duplicate window can not drop them: the wallet's inbox must.
    deliveries = [e for e in events for _ in range(3)]
    rng.shuffle(deliveries)
    with_id = set(rng.sample(range(len(deliveries)), len(deliveries) // 2))

    nc = await tf_nats.connect(nats_url, "test-payments-proof")
    try:
        js = nc.jetstream()
        await tf_nats.ensure_payments_stream(js)
        for start in range(0, len(deliveries), 250):
            await asyncio.gather(
                *(
                    js.publish(
                        SUBJECT,
                        e.payload(),
                        stream=tf_nats.PAYMENTS_STREAM,
                        headers={"Nats-Msg-Id": e.event_id} if i in with_id else None,
                    )
                    for i, e in enumerate(deliveries[start : start + 250], start)
                )
            )

        async def all_credited_and_drained() -> bool:
            if len(await credits_of(engine, events)) < len(events):
                return False
            info = await js.consumer_info(tf_nats.PAYMENTS_STREAM, DURABLE)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(all_credited_and_drained, 60, "every event credited, stream drained")
    finally:
        await nc.close()

    assert_exactly_one_credit_each(await credits_of(engine, events), events)
    await assert_balances_match_model(wallet, events)
    async with engine.connect() as conn:
        recorded = await conn.scalar(
            text("SELECT count(*) FROM wallet.processed_events WHERE event_id = ANY(:ids)"),
            {"ids": [e.event_id for e in events]},
        )
    assert recorded == len(events)
    report = await operator.call("Reconcile", wallet_pb2.ReconcileRequest())
    assert report.ok, [f"{v.rule} {v.subject}: {v.detail}" for v in report.violations]


class Crash(BaseException):
    """A simulated process crash: no ack, no nak; it escapes every `except Exception`."""


current_order: ContextVar[str] = ContextVar("current_order", default="")


class Faults:
    """Each planned order crashes the consumer once, at its stage."""

    def __init__(self, plan: dict[str, str]) -> None:
        self.plan = plan
        self.fired: Counter[str] = Counter()
        self.redelivered: set[str] = set()
        self._done: set[str] = set()

    def reached(self, stage: str, order_id: str) -> None:
        if self.plan.get(order_id) == stage and order_id not in self._done:
            self._done.add(order_id)
            self.fired[stage] += 1
            raise Crash(f"crash {stage} on {order_id}")


class CrashingUnitOfWork(SqlAlchemyUnitOfWork):
    faults: Faults

    async def commit(self) -> None:
        # The credit's rows are written; the process dies before COMMIT.
        self.faults.reached("before_commit", current_order.get())
        await super().commit()


class CrashingConsumer(TopUpConsumer):
    faults: Faults

    async def handle(self, msg: Msg) -> None:
        order_id = payments_pb2.TopUpEvent.FromString(msg.data).order_id
        current_order.set(order_id)
        if msg.metadata.num_delivered > 1:
            self.faults.redelivered.add(order_id)
        await super().handle(msg)

    async def _checkpoint(self, stage: str, cmd: commands.CreditTopUp) -> None:
        self.faults.reached(stage, cmd.order_id)


async def test_consumer_crashes_before_commit_after_commit_and_after_ack_lose_and_double_nothing(
    wallet, nats_url: str, engine: AsyncEngine, payments, payments_app
) -> None:
    rng = random.Random(44)
    accounts = [await wallet.open_funded() for _ in range(4)]
    events = await paid_events(payments, rng, accounts, 500)
    payments_client = PaymentsClient.connect(payments_app.address, INTERNAL)
    planned = rng.sample(events, 36)
    stages = ("before_commit", "committed", "acked")
    faults = Faults({e.order_id: stages[i % 3] for i, e in enumerate(planned)})
    sessions = sessionmaker(engine)

    def uow() -> CrashingUnitOfWork:
        unit = CrashingUnitOfWork(sessions)
        unit.faults = faults
        return unit

    # Its own subject in the PAYMENTS stream and its own durable, so the session's
    # wallet consumer does not take these messages; a 1 s ack wait for redeliveries.
    tag = uuid.uuid4().hex[:12]
    subject = tf_nats.topup_subject(f"proof.{tag}")
    durable = f"wallet-proof-{tag}"

    nc = await tf_nats.connect(nats_url, "test-wallet-crashes")
    consumer: CrashingConsumer | None = None
    restarts = 0

    async def fresh_consumer() -> CrashingConsumer:
        c = CrashingConsumer(
            nc, uow, payments_client, durable=durable, subject=subject, ack_wait=1.0
        )
        c.faults = faults
        await c.start()
        return c

    try:
        js = nc.jetstream()
        await tf_nats.ensure_payments_stream(js)
        await asyncio.gather(
            *(js.publish(subject, e.payload(), headers={"Nats-Msg-Id": e.event_id}) for e in events)
        )
        consumer = await fresh_consumer()

        async def done() -> bool:
            nonlocal consumer, restarts
            assert consumer is not None
            if not consumer.is_running:  # it crashed: a new process on the same durable
                await consumer.stop()
                consumer = await fresh_consumer()
                restarts += 1
                return False
            if sum(faults.fired.values()) < len(planned):
                return False
            if len(await credits_of(engine, events)) < len(events):
                return False
            info = await js.consumer_info(tf_nats.PAYMENTS_STREAM, durable)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(done, 90, "every event credited after the crashes")
    finally:
        if consumer is not None:
            await consumer.stop()
        await nc.close()
        await payments_client.close()

    assert faults.fired == {"before_commit": 12, "committed": 12, "acked": 12}
    # Two crashes of one batch can end one consumer: at most one restart per crash.
    assert 0 < restarts <= len(planned)
    # JetStream itself brought back the messages of the crashes before the ack.
    unacked = {order for order, stage in faults.plan.items() if stage != "acked"}
    assert unacked <= faults.redelivered
    assert_exactly_one_credit_each(await credits_of(engine, events), events)
    await assert_balances_match_model(wallet, events)
