"""The OpenAI-compatible endpoints: chat completions (streaming too), embeddings, models."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from opentelemetry import trace

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.domain.presenting import (
    model_json,
)
from services.gateway.domain.validation import validate_chat, validate_embeddings
from services.gateway.handlers import (
    CHAT,
    EMBEDDINGS,
    ChatCommand,
    annotate_span,
    charged_anyway,
    complete,
    start_chat_stream,
)
from services.gateway.storage.idempotency import digest
from services.gateway.transport.http.common import (
    Deps,
    api_key_of,
    error_response,
    json_body,
    json_response,
)
from services.gateway.transport.http.schemas import (
    ChatCompletionRequest,
    EmbeddingsRequest,
    body_of,
)
from tokenforge.errors import DomainError, Reason, http_status
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
            run_id=request.headers.get("x-tokenforge-run", "").strip(),
        )

    def annotate(outcome_receipt: Any, operation: str) -> None:
        annotate_span(trace.get_current_span(), outcome_receipt, operation)

    async def idempotent(request: Request, run: Callable[[], Awaitable[Response]]) -> Response:
        """Honour `Idempotency-Key`: one effect per key; a repeat gets the first answer."""
        key = request.headers.get("idempotency-key")
        store = deps.idempotency
        if not key or store is None:
            return await run()
        if len(key) > 255:
            raise DomainError(Reason.INVALID_ARGUMENT, "Idempotency-Key is at most 255 characters.")
        api_key = api_key_of(request)
        raw = await request.body()
        stored = await store.claim(api_key, key, raw, request.state.request_id)
        if stored is not None:
            if stored.body_digest != digest(raw):
                raise DomainError(
                    Reason.IDEMPOTENCY_CONFLICT,
                    "This Idempotency-Key was used with another request body; "
                    "use a new key for a new request.",
                )
            if stored.state == "running":
                raise DomainError(
                    Reason.REQUEST_IN_PROGRESS,
                    f"The request with this Idempotency-Key ({stored.request_id}) is still "
                    "running; retry in a moment to get its answer.",
                    {"retry_after_s": "1"},
                )
            headers = {**(stored.headers or {}), "idempotent-replayed": "true"}
            return Response(
                stored.body or b"",
                stored.status_code or 200,
                headers=headers,
                media_type="application/json",
            )
        try:
            response = await run()
        except DomainError as error:
            if http_status(error) >= 500 and not charged_anyway(error):
                await store.give_back(api_key, key)  # nothing charged: a retry may run
            else:
                answer = error_response(error)
                await store.complete(api_key, key, answer.status_code, bytes(answer.body), {})
            raise
        except BaseException:
            await store.give_back(api_key, key)
            raise
        if isinstance(response, StreamingResponse):
            # A stream cannot be replayed: a repeat is told where its receipt is.
            receipt_url = response.headers.get("x-tokenforge-receipt", "")
            replay = error_response(
                DomainError(
                    Reason.IDEMPOTENCY_CONFLICT,
                    "This Idempotency-Key was used for a stream, which is delivered once; "
                    f"its receipt is at {receipt_url}.",
                )
            )
            await store.complete(api_key, key, replay.status_code, bytes(replay.body), {})
            return response
        kept = {k: v for k, v in response.headers.items() if k.startswith("x-tokenforge-")}
        await store.complete(api_key, key, response.status_code, bytes(response.body), kept)
        return response

    @r.post("/v1/chat/completions", tags=["openai"], openapi_extra=body_of(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        """Chat completion (OpenAI wire format, `stream` included) with `usage.cost` and a
        `receipt` summary; the full receipt is at GET /v1/usage/{x-request-id}."""
        body = await json_body(request)
        validate_chat(body)  # before anything runs: nothing resolved, held or sent

        async def run() -> Response:
            if body.get("stream") is True:
                stream = await start_chat_stream(peers, upstream, command(request, body))
                return StreamingResponse(
                    stream.events(),
                    media_type="text/event-stream",
                    headers={**stream.headers, "cache-control": "no-cache"},
                )
            outcome = await complete(peers, upstream, command(request, body), CHAT)
            annotate(outcome.receipt, "chat")
            return json_response(outcome.payload, outcome.status, outcome.headers)

        return await idempotent(request, run)

    @r.post("/v1/embeddings", tags=["openai"], openapi_extra=body_of(EmbeddingsRequest))
    async def embeddings(request: Request) -> Response:
        """Embeddings (OpenAI wire format) with `usage.cost` and a receipt."""
        body = await json_body(request)
        validate_embeddings(body)

        async def run() -> Response:
            outcome = await complete(peers, upstream, command(request, body), EMBEDDINGS)
            annotate(outcome.receipt, "embeddings")
            return json_response(outcome.payload, outcome.status, outcome.headers)

        return await idempotent(request, run)

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
