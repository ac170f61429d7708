"""PaymentsService over gRPC against the real database: create, read, list, refuse."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc
import pytest

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.payments.v1.payments_pb2_grpc import PaymentsServiceStub
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService

MakeRequest = Callable[..., payments_pb2.CreateTopUpRequest]


async def test_create_opens_a_pending_order_with_bucket_rate_and_expiry_fixed(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    created = await payments_peer.call(
        payments_stub.CreateTopUp,
        create_request(account_id, bucket=common_pb2.BUCKET_ROUTED, paid_amount_minor=1234),
    )
    top_up = created.top_up

    assert top_up.status == payments_pb2.TOP_UP_STATUS_PENDING
    assert top_up.bucket == common_pb2.BUCKET_ROUTED
    assert (top_up.paid_amount_minor, top_up.currency) == (1234, "USD")
    assert top_up.received_micros == 12_340_000
    assert top_up.provider == "sandbox"
    lifetime = top_up.expires_at.ToDatetime() - top_up.created_at.ToDatetime()
    assert lifetime.total_seconds() == 15 * 60
    assert list(top_up.transitions) == []

    fetched = await payments_peer.call(
        payments_stub.GetTopUp,
        payments_pb2.GetTopUpRequest(account_id=account_id, order_id=top_up.order_id),
    )
    assert fetched.top_up == top_up


async def test_same_idempotency_key_returns_the_first_order_other_arguments_conflict(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    request = create_request(account_id, idempotency_key="order-1")
    first = await payments_peer.call(payments_stub.CreateTopUp, request)
    again = await payments_peer.call(payments_stub.CreateTopUp, request)

    with pytest.raises(DomainError) as caught:
        await payments_peer.call(
            payments_stub.CreateTopUp,
            create_request(account_id, idempotency_key="order-1", paid_amount_minor=999),
        )

    assert again.top_up.order_id == first.top_up.order_id
    assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    listed = await payments_peer.call(
        payments_stub.ListTopUps, payments_pb2.ListTopUpsRequest(account_id=account_id)
    )
    assert [t.order_id for t in listed.top_ups] == [first.top_up.order_id]


async def test_concurrent_creates_with_one_key_open_one_order(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    request = create_request(account_id, idempotency_key="same-key")

    results = await asyncio.gather(
        *(payments_peer.call(payments_stub.CreateTopUp, request) for _ in range(8))
    )

    assert len({r.top_up.order_id for r in results}) == 1
    listed = await payments_peer.call(
        payments_stub.ListTopUps, payments_pb2.ListTopUpsRequest(account_id=account_id)
    )
    assert len(listed.top_ups) == 1


async def test_another_accounts_order_is_not_found(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    created = await payments_peer.call(payments_stub.CreateTopUp, create_request(account_id))
    intruder = f"acct-{uuid.uuid4()}"

    with pytest.raises(DomainError) as read:
        await payments_peer.call(
            payments_stub.GetTopUp,
            payments_pb2.GetTopUpRequest(account_id=intruder, order_id=created.top_up.order_id),
        )
    with pytest.raises(DomainError) as pay:
        await payments_peer.call(
            payments_stub.SimulateSandboxOutcome,
            payments_pb2.SimulateSandboxOutcomeRequest(
                account_id=intruder,
                order_id=created.top_up.order_id,
                outcome=payments_pb2.SANDBOX_OUTCOME_PAY,
            ),
        )
    with pytest.raises(DomainError) as garbage:
        await payments_peer.call(
            payments_stub.GetTopUp,
            payments_pb2.GetTopUpRequest(account_id=account_id, order_id="not-a-uuid"),
        )

    assert read.value.reason is pay.value.reason is garbage.value.reason is Reason.NOT_FOUND
    still = await payments_peer.call(
        payments_stub.GetTopUp,
        payments_pb2.GetTopUpRequest(account_id=account_id, order_id=created.top_up.order_id),
    )
    assert still.top_up.status == payments_pb2.TOP_UP_STATUS_PENDING


@pytest.mark.parametrize(
    ("overrides", "reason", "words"),
    [
        ({"provider": "paypal"}, Reason.PROVIDER_NOT_ALLOWED, "sandbox"),
        ({"bucket": common_pb2.BUCKET_UNSPECIFIED}, Reason.INVALID_ARGUMENT, "`routed`"),
        ({"paid_amount_minor": 0}, Reason.INVALID_ARGUMENT, "between 1 and"),
        ({"paid_amount_minor": 100_000_000}, Reason.INVALID_ARGUMENT, "between 1 and"),
        ({"currency": "EUR"}, Reason.INVALID_ARGUMENT, "USD"),
        ({"account_id": ""}, Reason.INVALID_ARGUMENT, "account_id"),
    ],
)
async def test_invalid_create_is_refused_with_a_reason_and_what_to_do(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    account_id: str,
    create_request: MakeRequest,
    overrides: dict[str, object],
    reason: Reason,
    words: str,
) -> None:
    with pytest.raises(DomainError) as caught:
        await payments_peer.call(payments_stub.CreateTopUp, create_request(account_id, **overrides))

    assert caught.value.reason is reason
    assert words in caught.value.message
    listed = await payments_peer.call(
        payments_stub.ListTopUps, payments_pb2.ListTopUpsRequest(account_id=account_id)
    )
    assert list(listed.top_ups) == []


async def test_list_is_newest_first_with_cursor_pages_and_transitions(
    payments_peer: Peer,
    payments_stub: PaymentsServiceStub,
    account_id: str,
    create_request: MakeRequest,
) -> None:
    made = [
        (await payments_peer.call(payments_stub.CreateTopUp, create_request(account_id))).top_up
        for _ in range(5)
    ]
    await payments_peer.call(
        payments_stub.SimulateSandboxOutcome,
        payments_pb2.SimulateSandboxOutcomeRequest(
            account_id=account_id,
            order_id=made[0].order_id,
            outcome=payments_pb2.SANDBOX_OUTCOME_FAIL,
        ),
    )

    seen: list[payments_pb2.TopUp] = []
    token = ""
    pages = 0
    while True:
        page = await payments_peer.call(
            payments_stub.ListTopUps,
            payments_pb2.ListTopUpsRequest(account_id=account_id, page_size=2, page_token=token),
        )
        pages += 1
        seen += list(page.top_ups)
        token = page.next_page_token
        if not token:
            break

    assert pages == 3
    assert [t.order_id for t in seen] == [t.order_id for t in reversed(made)]
    oldest = seen[-1]
    assert oldest.status == payments_pb2.TOP_UP_STATUS_FAILED
    [transition] = oldest.transitions
    assert transition.from_status == payments_pb2.TOP_UP_STATUS_PENDING
    assert transition.to_status == payments_pb2.TOP_UP_STATUS_FAILED
    assert transition.actor == "sandbox" and transition.reason


async def test_calls_without_a_credential_are_unauthenticated(
    payments_service: RunningService, account_id: str
) -> None:
    peer = Peer("payments", payments_service.address, "")
    try:
        stub = PaymentsServiceStub(peer.channel)
        with pytest.raises(DomainError) as caught:
            await peer.call(stub.ListTopUps, payments_pb2.ListTopUpsRequest(account_id=account_id))
    finally:
        await peer.close()

    assert caught.value.reason is Reason.UNAUTHENTICATED


async def test_operator_credential_may_call_every_method(
    payments_service: RunningService, account_id: str, create_request: MakeRequest
) -> None:
    peer = Peer("payments", payments_service.address, "t-admin")
    try:
        stub = PaymentsServiceStub(peer.channel)
        created = await peer.call(stub.CreateTopUp, create_request(account_id))
        paid = await peer.call(
            stub.SimulateSandboxOutcome,
            payments_pb2.SimulateSandboxOutcomeRequest(
                account_id=account_id,
                order_id=created.top_up.order_id,
                outcome=payments_pb2.SANDBOX_OUTCOME_PAY,
            ),
        )
    finally:
        await peer.close()

    assert paid.top_up.status == payments_pb2.TOP_UP_STATUS_SUCCEEDED


async def test_grpc_status_codes_follow_the_error_table(
    payments_service: RunningService, account_id: str
) -> None:
    channel = grpc.aio.insecure_channel(payments_service.address)
    try:
        stub = PaymentsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetTopUp(
                payments_pb2.GetTopUpRequest(account_id=account_id, order_id=str(uuid.uuid4())),
                metadata=(("authorization", "Bearer t-internal"),),
                timeout=5,
            )
    finally:
        await channel.close()

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
