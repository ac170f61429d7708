"""Runs: a budget held up front, drawn on by requests that send `x-tokenforge-run`,
closed with one aggregate receipt."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.domain.validation import validate_run
from services.gateway.presenting import amount, run_json, run_receipt_json
from services.gateway.runs import bucket_of, close_run, open_run
from services.gateway.transport.http.answers import OPENED_RUN, RUN, RUN_RECEIPT, answer
from services.gateway.transport.http.common import (
    Deps,
    api_key_of,
    client_ip_of,
    json_body,
    json_response,
)
from services.gateway.transport.http.schemas import RunRequest, body_of
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.runtime.telemetry import current_trace_id
from tokenforge.wire import route_kind_from_proto

log = logging.getLogger(__name__)


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    @r.post(
        "/v1/runs",
        tags=["runs"],
        status_code=201,
        openapi_extra=body_of(RunRequest),
        responses=answer(OPENED_RUN, 201),
    )
    async def create_run(request: Request) -> Response:
        """Open a run: {model | bucket, budget ("2.5") | estimate {requests,
        prompt_tokens, max_tokens}, ttl (s)}. Answers the estimate, the balance
        available before, and the hold placed for the whole budget."""
        body = await json_body(request)
        validate_run(body)
        opened = await open_run(
            peers,
            api_key_of(request),
            body,
            request.state.request_id,
            current_trace_id(),
            client_ip_of(request),
        )
        bucket = bucket_of(opened.run)
        estimate = None
        if opened.estimate is not None and opened.price is not None:
            estimate = {
                "requests": opened.estimate.requests,
                "prompt_tokens": opened.estimate.prompt_tokens,
                "max_tokens": opened.estimate.max_tokens,
                "worst_case_per_request": amount(opened.estimate.per_request(opened.price), bucket),
                "worst_case_total": amount(opened.run.budget_micros, bucket),
            }
        payload = {
            **run_json(opened.run),
            "estimate": estimate,
            "route": route_kind_from_proto(opened.route_kind) if opened.route_kind else None,
            "upstream_model": opened.upstream_model or None,
            "prices": opened.price.describe() if opened.price else None,
            "available_before": amount(opened.available_before.micros, bucket),
            "hold": {
                "hold_id": opened.hold.hold_id,
                "amount": amount(opened.hold.amount_micros, bucket),
                "expires_at": opened.hold.expires_at.ToDatetime().isoformat() + "Z",
            },
            "use": {"header": "x-tokenforge-run", "value": opened.run.run_id},
        }
        return json_response(payload, 201)

    @r.get("/v1/runs/{run_id}", tags=["runs"], responses=answer(RUN))
    async def get_run(run_id: str, request: Request) -> Response:
        who = await deps.principal(request, routing_pb2.SCOPE_INFERENCE)
        run = await peers.usage_client.get_run(run_id, account_id=who.account_id)
        return json_response(run_json(run))

    @r.get("/v1/runs/{run_id}/receipt", tags=["runs"], responses=answer(RUN_RECEIPT))
    async def get_run_receipt(run_id: str, request: Request) -> Response:
        who = await deps.reader(request)
        receipt = await peers.usage_client.get_run_receipt(who.account_id, run_id)
        return json_response(run_receipt_json(receipt))

    @r.post("/v1/runs/{run_id}/close", tags=["runs"], responses=answer(RUN_RECEIPT))
    async def close(run_id: str, request: Request) -> Response:
        """Close: settle what the run's requests spent, release the rest, answer the
        aggregate receipt (lines, totals per model, totals)."""
        who = await deps.principal(request, routing_pb2.SCOPE_INFERENCE)
        receipt = await close_run(peers, who.account_id, run_id, request.state.request_id)
        return json_response(run_receipt_json(receipt))

    return r
