"""A small typed async client of the payments service, for the services that call it.

The wallet reads an order here before it credits a `topup.succeeded` event: a credit
needs payments to confirm the order (services/wallet/transport/nats_consumer.py).
Every call carries a deadline and this service's credential (`Peer`); a read that
found payments unavailable is retried with backoff; a refusal comes back as the
same `DomainError` payments raised (NOT_FOUND for an order of no such account).

    client = PaymentsClient.connect(settings.payments_addr, settings.peer_token)
    order = await client.get_top_up(account_id, order_id)
"""

from __future__ import annotations

from typing import Any

from tokenforge.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service_client import ServiceClient


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
