"""Forged top-up events mint nothing (S1, issue 17), on real NATS and a real payments.

An attacker who reaches NATS tries to publish `topup.succeeded` for an order that does
not exist, or for a real order with another amount: with no credentials NATS refuses
the connection; with the wallet's credentials NATS refuses the publish (only payments
may publish top-up events); with payments' own credentials the event reaches the
wallet, which asks payments, is not confirmed, dead-letters the event with the reason
and credits nothing. While payments cannot answer, a true event waits (nak'ed,
redelivered) and is credited once payments is back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import nats
import pytest
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client import REGISTRY

from services.payments.client import PaymentsClient
from services.wallet.storage.unit_of_work import SqlAlchemyUnitOfWork
from services.wallet.transport.nats_consumer import (
    DEADLETTER_STREAM,
    ORIGIN_HEADER,
    REASON_HEADER,
    SUBJECT,
    TopUpConsumer,
)
from tests.integration.wallet.conftest import INTERNAL
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.db import sessionmaker
from tokenforge.runtime.embedded import free_port


def event(account: str, order: str, micros: int, bucket: int = common_pb2.BUCKET_CREDIT) -> bytes:
    return payments_pb2.TopUpEvent(
        event_id=f"evt-{uuid.uuid4()}",
        order_id=order,
        account_id=account,
        bucket=bucket,
        received_micros=micros,
        status=payments_pb2.TOP_UP_STATUS_SUCCEEDED,
    ).SerializeToString()


async def wait_for(predicate: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def credits(wallet, account: str) -> list:
    page = await wallet.call(
        "ListLedger",
        wallet_pb2.ListLedgerRequest(account_id=account, kind=wallet_pb2.ENTRY_KIND_TOPUP_CREDIT),
    )
    return list(page.entries)


def refused_count(reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "tokenforge_wallet_topup_events_refused_total", {"reason": reason}
        )
        or 0.0
    )


async def test_nats_refuses_a_client_without_credentials(nats_url: str) -> None:
    parts = urlsplit(nats_url)
    anonymous = f"{parts.scheme}://{parts.hostname}:{parts.port}"

    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(
            anonymous, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
        )


async def test_the_wallets_credentials_cannot_publish_a_topup_event(
    wallet, nats_urls: dict[str, str], nats_url: str
) -> None:
    account = await wallet.open_funded()
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    operator = await tf_nats.connect(nats_url, "test-operator")
    intruder = await nats.connect(nats_urls["wallet"], error_cb=on_error)
    try:
        js = operator.jetstream()
        await tf_nats.ensure_payments_stream(js)
        before = (await js.stream_info(tf_nats.PAYMENTS_STREAM)).state.last_seq
        with pytest.raises(NatsTimeoutError):
            await intruder.jetstream().publish(
                SUBJECT, event(account, str(uuid.uuid4()), 777_000_000), timeout=1.0
            )
        await asyncio.sleep(0.2)
        after = (await js.stream_info(tf_nats.PAYMENTS_STREAM)).state.last_seq
    finally:
        await intruder.close()
        await operator.close()

    assert after == before  # the stream never saw it
    assert any("permissions violation for publish" in str(e).lower() for e in errors), errors
    assert await credits(wallet, account) == []
    assert (await wallet.balance(account)).posted_micros == 0


async def test_events_payments_does_not_confirm_are_dead_lettered_and_credit_nothing(
    wallet, payments, nats_urls: dict[str, str], nats_url: str
) -> None:
    account = await wallet.open_funded()
    paid = await payments.order(account, common_pb2.BUCKET_CREDIT, 100)  # 1.00 CR
    pending = await payments.order(account, common_pb2.BUCKET_CREDIT, 100, pay=False)
    stranger = await wallet.open_funded()
    forged = {
        "no such order": event(account, str(uuid.uuid4()), 777_000_000),
        "not an order id": event(account, "order-777", 777_000_000),
        "wrong amount": event(account, paid.order_id, 777_000_000),
        "wrong bucket": event(account, paid.order_id, 1_000_000, common_pb2.BUCKET_ROUTED),
        "not paid": event(account, pending.order_id, 1_000_000),
        "another account": event(stranger, paid.order_id, 1_000_000),
    }
    refused_before = refused_count("unconfirmed")

    # Published as payments itself would (its NATS user): NATS lets it through.
    publisher = await tf_nats.connect(nats_urls["payments"], "test-forger")
    operator = await tf_nats.connect(nats_url, "test-operator")
    try:
        ops = operator.jetstream()
        await tf_nats.ensure_payments_stream(ops)
        first_dead = (await ops.stream_info(DEADLETTER_STREAM)).state.last_seq + 1
        for payload in forged.values():
            await publisher.jetstream().publish(
                SUBJECT, payload, headers={"Nats-Msg-Id": str(uuid.uuid4())}
            )

        async def all_dead_lettered() -> bool:
            last = (await ops.stream_info(DEADLETTER_STREAM)).state.last_seq
            return last - first_dead + 1 >= len(forged)

        await wait_for(all_dead_lettered)
        last = (await ops.stream_info(DEADLETTER_STREAM)).state.last_seq
        copies = [await ops.get_msg(DEADLETTER_STREAM, seq) for seq in range(first_dead, last + 1)]

        # The true event of the paid order still credits it, once.
        await publisher.jetstream().publish(
            SUBJECT,
            event(account, paid.order_id, 1_000_000),
            headers={"Nats-Msg-Id": "x" + paid.order_id},
        )

        async def credited() -> bool:
            return len(await credits(wallet, account)) == 1

        await wait_for(credited)
    finally:
        await publisher.close()
        await operator.close()

    reasons = {c.data: (c.headers or {}).get(REASON_HEADER, "") for c in copies}
    for what, payload in forged.items():
        assert payload in reasons, what
        assert reasons[payload].startswith("unconfirmed: "), (what, reasons[payload])
    assert "payments has no order" in reasons[forged["no such order"]]
    assert "payments has no order" in reasons[forged["another account"]]
    assert "777000000 micro-units" in reasons[forged["wrong amount"]]
    assert "the order credits credit, the event routed" in reasons[forged["wrong bucket"]]
    assert "the order is pending, not succeeded" in reasons[forged["not paid"]]
    assert all(c.headers and c.headers[ORIGIN_HEADER] == SUBJECT for c in copies)
    assert refused_count("unconfirmed") - refused_before >= len(forged)

    [entry] = await credits(wallet, account)
    assert (entry.order_id, entry.amount_micros) == (paid.order_id, 1_000_000)
    assert (await wallet.balance(account)).posted_micros == 1_000_000
    assert (await wallet.balance(account, common_pb2.BUCKET_ROUTED)).posted_micros == 0
    assert (await wallet.balance(stranger)).posted_micros == 0


async def test_while_payments_cannot_answer_an_event_waits_and_is_credited_once_it_can(
    wallet, payments, payments_app, nats_url: str, engine
) -> None:
    account = await wallet.open_funded()
    paid = await payments.order(account, common_pb2.BUCKET_ROUTED, 250)
    # Its own subject and durable, so the session's wallet consumer does not take it; a
    # delivery left unsettled by the stopped consumer comes back after 1 s.
    tag = uuid.uuid4().hex[:12]
    subject = tf_nats.topup_subject(f"proof.{tag}")
    durable = f"wallet-unreachable-{tag}"
    sessions = sessionmaker(engine)
    nc = await tf_nats.connect(nats_url, "test-unreachable")
    nowhere = PaymentsClient.connect(f"127.0.0.1:{free_port()}", INTERNAL, backoff=0.01)
    there = PaymentsClient.connect(payments_app.address, INTERNAL)
    try:
        js = nc.jetstream()
        await tf_nats.ensure_payments_stream(js)
        await js.publish(
            subject, event(account, paid.order_id, 2_500_000, common_pb2.BUCKET_ROUTED)
        )
        waiting = TopUpConsumer(
            nc,
            lambda: SqlAlchemyUnitOfWork(sessions),
            nowhere,
            durable=durable,
            subject=subject,
            ack_wait=1.0,
        )
        await waiting.start()

        async def redelivered() -> bool:
            info = await js.consumer_info(tf_nats.PAYMENTS_STREAM, durable)
            return info.num_redelivered >= 1

        await wait_for(redelivered, 20)
        await waiting.stop()
        assert await credits(wallet, account) == []
        info = await js.consumer_info(tf_nats.PAYMENTS_STREAM, durable)
        assert info.num_pending + info.num_ack_pending == 1  # still there, not lost

        back = TopUpConsumer(
            nc,
            lambda: SqlAlchemyUnitOfWork(sessions),
            there,
            durable=durable,
            subject=subject,
            ack_wait=1.0,
        )
        await back.start()

        async def credited() -> bool:
            return len(await credits(wallet, account)) == 1

        try:
            await wait_for(credited, 20)
        finally:
            await back.stop()
    finally:
        await nowhere.close()
        await there.close()
        await nc.close()
    [entry] = await credits(wallet, account)
    assert (entry.order_id, entry.amount_micros) == (paid.order_id, 2_500_000)
