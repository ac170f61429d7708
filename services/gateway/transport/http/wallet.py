"""The user API for the wallet: both balances and the ledger."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.presenting import (
    balance_json,
    ledger_entry_json,
)
from services.gateway.transport.http.answers import LEDGER_ROW, WALLET, answer, listing
from services.gateway.transport.http.common import Deps, PageSize, json_response
from tokenforge.wire import (
    bucket_from_name,
)

log = logging.getLogger(__name__)


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    @r.get("/v1/wallet", tags=["wallet"], responses=answer(WALLET))
    async def wallet(request: Request) -> Response:
        """Both balances side by side: posted, held (split into held for your requests
        and set aside for fast serving) and available to spend."""
        who = await deps.reader(request)
        balances = await peers.wallet_client.balances(
            who.account_id, split_held=True, request_id=request.state.request_id
        )
        return json_response(
            {"account_id": who.account_id, "balances": [balance_json(b) for b in balances]}
        )

    @r.get("/v1/wallet/ledger", tags=["wallet"], responses=answer(listing(LEDGER_ROW)))
    async def ledger(
        request: Request,
        bucket: str | None = None,
        request_id: str | None = None,
        order_id: str | None = None,
        limit: PageSize = 50,
        cursor: str | None = None,
    ) -> Response:
        """Ledger rows, newest first, each with the balance after it."""
        who = await deps.reader(request)
        answer = await peers.wallet_client.ledger(
            who.account_id,
            bucket=bucket_from_name(bucket) if bucket else None,
            request_id=request_id or "",
            order_id=order_id or "",
            page_size=limit,
            page_token=cursor or "",
        )
        return json_response(
            {
                "object": "list",
                "data": [ledger_entry_json(e) for e in answer.entries],
                "next_cursor": answer.next_page_token or None,
            }
        )

    return r
