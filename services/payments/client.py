"""A small typed async client of the payments service, for the services that call it.

The wallet reads an order here before it credits a `topup.succeeded` event: a credit
needs payments to confirm the order (services/wallet/transport/nats_consumer.py); the
gateway opens, lists, cancels and proves orders and passes provider webhooks on.
Every call carries a deadline and this service's credential (`Peer`); a read that
found payments unavailable is retried with backoff, a write is sent once (the caller
decides: an order is opened once per idempotency key); a refusal comes back as the
same `DomainError` payments raised (NOT_FOUND for an order of no such account).

    client = PaymentsClient.connect(settings.payments_addr, settings.peer_token)
    order = await client.get_top_up(account_id, order_id)
"""

from __future__ import annotations

from typing import Any

from tokenforge.generated.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.money import Bucket
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service_client import ServiceClient
from tokenforge.wire import bucket_to_proto


class PaymentsClient(ServiceClient):
    """Calls PaymentsService; answers the proto messages (`payments_pb2.TopUp`)."""

    service = "payments"

    def __init__(self, peer: Peer, **options: Any) -> None:
        super().__init__(peer, **options)
        self.stub = payments_pb2_grpc.PaymentsServiceStub(peer.channel)

    async def get_top_up(
        self, account_id: str, order_id: str, *, request_id: str = ""
    ) -> payments_pb2.TopUp:
        """The account's order as payments has it (NOT_FOUND: no such order there)."""
        answer = await self._call(
            "GetTopUp",
            payments_pb2.GetTopUpRequest(account_id=account_id, order_id=order_id),
            request_id,
        )
        top_up: payments_pb2.TopUp = answer.top_up
        return top_up

    async def list_top_ups(
        self,
        account_id: str,
        *,
        status: payments_pb2.TopUpStatus = payments_pb2.TOP_UP_STATUS_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        request_id: str = "",
    ) -> payments_pb2.ListTopUpsResponse:
        """The account's orders, newest first (`status` UNSPECIFIED: every status)."""
        answer: payments_pb2.ListTopUpsResponse = await self._call(
            "ListTopUps",
            payments_pb2.ListTopUpsRequest(
                account_id=account_id, page_size=page_size, page_token=page_token, status=status
            ),
            request_id,
        )
        return answer

    async def list_all_top_ups(
        self,
        *,
        account_id: str = "",
        status: payments_pb2.TopUpStatus = payments_pb2.TOP_UP_STATUS_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
    ) -> payments_pb2.ListAllTopUpsResponse:
        """Every account's orders (operator only), optionally one account's or one
        status's: the review queue is `status=AWAITING_REVIEW`."""
        answer: payments_pb2.ListAllTopUpsResponse = await self._call(
            "ListAllTopUps",
            payments_pb2.ListAllTopUpsRequest(
                account_id=account_id, status=status, page_size=page_size, page_token=page_token
            ),
        )
        return answer

    async def inspect_top_up(self, order_id: str) -> payments_pb2.TopUp:
        """Any account's order with its whole trail (operator only)."""
        answer = await self._call(
            "InspectTopUp", payments_pb2.InspectTopUpRequest(order_id=order_id)
        )
        top_up: payments_pb2.TopUp = answer.top_up
        return top_up

    async def review_top_up(
        self, order_id: str, decision: payments_pb2.ReviewDecision, reason: str, operator: str
    ) -> payments_pb2.TopUp:
        """Approve or reject an order waiting for review (operator only). Sent once: a
        decision is not asked again on its own."""
        answer = await self._once(
            "ReviewTopUp",
            payments_pb2.ReviewTopUpRequest(
                order_id=order_id, decision=decision, reason=reason, operator=operator
            ),
        )
        top_up: payments_pb2.TopUp = answer.top_up
        return top_up

    async def create_top_up(
        self,
        account_id: str,
        bucket: Bucket,
        provider: str,
        paid_amount_minor: int,
        currency: str,
        idempotency_key: str,
        *,
        request_id: str = "",
    ) -> payments_pb2.CreateTopUpResponse:
        """Open an order (`replayed`: the idempotency key answered one opened before)."""
        answer: payments_pb2.CreateTopUpResponse = await self._once(
            "CreateTopUp",
            payments_pb2.CreateTopUpRequest(
                account_id=account_id,
                bucket=bucket_to_proto(bucket),
                provider=provider,
                paid_amount_minor=paid_amount_minor,
                currency=currency,
                idempotency_key=idempotency_key,
            ),
            request_id,
        )
        return answer

    async def submit_transfer_proof(
        self, account_id: str, order_id: str, transfer_reference: str, *, request_id: str = ""
    ) -> payments_pb2.TopUp:
        answer = await self._once(
            "SubmitTransferProof",
            payments_pb2.SubmitTransferProofRequest(
                account_id=account_id, order_id=order_id, transfer_reference=transfer_reference
            ),
            request_id,
        )
        top_up: payments_pb2.TopUp = answer.top_up
        return top_up

    async def cancel_top_up(
        self, account_id: str, order_id: str, *, request_id: str = ""
    ) -> payments_pb2.TopUp:
        answer = await self._once(
            "CancelTopUp",
            payments_pb2.CancelTopUpRequest(account_id=account_id, order_id=order_id),
            request_id,
        )
        top_up: payments_pb2.TopUp = answer.top_up
        return top_up

    async def simulate_sandbox_outcome(
        self,
        account_id: str,
        order_id: str,
        outcome: payments_pb2.SandboxOutcome,
        *,
        request_id: str = "",
    ) -> payments_pb2.TopUp:
        """Test money: pay (or fail) a sandbox order (NOT_FOUND where the sandbox is off)."""
        answer = await self._once(
            "SimulateSandboxOutcome",
            payments_pb2.SimulateSandboxOutcomeRequest(
                account_id=account_id, order_id=order_id, outcome=outcome
            ),
            request_id,
        )
        top_up: payments_pb2.TopUp = answer.top_up
        return top_up

    async def handle_provider_event(
        self, provider: str, body: bytes, headers: dict[str, str], *, request_id: str = ""
    ) -> payments_pb2.HandleProviderEventResponse:
        """A provider's webhook as received (payments verifies the signature)."""
        answer: payments_pb2.HandleProviderEventResponse = await self._once(
            "HandleProviderEvent",
            payments_pb2.HandleProviderEventRequest(provider=provider, body=body, headers=headers),
            request_id,
        )
        return answer
