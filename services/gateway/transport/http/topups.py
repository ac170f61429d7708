"""The user API for top-ups: create, follow, and the sandbox provider."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.domain.presenting import (
    topup_json,
)
from services.gateway.transport.http.common import Deps, PageSize, json_body, json_response
from tokenforge.errors import DomainError, Reason
from tokenforge.money import MoneyError, parse_amount
from tokenforge.payments.v1 import payments_pb2
from tokenforge.routing.v1 import routing_pb2
from tokenforge.wire import (
    bucket_from_name,
    bucket_to_proto,
)

log = logging.getLogger(__name__)

SANDBOX_OUTCOMES = {
    "pay": payments_pb2.SANDBOX_OUTCOME_PAY,
    "fail": payments_pb2.SANDBOX_OUTCOME_FAIL,
    "expire": payments_pb2.SANDBOX_OUTCOME_EXPIRE,
}


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    @r.post("/v1/topups", tags=["topups"])
    async def create_topup(request: Request) -> Response:
        """Open a top-up order: it names the balance it will credit, for good."""
        who = await deps.principal(request, routing_pb2.SCOPE_TOPUP)
        body = await json_body(request)
        bucket = bucket_from_name(str(body.get("bucket", "")))
        provider = str(body.get("provider", "sandbox"))
        currency = str(body.get("currency", "USD")).upper()
        try:
            minor = parse_amount(str(body.get("amount", ""))) // 10_000
        except MoneyError:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                'amount must be a decimal number of the currency, like "10.00".',
                {"param": "amount"},
            ) from None
        key = request.headers.get("idempotency-key") or request.state.request_id
        answer = await peers.payments.call(
            peers.payments_stub.CreateTopUp,
            payments_pb2.CreateTopUpRequest(
                account_id=who.account_id,
                bucket=bucket_to_proto(bucket),
                provider=provider,
                paid_amount_minor=minor,
                currency=currency,
                idempotency_key=key,
            ),
            request_id=request.state.request_id,
        )
        return json_response(topup_json(answer.top_up), 201)

    @r.get("/v1/topups", tags=["topups"])
    async def list_topups(
        request: Request, limit: PageSize = 20, cursor: str | None = None
    ) -> Response:
        who = await deps.principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.payments.call(
            peers.payments_stub.ListTopUps,
            payments_pb2.ListTopUpsRequest(
                account_id=who.account_id, page_size=limit, page_token=cursor or ""
            ),
            request_id=request.state.request_id,
        )
        return json_response(
            {
                "object": "list",
                "data": [topup_json(t) for t in answer.top_ups],
                "next_cursor": answer.next_page_token or None,
            }
        )

    @r.get("/v1/topups/{order_id}", tags=["topups"])
    async def get_topup(order_id: str, request: Request) -> Response:
        who = await deps.principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.payments.call(
            peers.payments_stub.GetTopUp,
            payments_pb2.GetTopUpRequest(account_id=who.account_id, order_id=order_id),
            request_id=request.state.request_id,
        )
        return json_response(topup_json(answer.top_up))

    @r.post("/v1/topups/{order_id}/sandbox", tags=["topups"])
    async def sandbox_outcome(order_id: str, request: Request) -> Response:
        """Sandbox provider only: pay, fail or expire the order (dev and demos)."""
        who = await deps.principal(request, routing_pb2.SCOPE_TOPUP)
        body = await json_body(request)
        outcome = SANDBOX_OUTCOMES.get(str(body.get("outcome", "")))
        if outcome is None:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"outcome must be one of {', '.join(SANDBOX_OUTCOMES)}.",
                {"param": "outcome"},
            )
        answer = await peers.payments.call(
            peers.payments_stub.SimulateSandboxOutcome,
            payments_pb2.SimulateSandboxOutcomeRequest(
                account_id=who.account_id, order_id=order_id, outcome=outcome
            ),
            request_id=request.state.request_id,
        )
        return json_response(topup_json(answer.top_up))

    return r
