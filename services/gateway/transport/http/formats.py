"""The client formats besides Chat Completions, each on the chat request flow
(services/gateway/flow/formats.py): legacy completions, OpenAI Responses and
Anthropic Messages (with its token count). Errors of the Anthropic routes come in
Anthropic's shape; the OpenAI formats keep the OpenAI error object."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from opentelemetry import trace

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.domain.commands import ChatCommand
from services.gateway.domain.formats import ClientFormat
from services.gateway.domain.formats.anthropic import AnthropicFormat
from services.gateway.domain.formats.completions import CompletionsFormat
from services.gateway.domain.formats.responses import ResponsesFormat
from services.gateway.domain.planning import counted_usage, request_shape
from services.gateway.flow.admit import CHAT, resolve
from services.gateway.flow.finish import annotate_span
from services.gateway.flow.formats import complete_in, stream_in
from services.gateway.transport.http import replay
from services.gateway.transport.http.answers import (
    COMPLETION,
    MESSAGE,
    RESPONSE,
    TOKEN_COUNT,
    answer,
)
from services.gateway.transport.http.common import (
    Deps,
    api_key_of,
    client_ip_of,
    error_headers,
    error_response,
    json_body,
    json_response,
)
from services.gateway.transport.http.schemas import (
    CompletionRequest,
    CountTokensRequest,
    MessagesRequest,
    ResponseRequest,
    body_of,
)
from tokenforge.errors import DomainError, Reason, anthropic_error_body, http_status
from tokenforge.runtime.telemetry import current_trace_id

log = logging.getLogger(__name__)


def anthropic_key_of(request: Request) -> str:
    """Anthropic clients send `x-api-key`; `Authorization: Bearer` works too (Claude
    Code's ANTHROPIC_AUTH_TOKEN)."""
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    try:
        return api_key_of(request)
    except DomainError:
        raise DomainError(
            Reason.UNAUTHENTICATED,
            "Send your API key as `x-api-key: tf_...` (or `Authorization: Bearer tf_...`); "
            "create one in the console.",
        ) from None


def anthropic_error(request: Request, error: DomainError) -> Response:
    request_id = getattr(request.state, "request_id", "")
    return json_response(
        anthropic_error_body(error, request_id), http_status(error), error_headers(error)
    )


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers
    upstream: Upstream = deps.upstream

    def command(request: Request, api_key: str, body: dict[str, Any]) -> ChatCommand:
        return ChatCommand(
            request_id=request.state.request_id,
            api_key=api_key,
            body=body,
            trace_id=current_trace_id(),
            client_ip=client_ip_of(request),
            run_id=request.headers.get("x-tokenforge-run", "").strip(),
        )

    async def run_format(
        request: Request,
        fmt: ClientFormat,
        api_key: str,
        render: Callable[[DomainError], Response] = error_response,
    ) -> Response:
        """The request through the chat flow, answered in its format (Idempotency-Key
        honoured as for chat)."""

        async def run() -> Response:
            cmd = command(request, api_key, fmt.body)
            if fmt.streamed:
                return await stream_in(peers, upstream, cmd, fmt)
            outcome = await complete_in(peers, upstream, cmd, fmt)
            annotate_span(trace.get_current_span(), outcome.receipt, fmt.operation)
            return json_response(outcome.payload, outcome.status, outcome.headers)

        return await replay.idempotent(deps.idempotency, request, run, api_key, render)

    @r.post(
        "/v1/completions",
        tags=["openai"],
        openapi_extra=body_of(CompletionRequest),
        responses=answer(COMPLETION, stream="Server-sent events: text_completion chunks."),
    )
    async def completions(request: Request) -> Response:
        """Legacy text completion (`prompt` -> `text_completion`), streaming too, priced,
        held and receipted as a chat completion; `usage.cost` and `receipt` as in chat."""
        body = await json_body(request)
        fmt = CompletionsFormat(body, request.state.request_id)
        return await run_format(request, fmt, api_key_of(request))

    @r.post(
        "/v1/responses",
        tags=["openai"],
        openapi_extra=body_of(ResponseRequest),
        responses=answer(RESPONSE, stream="Typed events ending in response.completed."),
    )
    async def responses(request: Request) -> Response:
        """OpenAI Responses, stateless (`store: false`; `previous_response_id` refused),
        streaming with the typed events; `usage` with the cost, and the `receipt`."""
        body = await json_body(request)
        fmt = ResponsesFormat(body, request.state.request_id)
        return await run_format(request, fmt, api_key_of(request))

    async def anthropic(request: Request, handle: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await handle()
        except DomainError as error:
            return anthropic_error(request, error)
        except Exception:
            # The details go to the log under the request id; the answer names only it.
            log.exception("unexpected error")
            request_id = request.state.request_id
            return anthropic_error(
                request,
                DomainError(
                    Reason.INTERNAL,
                    "Something went wrong on our side; nothing was charged for an unfinished "
                    f"request. Quote request id {request_id}.",
                    {"request_id": request_id},
                ),
            )

    @r.post(
        "/v1/messages",
        tags=["anthropic"],
        openapi_extra=body_of(MessagesRequest),
        responses=answer(MESSAGE, stream="message_start ... message_stop."),
    )
    async def messages(request: Request) -> Response:
        """Anthropic Messages (`x-api-key` or Bearer; `anthropic-version` accepted),
        streaming with Anthropic's events; `usage` with the cost, and the `receipt`."""

        async def handle() -> Response:
            api_key = anthropic_key_of(request)
            body = await json_body(request)
            fmt = AnthropicFormat(body, request.state.request_id)
            return await run_format(
                request, fmt, api_key, lambda error: anthropic_error(request, error)
            )

        return await anthropic(request, handle)

    @r.post(
        "/v1/messages/count_tokens",
        tags=["anthropic"],
        openapi_extra=body_of(CountTokensRequest),
        responses=answer(TOKEN_COUNT),
    )
    async def count_tokens(request: Request) -> Response:
        """The prompt's tokens as the gateway counts them (about four bytes a token);
        nothing is held or charged, nothing is called upstream."""

        async def handle() -> Response:
            api_key = anthropic_key_of(request)
            body = await json_body(request)
            counted = {**body, "max_tokens": 1, "stream": False}
            chat = AnthropicFormat(counted, request.state.request_id).chat_body()
            await resolve(
                peers,
                api_key,
                chat["model"],
                client_ip_of(request),
                request.state.request_id,
                CHAT,
                request_shape(chat),
                preview=True,
            )
            return json_response({"input_tokens": counted_usage(chat, 0).prompt_tokens})

        return await anthropic(request, handle)

    return r
