"""Order lifecycle events: written with the transition, relayed to JetStream once (P1-P3)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry import trace

from services.payments import handlers
from services.payments.domain import commands
from services.payments.domain.providers import ProvidersOn
from services.payments.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.payments.v1.payments_pb2_grpc import PaymentsServiceStub
from tokenforge.money import Bucket
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.telemetry import setup_telemetry

MakeRequest = Callable[..., payments_pb2.CreateTopUpRequest]
SUBJECT = "tokenforge.payments.v1.topup."
PAY = payments_pb2.SANDBOX_OUTCOME_PAY
FAIL = payments_pb2.SANDBOX_OUTCOME_FAIL
EXPIRE = payments_pb2.SANDBOX_OUTCOME_EXPIRE


async def outcome(
    peer: Peer, stub: PaymentsServiceStub, account_id: str, order_id: str, what: int
) -> payments_pb2.TopUp:
    response = await peer.call(
        stub.SimulateSandboxOutcome,
        payments_pb2.SimulateSandboxOutcomeRequest(
            account_id=account_id, order_id=order_id, outcome=what
        ),
    )
    return response.top_up


async def due_order(uow: Callable[[], UnitOfWork], account_id: str) -> str:
    """A pending order whose 15 minutes ran out five minutes ago."""
    order = await handlers.create_top_up(
        commands.CreateTopUp(account_id, Bucket.CREDIT, "sandbox", 700, "USD", str(uuid.uuid4())),
        uow(),
        providers=ProvidersOn.configured(sandbox=True, card=False),
        now=handlers.utcnow() - timedelta(minutes=20),
    )
    return order.order_id


async def test_paid_order_publishes_exactly_one_succeeded_event_the_wallet_can_credit(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_stream: Any,
    payments_outbox: Any,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    created = await payments_peer.call(
        payments_stub.CreateTopUp,
        create_request(account_id, bucket=common_pb2.BUCKET_ROUTED, paid_amount_minor=2500),
    )
    order_id = created.top_up.order_id

    paid = await outcome(payments_peer, payments_stub, account_id, order_id, PAY)
    [message] = await payments_stream.wait_for(order_id, 1)
    await asyncio.sleep(0.6)  # longer than a relay poll: nothing else may follow

    assert paid.status == payments_pb2.TOP_UP_STATUS_SUCCEEDED
    assert len(await payments_stream.messages(order_id)) == 1
    [row] = (await payments_outbox.rows({order_id}))[order_id]
    assert row.published
    assert message.subject == SUBJECT + "succeeded" == row.subject
    assert message.headers is not None and message.headers["Nats-Msg-Id"] == row.event_id
    event = payments_pb2.TopUpEvent.FromString(message.data)
    assert event.event_id == row.event_id
    assert (event.order_id, event.account_id) == (order_id, account_id)
    assert event.bucket == common_pb2.BUCKET_ROUTED
    assert event.received_micros == 25_000_000
    assert event.status == payments_pb2.TOP_UP_STATUS_SUCCEEDED
    assert event.occurred_at == paid.transitions[-1].at


async def test_replayed_pay_returns_the_order_unchanged_without_a_second_event(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_outbox: Any,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    created = await payments_peer.call(payments_stub.CreateTopUp, create_request(account_id))
    order_id = created.top_up.order_id

    first = await outcome(payments_peer, payments_stub, account_id, order_id, PAY)
    again = await outcome(payments_peer, payments_stub, account_id, order_id, PAY)

    assert again == first
    assert len(again.transitions) == 1
    rows = (await payments_outbox.rows({order_id}))[order_id]
    assert [r.subject for r in rows] == [SUBJECT + "succeeded"]


async def test_failed_order_publishes_failed_and_never_succeeded(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_stream: Any,
    payments_outbox: Any,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    created = await payments_peer.call(payments_stub.CreateTopUp, create_request(account_id))
    order_id = created.top_up.order_id

    failed = await outcome(payments_peer, payments_stub, account_id, order_id, FAIL)
    with pytest.raises(DomainError) as late_pay:
        await outcome(payments_peer, payments_stub, account_id, order_id, PAY)
    await payments_outbox.wait_published({order_id})
    messages = await payments_stream.messages(order_id)

    assert failed.status == payments_pb2.TOP_UP_STATUS_FAILED
    assert late_pay.value.reason is Reason.INVALID_TRANSITION
    assert "failed" in late_pay.value.message and "new top-up" in late_pay.value.message
    assert [m.subject for m in messages] == [SUBJECT + "failed"]
    event = payments_pb2.TopUpEvent.FromString(messages[0].data)
    assert event.status == payments_pb2.TOP_UP_STATUS_FAILED


async def test_pay_on_an_expired_order_goes_to_review_and_publishes_no_succeeded_event(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_stream: Any,
    payments_outbox: Any,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    created = await payments_peer.call(payments_stub.CreateTopUp, create_request(account_id))
    order_id = created.top_up.order_id

    expired = await outcome(payments_peer, payments_stub, account_id, order_id, EXPIRE)
    reviewed = await outcome(payments_peer, payments_stub, account_id, order_id, PAY)
    await payments_outbox.wait_published({order_id})
    messages = await payments_stream.messages(order_id)

    assert expired.status == payments_pb2.TOP_UP_STATUS_EXPIRED
    assert reviewed.status == payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW
    assert [(t.from_status, t.to_status) for t in reviewed.transitions] == [
        (payments_pb2.TOP_UP_STATUS_PENDING, payments_pb2.TOP_UP_STATUS_EXPIRED),
        (payments_pb2.TOP_UP_STATUS_EXPIRED, payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW),
    ]
    assert [m.subject for m in messages] == [SUBJECT + "expired", SUBJECT + "awaiting_review"]


async def test_sweeper_expires_a_due_order_with_an_expired_event(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_uow: Callable[[], UnitOfWork],
    payments_stream: Any,
    account_id: str,
) -> None:
    order_id = await due_order(payments_uow, account_id)

    # Called directly; the service's own sweeper (every second) may get there first.
    await handlers.expire_due_orders(payments_uow())
    [message] = await payments_stream.wait_for(order_id, 1)
    fetched = await payments_peer.call(
        payments_stub.GetTopUp,
        payments_pb2.GetTopUpRequest(account_id=account_id, order_id=order_id),
    )

    assert fetched.top_up.status == payments_pb2.TOP_UP_STATUS_EXPIRED
    assert fetched.top_up.transitions[0].actor == handlers.SWEEPER_ACTOR
    assert message.subject == SUBJECT + "expired"


async def test_background_sweeper_expires_due_orders_on_its_own(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_uow: Callable[[], UnitOfWork],
    account_id: str,
) -> None:
    order_id = await due_order(payments_uow, account_id)

    status = payments_pb2.TOP_UP_STATUS_PENDING
    for _ in range(40):
        fetched = await payments_peer.call(
            payments_stub.GetTopUp,
            payments_pb2.GetTopUpRequest(account_id=account_id, order_id=order_id),
        )
        status = fetched.top_up.status
        if status != payments_pb2.TOP_UP_STATUS_PENDING:
            break
        await asyncio.sleep(0.1)

    assert status == payments_pb2.TOP_UP_STATUS_EXPIRED


async def test_pay_racing_expire_leaves_one_winner_and_one_terminal_event(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_stream: Any,
    payments_outbox: Any,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    order_ids: list[str] = []
    for i in range(20):
        created = await payments_peer.call(payments_stub.CreateTopUp, create_request(account_id))
        order_id = created.top_up.order_id
        order_ids.append(order_id)
        racers = [
            outcome(payments_peer, payments_stub, account_id, order_id, PAY),
            outcome(payments_peer, payments_stub, account_id, order_id, EXPIRE),
        ]
        # Alternate who starts first: over 20 runs each side wins some.
        results = await asyncio.gather(*(racers[::-1] if i % 2 else racers), return_exceptions=True)
        for result in results:  # the loser is refused, or (a late payment) goes to review
            if isinstance(result, BaseException):
                assert isinstance(result, DomainError)
                assert result.reason is Reason.INVALID_TRANSITION

    await payments_outbox.wait_published(set(order_ids))
    rows = await payments_outbox.rows(set(order_ids))
    stream = await payments_stream.messages_for(set(order_ids))
    for order_id in order_ids:
        subjects = [r.subject.removeprefix(SUBJECT) for r in rows[order_id]]
        assert subjects in (["succeeded"], ["expired", "awaiting_review"]), subjects
        terminal = [s for s in subjects if s in ("succeeded", "expired")]
        assert len(terminal) == 1
        assert [m.headers["Nats-Msg-Id"] for m in stream[order_id]] == [
            r.event_id for r in rows[order_id]
        ]
        final = await payments_peer.call(
            payments_stub.GetTopUp,
            payments_pb2.GetTopUpRequest(account_id=account_id, order_id=order_id),
        )
        expected = (
            payments_pb2.TOP_UP_STATUS_SUCCEEDED
            if subjects == ["succeeded"]
            else payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW
        )
        assert final.top_up.status == expected


async def test_pay_racing_the_sweeper_on_a_due_order_never_credits(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_uow: Callable[[], UnitOfWork],
    payments_outbox: Any,
    account_id: str,
) -> None:
    order_ids: list[str] = []
    for i in range(20):
        order_id = await due_order(payments_uow, account_id)
        order_ids.append(order_id)
        pay = outcome(payments_peer, payments_stub, account_id, order_id, PAY)
        sweep = handlers.expire_due_orders(payments_uow())
        if i % 2:
            _, paid = await asyncio.gather(sweep, pay)
        else:
            paid, _ = await asyncio.gather(pay, sweep)
        assert paid.status == payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW

    rows = await payments_outbox.rows(set(order_ids))
    outcomes = set()
    for order_id in order_ids:
        subjects = [r.subject.removeprefix(SUBJECT) for r in rows[order_id]]
        assert subjects in (["awaiting_review"], ["expired", "awaiting_review"]), subjects
        outcomes.add(tuple(subjects))
    assert "succeeded" not in {s for o in outcomes for s in o}


async def test_event_carries_the_traceparent_of_the_call_that_paid(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    payments_stream: Any,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    setup_telemetry("payments-tests")
    created = await payments_peer.call(payments_stub.CreateTopUp, create_request(account_id))
    order_id = created.top_up.order_id

    with trace.get_tracer("tests").start_as_current_span("pay") as span:
        await outcome(payments_peer, payments_stub, account_id, order_id, PAY)
        trace_id = format(span.get_span_context().trace_id, "032x")
    [message] = await payments_stream.wait_for(order_id, 1)

    assert message.headers is not None
    traceparent = message.headers.get("traceparent", "")
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", traceparent), message.headers
    assert traceparent.split("-")[1] == trace_id
