"""The HTTP front: the OpenAI-compatible API and the user API.

Handlers translate HTTP to use-case calls and map DomainError to the OpenAI error
object through tokenforge.errors.HTTP_ERROR. Every answer carries x-request-id; a
failure nobody planned for is answered by RequestContextMiddleware (the request id
alone, the traceback to the log).
One router per area (openai, routes, wallet, usage, topups); `create_app` wires them.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.storage.audit import AuditLog
from services.gateway.storage.idempotency import IdempotencyStore
from services.gateway.transport.http import (
    console,
    formats,
    keys,
    openai,
    operator,
    routes,
    runs,
    topups,
    usage,
    wallet,
    webhooks,
)
from services.gateway.transport.http.common import (
    Deps,
    error_response,
    json_response,
)
from services.gateway.transport.http.middleware import (
    RequestContextMiddleware,
    direct_routes,
)
from services.gateway.transport.http.schemas import ERROR_RESPONSES
from tokenforge.errors import DomainError, Reason, openai_error_body

log = logging.getLogger(__name__)

# What a browser page on an allowed origin may send: our API's headers and those the
# official openai and anthropic SDKs add in a browser (x-stainless-*, anthropic-*).
CORS_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "idempotency-key",
    "x-tokenforge-run",
    "openai-organization",
    "openai-project",
    "x-stainless-arch",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-helper-method",
)
# What a page may read of an answer: the request id and the money headers.
CORS_EXPOSE_HEADERS = (
    "x-request-id",
    "x-trace-id",
    "retry-after",
    "idempotent-replayed",
    "x-tokenforge-route",
    "x-tokenforge-bucket",
    "x-tokenforge-upstream-model",
    "x-tokenforge-receipt",
    "x-tokenforge-fallback-route",
    "x-tokenforge-charge",
    "x-tokenforge-charge-micros",
)

ROUTERS = (
    openai,
    formats,
    routes,
    wallet,
    usage,
    topups,
    webhooks,
    console,
    keys,
    runs,
    operator,
)


def create_app(
    peers: Peers,
    upstream: Upstream,
    idempotency: IdempotencyStore | None = None,
    cors_origins: tuple[str, ...] = (),
    operator_digest: str = "",
    audit: AuditLog | None = None,
) -> FastAPI:
    """The gateway's HTTP app. `cors_origins` (TOKENFORGE_CORS_ORIGINS): the web origins
    whose pages may call the API; none, no CORS headers at all."""
    app = FastAPI(
        title="tokenforge gateway",
        version="1",
        description="One OpenAI-compatible API; the money story of each request, before and after.",
        responses=ERROR_RESPONSES,
        # Spans and metrics come from the OpenTelemetry FastAPI instrumentation (app.py);
        # FastAPI's own telemetry would only find it there and step aside, per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    direct: dict[str, APIRoute] = {}  # the hot endpoints, called past the router
    app.add_middleware(RequestContextMiddleware, direct=direct)
    if cors_origins:
        # Outermost: a preflight is answered before anything else runs, and every answer
        # (errors included) carries the allow-origin header. No credentials: the API is
        # called with a key in a header, never a cookie.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=list(CORS_ALLOW_HEADERS),
            expose_headers=list(CORS_EXPOSE_HEADERS),
            allow_credentials=False,
            max_age=600,
        )

    @app.exception_handler(DomainError)
    async def on_domain_error(request: Request, error: DomainError) -> Response:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("query", "path")]
        param = ".".join(location) or "request"
        return error_response(
            DomainError(
                Reason.INVALID_ARGUMENT,
                f"`{param}`: {first.get('msg', 'invalid value')}.",
                {"param": param},
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> Response:
        reason = Reason.NOT_FOUND if error.status_code == 404 else Reason.INVALID_ARGUMENT
        message = (
            f"No such endpoint: {request.method} {request.url.path}. See /openapi.json."
            if error.status_code in (404, 405)
            else str(error.detail)
        )
        return json_response(openai_error_body(DomainError(reason, message)), error.status_code)

    deps = Deps(peers, upstream, idempotency, operator_digest, audit)
    for module in ROUTERS:
        app.include_router(module.router(deps))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    direct.update(direct_routes(app.router))

    return app
