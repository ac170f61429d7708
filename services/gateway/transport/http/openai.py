"""The OpenAI-compatible endpoints: chat completions (streaming too), embeddings, models."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from opentelemetry import trace

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.domain.presenting import (
    model_json,
)
from services.gateway.handlers import (
    CHAT,
    EMBEDDINGS,
    ChatCommand,
    complete,
    start_chat_stream,
)
from services.gateway.transport.http.common import Deps, api_key_of, json_body, json_response
from tokenforge.errors import DomainError, Reason
from tokenforge.routing.v1 import routing_pb2
from tokenforge.runtime.telemetry import current_trace_id

log = logging.getLogger(__name__)


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers
    upstream: Upstream = deps.upstream

    def command(request: Request, body: dict[str, Any]) -> ChatCommand:
        return ChatCommand(
            request_id=request.state.request_id,
            api_key=api_key_of(request),
            body=body,
            trace_id=current_trace_id(),
            client_ip=request.client.host if request.client else "",
        )

    def annotate(outcome_receipt: Any, headers: dict[str, str]) -> None:
        r = outcome_receipt
        trace.get_current_span().set_attributes(
            {
                "gen_ai.request.model": r.selected_model,
                "gen_ai.response.model": r.upstream_model,
                "gen_ai.usage.input_tokens": r.prompt_tokens,
                "gen_ai.usage.output_tokens": r.completion_tokens,
                "tokenforge.route": headers.get("x-tokenforge-route", ""),
                "tokenforge.bucket": headers.get("x-tokenforge-bucket", ""),
                "tokenforge.charge_micros": r.charge_micros,
            }
        )

    @r.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(request: Request) -> Response:
        """Chat completion (OpenAI wire format, `stream` included) with `usage.cost` and a
        `tokenforge` receipt summary; the receipt is at GET /v1/usage/{x-request-id}."""
        body = await json_body(request)
        if body.get("stream") is True:
            stream = await start_chat_stream(peers, upstream, command(request, body))
            return StreamingResponse(
                stream.events(),
                media_type="text/event-stream",
                headers={**stream.headers, "cache-control": "no-cache"},
            )
        outcome = await complete(peers, upstream, command(request, body), CHAT)
        annotate(outcome.receipt, outcome.headers)
        return json_response(outcome.payload, outcome.status, outcome.headers)

    @r.post("/v1/embeddings", tags=["openai"])
    async def embeddings(request: Request) -> Response:
        """Embeddings (OpenAI wire format) with `usage.cost` and a receipt."""
        body = await json_body(request)
        outcome = await complete(peers, upstream, command(request, body), EMBEDDINGS)
        annotate(outcome.receipt, outcome.headers)
        return json_response(outcome.payload, outcome.status, outcome.headers)

    @r.get("/v1/models", tags=["openai"])
    async def list_models(request: Request) -> Response:
        """Every model with its routes: kind, the bucket that pays, prices."""
        await deps.principal(request, routing_pb2.SCOPE_INFERENCE)
        answer = await peers.routing.call(
            peers.routing_stub.ListModels, routing_pb2.ListModelsRequest()
        )
        created = int(time.time())
        return json_response(
            {
                "object": "list",
                "data": [model_json(m, created) for m in answer.models],
                "catalog_version": answer.catalog_version,
            }
        )

    @r.get("/v1/models/{model_id}", tags=["openai"])
    async def get_model(model_id: str, request: Request) -> Response:
        await deps.principal(request, routing_pb2.SCOPE_INFERENCE)
        answer = await peers.routing.call(
            peers.routing_stub.ListModels, routing_pb2.ListModelsRequest()
        )
        for m in answer.models:
            if m.id == model_id:
                return json_response(model_json(m, int(time.time())))
        raise DomainError(Reason.MODEL_NOT_FOUND, f"No model {model_id!r}; see GET /v1/models.")

    return r
