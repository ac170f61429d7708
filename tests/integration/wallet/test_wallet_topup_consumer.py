"""The top-up consumer on real NATS JetStream: one credit per order whatever the
duplicates and redeliveries (P2), trace joined, poison messages terminated. Every
event names a real order of the payments service (the wallet confirms it there)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payments.client import PaymentsClient
from services.wallet.storage.unit_of_work import UnitOfWork
from services.wallet.transport.nats_consumer import DURABLE, SUBJECT, TopUpConsumer
from tests.integration.wallet.conftest import INTERNAL
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.telemetry import add_span_processor


@pytest.fixture
async def payments_client(payments_app) -> AsyncIterator[PaymentsClient]:
    client = PaymentsClient.connect(payments_app.address, INTERNAL)
    yield client
    await client.close()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def topup_event(account: str, order: str, amount: int) -> bytes:
    event = payments_pb2.TopUpEvent(
        event_id=f"evt-{uuid.uuid4()}",
        order_id=order,
        account_id=account,
        bucket=common_pb2.BUCKET_ROUTED,
        received_micros=amount,
        status=payments_pb2.TOP_UP_STATUS_SUCCEEDED,
    )
    return event.SerializeToString()


async def wait_for(predicate: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def order_entries(wallet, account: str, order: str) -> list:
    response = await wallet.call(
        "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, order_id=order)
    )
    return list(response.entries)


async def test_an_event_published_twice_and_redelivered_credits_once_in_its_trace(
    wallet,
    nats_url: str,
    engine: AsyncEngine,
    uow_at: Callable[[timedelta], UnitOfWork],
    spans: InMemorySpanExporter,
    payments,
    payments_client: PaymentsClient,
) -> None:
    account = await wallet.open_funded()
    order = (await payments.order(account, common_pb2.BUCKET_ROUTED, 700)).order_id
    payload = topup_event(account, order, 7_000_000)
    trace_id, parent_span_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{parent_span_id}-01"}

    nc = await tf_nats.connect(nats_url, "test-payments")
    try:
        js = nc.jetstream()
        for _ in range(2):
            await js.publish(
                SUBJECT, payload, headers={**headers, "Nats-Msg-Id": str(uuid.uuid4())}
            )

        async def credited() -> bool:
            return len(await order_entries(wallet, account, order)) == 1

        await wait_for(credited)

        # A redelivery: the same messages handed to the consumer once more.
        replay = await js.pull_subscribe(SUBJECT, durable=f"test-replay-{uuid.uuid4().hex}")
        consumer = TopUpConsumer(nc, lambda: uow_at(timedelta()), payments_client)
        mine = 0
        while mine < 2:
            for msg in await replay.fetch(batch=50, timeout=2.0):
                if msg.data == payload:
                    mine += 1
                    await consumer.handle(msg)
                else:
                    await msg.ack()
    finally:
        await nc.close()

    entries = await order_entries(wallet, account, order)
    assert len(entries) == 1
    assert entries[0].kind == wallet_pb2.ENTRY_KIND_TOPUP_CREDIT
    assert entries[0].trace_id == trace_id
    balance = await wallet.balance(account, common_pb2.BUCKET_ROUTED)
    assert balance.posted_micros == 7_000_000
    event_id = payments_pb2.TopUpEvent.FromString(payload).event_id
    async with engine.connect() as conn:
        recorded = (
            await conn.execute(
                text("SELECT entry_id FROM wallet.processed_events WHERE event_id = :e"),
                {"e": event_id},
            )
        ).scalar_one()
    assert str(recorded) == entries[0].entry_id
    credit_spans = [
        s
        for s in spans.get_finished_spans()
        if s.name == "wallet credit top-up" and s.attributes.get("tokenforge.order_id") == order
    ]
    assert credit_spans
    assert all(format(s.context.trace_id, "032x") == trace_id for s in credit_spans)
    assert all(format(s.parent.span_id, "016x") == parent_span_id for s in credit_spans)


async def test_a_poison_message_is_terminated_and_the_next_event_still_credits(
    wallet, nats_url: str, payments
) -> None:
    account = await wallet.open_funded()
    order = (await payments.order(account, common_pb2.BUCKET_ROUTED, 1)).order_id
    nc = await tf_nats.connect(nats_url, "test-payments")
    try:
        js = nc.jetstream()
        await js.publish(SUBJECT, b"\x0a\x05ab", headers={"Nats-Msg-Id": str(uuid.uuid4())})
        await js.publish(
            SUBJECT,
            topup_event(account, order, 10_000),
            headers={"Nats-Msg-Id": str(uuid.uuid4())},
        )

        async def credited() -> bool:
            return len(await order_entries(wallet, account, order)) == 1

        await wait_for(credited)

        async def settled() -> bool:
            info = await js.consumer_info(tf_nats.PAYMENTS_STREAM, DURABLE)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await wait_for(settled)
        info = await js.consumer_info(tf_nats.PAYMENTS_STREAM, DURABLE)
        assert info.num_redelivered == 0
    finally:
        await nc.close()
    assert (await wallet.balance(account, common_pb2.BUCKET_ROUTED)).posted_micros == 10_000


async def test_a_message_that_can_never_credit_is_dead_lettered_with_its_reason(
    wallet, nats_url: str, payments
) -> None:
    from services.wallet.transport.nats_consumer import (
        DEADLETTER_STREAM,
        DEADLETTER_SUBJECT,
        ORIGIN_HEADER,
        REASON_HEADER,
    )

    account = await wallet.open_funded()
    order = (await payments.order(account, common_pb2.BUCKET_ROUTED, 1)).order_id
    first = topup_event(account, order, 10_000)
    conflicting = topup_event(account, order, 20_000)  # same order, another amount
    nc = await tf_nats.connect(nats_url, "test-payments")
    try:
        js = nc.jetstream()
        before = (await js.stream_info(DEADLETTER_STREAM)).state.last_seq
        await js.publish(SUBJECT, first, headers={"Nats-Msg-Id": str(uuid.uuid4())})

        async def credited() -> bool:
            return len(await order_entries(wallet, account, order)) == 1

        await wait_for(credited)
        await js.publish(SUBJECT, conflicting, headers={"Nats-Msg-Id": str(uuid.uuid4())})

        async def dead_lettered() -> bool:
            return (await js.stream_info(DEADLETTER_STREAM)).state.last_seq > before

        await wait_for(dead_lettered)
        copy = await js.get_msg(DEADLETTER_STREAM, before + 1)
        payments = await js.stream_info(tf_nats.PAYMENTS_STREAM)
    finally:
        await nc.close()
    assert copy.subject == DEADLETTER_SUBJECT
    assert copy.data == conflicting
    assert copy.headers is not None
    # Payments' order says 10,000: the other amount is not confirmed (S1).
    assert copy.headers[REASON_HEADER].startswith("unconfirmed: payments does not confirm")
    assert copy.headers[ORIGIN_HEADER] == SUBJECT
    assert DEADLETTER_SUBJECT not in (payments.config.subjects or [])
    assert not DEADLETTER_SUBJECT.startswith(tf_nats.PAYMENTS_SUBJECTS.rstrip(">"))
    assert (await wallet.balance(account, common_pb2.BUCKET_ROUTED)).posted_micros == 10_000
