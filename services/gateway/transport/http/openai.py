"""The OpenAI-compatible endpoints: chat completions (streaming too), embeddings, models."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from opentelemetry import trace

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.domain.commands import ChatCommand
from services.gateway.flow.admit import CHAT, EMBEDDINGS
from services.gateway.flow.complete import complete
from services.gateway.flow.finish import annotate_span
from services.gateway.flow.stream import ReservedStreamingResponse, start_chat_stream
from services.gateway.presenting import (
    model_json,
)
from services.gateway.transport.http import replay
from services.gateway.transport.http.answers import (
    CHAT_COMPLETION,
    EMBEDDING_LIST,
    MODEL,
    answer,
    listing,
)
from services.gateway.transport.http.common import (
    Deps,
    api_key_of,
    client_ip_of,
    json_body,
    json_response,
)
from services.gateway.transport.http.schemas import (
    ChatCompletionRequest,
    EmbeddingsRequest,
    body_of,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.routing.v1 import routing_pb2
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
            client_ip=client_ip_of(request),
            run_id=request.headers.get("x-tokenforge-run", "").strip(),
        )

    def annotate(outcome_receipt: Any, operation: str) -> None:
        annotate_span(trace.get_current_span(), outcome_receipt, operation)

    async def idempotent(request: Request, run: Callable[[], Awaitable[Response]]) -> Response:
        return await replay.idempotent(deps.idempotency, request, run)

    @r.post(
        "/v1/chat/completions",
        tags=["openai"],
        openapi_extra=body_of(ChatCompletionRequest),
        responses=answer(
            CHAT_COMPLETION,
            stream="Server-sent events: chat.completion.chunk objects; the last carries "
            "usage (with the cost) and the receipt.",
        ),
    )
    async def chat_completions(request: Request) -> Response:
        """Chat completion (OpenAI wire format, `stream` included) with `usage.cost` and a
        `receipt` summary; the full receipt is at GET /v1/usage/{x-request-id}."""
        body = await json_body(request)

        async def run() -> Response:
            if body.get("stream") is True:
                stream = await start_chat_stream(peers, upstream, command(request, body))
                return ReservedStreamingResponse(stream)
            outcome = await complete(peers, upstream, command(request, body), CHAT)
            annotate(outcome.receipt, "chat")
            return json_response(outcome.payload, outcome.status, outcome.headers)

        return await idempotent(request, run)

    @r.post(
        "/v1/embeddings",
        tags=["openai"],
        openapi_extra=body_of(EmbeddingsRequest),
        responses=answer(EMBEDDING_LIST),
    )
    async def embeddings(request: Request) -> Response:
        """Embeddings (OpenAI wire format) with `usage.cost` and a receipt."""
        body = await json_body(request)

        async def run() -> Response:
            outcome = await complete(peers, upstream, command(request, body), EMBEDDINGS)
            annotate(outcome.receipt, "embeddings")
            return json_response(outcome.payload, outcome.status, outcome.headers)

        return await idempotent(request, run)

    @r.get("/v1/models", tags=["openai"], responses=answer(listing(MODEL, cursor=False)))
    async def list_models(request: Request) -> Response:
        """Every model with its routes: kind, the bucket that pays, prices."""
        await deps.principal(request, routing_pb2.SCOPE_INFERENCE)
        answer = await peers.routing_client.list_models()
        created = int(time.time())
        return json_response(
            {
                "object": "list",
                "data": [model_json(m, created) for m in answer.models],
                "catalog_version": answer.catalog_version,
            }
        )

    @r.get("/v1/models/{model_id}", tags=["openai"], responses=answer(MODEL))
    async def get_model(model_id: str, request: Request) -> Response:
        await deps.principal(request, routing_pb2.SCOPE_INFERENCE)
        answer = await peers.routing_client.list_models()
        for m in answer.models:
            if m.id == model_id:
                return json_response(model_json(m, int(time.time())))
        raise DomainError(Reason.MODEL_NOT_FOUND, f"No model {model_id!r}; see GET /v1/models.")

    return r
