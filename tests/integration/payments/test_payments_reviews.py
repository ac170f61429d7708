"""Bank transfers, cancellation and the operator's review queue over gRPC, on the real
PostgreSQL: proof -> awaiting_review -> approved (credited by event) or rejected;
reviews and cross-account listings take the operator credential only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from services.payments.domain.providers import ManualTransferProvider
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService

MakeRequest = Callable[..., payments_pb2.CreateTopUpRequest]
Stub = payments_pb2_grpc.PaymentsServiceStub


@pytest.fixture(scope="module")
async def operator(payments_service: RunningService) -> AsyncIterator[Peer]:
    peer = Peer("payments", payments_service.address, "t-admin")
    yield peer
    await peer.close()


async def transfer_order(
    peer: Peer, stub: Stub, request: payments_pb2.CreateTopUpRequest
) -> payments_pb2.TopUp:
    answer = await peer.call(stub.CreateTopUp, request)
    return answer.top_up


async def prove(
    peer: Peer, stub: Stub, top_up: payments_pb2.TopUp, ref: str = "BANK-REF-1"
) -> payments_pb2.TopUp:
    answer = await peer.call(
        stub.SubmitTransferProof,
        payments_pb2.SubmitTransferProofRequest(
            account_id=top_up.account_id, order_id=top_up.order_id, transfer_reference=ref
        ),
    )
    return answer.top_up


def review(
    order_id: str, decision: int, reason: str = "seen on the statement"
) -> payments_pb2.ReviewTopUpRequest:
    return payments_pb2.ReviewTopUpRequest(
        order_id=order_id,
        decision=decision,
        reason=reason,
        operator="alice",  # type: ignore[arg-type]
    )


async def test_a_bank_transfer_order_lives_three_days_and_waits_for_review_after_proof(
    payments_peer: Peer, payments_stub: Stub, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await transfer_order(
        payments_peer,
        payments_stub,
        create_request(account_id, provider="manual_transfer", currency="EUR"),
    )
    lifetime = top_up.expires_at.ToDatetime() - top_up.created_at.ToDatetime()

    proved = await prove(payments_peer, payments_stub, top_up)
    again = await prove(payments_peer, payments_stub, top_up)

    assert lifetime == ManualTransferProvider.order_ttl
    assert proved.status == payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW
    assert proved.transfer_reference == "BANK-REF-1"
    assert len(again.transitions) == len(proved.transitions)


async def test_an_operator_approves_a_transfer_and_one_succeeded_event_is_published(
    payments_peer: Peer,
    payments_stub: Stub,
    operator: Peer,
    create_request: MakeRequest,
    account_id: str,
    payments_stream: object,
) -> None:
    top_up = await transfer_order(
        payments_peer, payments_stub, create_request(account_id, provider="manual_transfer")
    )
    await prove(payments_peer, payments_stub, top_up)

    approved = (
        await operator.call(
            payments_stub.ReviewTopUp, review(top_up.order_id, payments_pb2.REVIEW_DECISION_APPROVE)
        )
    ).top_up
    replay = (
        await operator.call(
            payments_stub.ReviewTopUp, review(top_up.order_id, payments_pb2.REVIEW_DECISION_APPROVE)
        )
    ).top_up

    assert approved.status == payments_pb2.TOP_UP_STATUS_SUCCEEDED
    assert approved.transitions[-1].actor == "alice"
    assert "seen on the statement" in approved.transitions[-1].reason
    assert len(replay.transitions) == len(approved.transitions)
    messages = await payments_stream.wait_for(top_up.order_id, 2)  # type: ignore[attr-defined]
    subjects = [m.subject for m in messages]
    assert subjects == [
        "tokenforge.payments.v1.topup.awaiting_review",
        "tokenforge.payments.v1.topup.succeeded",
    ]


async def test_a_rejection_needs_a_reason_and_leaves_no_way_back(
    payments_peer: Peer,
    payments_stub: Stub,
    operator: Peer,
    create_request: MakeRequest,
    account_id: str,
) -> None:
    top_up = await transfer_order(
        payments_peer, payments_stub, create_request(account_id, provider="manual_transfer")
    )
    await prove(payments_peer, payments_stub, top_up)

    with pytest.raises(DomainError) as no_reason:
        await operator.call(
            payments_stub.ReviewTopUp,
            review(top_up.order_id, payments_pb2.REVIEW_DECISION_REJECT, " "),
        )
    rejected = (
        await operator.call(
            payments_stub.ReviewTopUp,
            review(top_up.order_id, payments_pb2.REVIEW_DECISION_REJECT, "no such transfer"),
        )
    ).top_up
    with pytest.raises(DomainError) as late_approval:
        await operator.call(
            payments_stub.ReviewTopUp, review(top_up.order_id, payments_pb2.REVIEW_DECISION_APPROVE)
        )

    assert no_reason.value.reason is Reason.INVALID_ARGUMENT
    assert rejected.status == payments_pb2.TOP_UP_STATUS_REJECTED
    assert late_approval.value.reason is Reason.INVALID_TRANSITION


async def test_reviews_and_cross_account_listings_refuse_the_internal_credential(
    payments_peer: Peer, payments_stub: Stub, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await transfer_order(
        payments_peer, payments_stub, create_request(account_id, provider="manual_transfer")
    )
    await prove(payments_peer, payments_stub, top_up)

    with pytest.raises(DomainError) as review_refused:
        await payments_peer.call(
            payments_stub.ReviewTopUp, review(top_up.order_id, payments_pb2.REVIEW_DECISION_APPROVE)
        )
    with pytest.raises(DomainError) as list_refused:
        await payments_peer.call(payments_stub.ListAllTopUps, payments_pb2.ListAllTopUpsRequest())

    assert review_refused.value.reason is Reason.PERMISSION_DENIED
    assert list_refused.value.reason is Reason.PERMISSION_DENIED


async def test_operators_list_orders_by_status_across_accounts(
    payments_peer: Peer,
    payments_stub: Stub,
    operator: Peer,
    create_request: MakeRequest,
    account_id: str,
) -> None:
    waiting = await transfer_order(
        payments_peer, payments_stub, create_request(account_id, provider="manual_transfer")
    )
    await prove(payments_peer, payments_stub, waiting)
    other = await transfer_order(
        payments_peer, payments_stub, create_request(account_id + "-b", provider="manual_transfer")
    )
    await prove(payments_peer, payments_stub, other)
    still_pending = await transfer_order(payments_peer, payments_stub, create_request(account_id))

    queue = await operator.call(
        payments_stub.ListAllTopUps,
        payments_pb2.ListAllTopUpsRequest(
            status=payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW, page_size=100
        ),
    )
    mine = await payments_peer.call(
        payments_stub.ListTopUps,
        payments_pb2.ListTopUpsRequest(
            account_id=account_id, status=payments_pb2.TOP_UP_STATUS_PENDING
        ),
    )

    ids = {t.order_id for t in queue.top_ups}
    assert {waiting.order_id, other.order_id} <= ids
    assert still_pending.order_id not in ids
    assert all(t.status == payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW for t in queue.top_ups)
    assert [t.order_id for t in mine.top_ups] == [still_pending.order_id]


async def test_a_pending_order_can_be_canceled_once_and_then_not_paid(
    payments_peer: Peer, payments_stub: Stub, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await transfer_order(payments_peer, payments_stub, create_request(account_id))
    cancel = payments_pb2.CancelTopUpRequest(account_id=account_id, order_id=top_up.order_id)

    canceled = (await payments_peer.call(payments_stub.CancelTopUp, cancel)).top_up
    again = (await payments_peer.call(payments_stub.CancelTopUp, cancel)).top_up
    with pytest.raises(DomainError) as paid_after_cancel:
        await payments_peer.call(
            payments_stub.SimulateSandboxOutcome,
            payments_pb2.SimulateSandboxOutcomeRequest(
                account_id=account_id,
                order_id=top_up.order_id,
                outcome=payments_pb2.SANDBOX_OUTCOME_PAY,
            ),
        )
    with pytest.raises(DomainError) as someone_else:
        await payments_peer.call(
            payments_stub.CancelTopUp,
            payments_pb2.CancelTopUpRequest(account_id="acct-other", order_id=top_up.order_id),
        )

    assert canceled.status == payments_pb2.TOP_UP_STATUS_CANCELED
    assert len(again.transitions) == len(canceled.transitions) == 1
    assert paid_after_cancel.value.reason is Reason.INVALID_TRANSITION
    assert someone_else.value.reason is Reason.NOT_FOUND


async def test_a_card_or_sandbox_order_takes_no_transfer_proof(
    payments_peer: Peer, payments_stub: Stub, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await transfer_order(payments_peer, payments_stub, create_request(account_id))

    with pytest.raises(DomainError) as refused:
        await prove(payments_peer, payments_stub, top_up)

    assert refused.value.reason is Reason.PROVIDER_NOT_ALLOWED
