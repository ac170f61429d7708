"""The user API for usage: receipts."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.domain.presenting import (
    receipt_json,
)
from services.gateway.transport.http.common import Deps, PageSize, json_response
from tokenforge.routing.v1 import routing_pb2
from tokenforge.usage.v1 import usage_pb2

log = logging.getLogger(__name__)


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    @r.get("/v1/usage/{receipt_request_id}", tags=["usage"])
    async def get_receipt(receipt_request_id: str, request: Request) -> Response:
        """The receipt of one request, with its ledger row and trace id."""
        who = await deps.principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.usage.call(
            peers.usage_stub.GetReceipt,
            usage_pb2.GetReceiptRequest(account_id=who.account_id, request_id=receipt_request_id),
            request_id=request.state.request_id,
        )
        return json_response(receipt_json(answer.receipt))

    @r.get("/v1/usage", tags=["usage"])
    async def list_receipts(
        request: Request, model: str | None = None, limit: PageSize = 50, cursor: str | None = None
    ) -> Response:
        who = await deps.principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.usage.call(
            peers.usage_stub.ListReceipts,
            usage_pb2.ListReceiptsRequest(
                account_id=who.account_id,
                model=model or "",
                page_size=limit,
                page_token=cursor or "",
            ),
            request_id=request.state.request_id,
        )
        return json_response(
            {
                "object": "list",
                "data": [receipt_json(r) for r in answer.receipts],
                "next_cursor": answer.next_page_token or None,
            }
        )

    return r
