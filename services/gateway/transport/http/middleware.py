"""The gateway's per-request context as plain ASGI middleware (no BaseHTTPMiddleware:
it wraps every response in an extra task and stream, which costs on every request).

It makes the request id, puts it in the log context and `request.state`, adds
`x-request-id` and `x-trace-id` to the answer, counts and times the request by route
template, and writes one log line per request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.domain.planning import new_request_id
from tokenforge.errors import DomainError, Reason, openai_error_body
from tokenforge.runtime import metrics
from tokenforge.runtime.logging import request_id_var
from tokenforge.runtime.telemetry import current_trace_id

log = logging.getLogger("services.gateway.transport.http")


async def internal_error(request_id: str, send: Send) -> None:
    """An unexpected failure answers `internal_error` with the request id alone (the
    details go to the log, under that id): never SQL, schema names or a stack trace."""
    body = openai_error_body(
        DomainError(
            Reason.INTERNAL,
            "Something went wrong on our side; nothing was charged for an unfinished "
            f"request. Quote request id {request_id}.",
        )
    )
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        answer: dict[str, Any] = {"status": 500, "headers": {}}

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                # A replayed answer already names the first request's id.
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                if trace_id := current_trace_id():
                    headers.append((b"x-trace-id", trace_id.encode()))
                message = {**message, "headers": headers}
                answer["status"] = message["status"]
                answer["headers"] = {k.decode().lower(): v.decode() for k, v in headers}
                answer["elapsed"] = time.perf_counter() - started
            await send(message)

        try:
            try:
                await self.app(scope, receive, send_with_context)
            except Exception:
                if "elapsed" in answer:  # the answer had started: nothing more to send
                    raise
                log.exception("unexpected error")
                await internal_error(request_id, send_with_context)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "-")
            elapsed = answer.get("elapsed", time.perf_counter() - started)
            metrics.HTTP_REQUESTS.labels(method, route, str(answer["status"])).inc()
            metrics.HTTP_LATENCY.labels(method, route).observe(elapsed)
            log.info(
                "%s %s -> %s in %.1f ms (bucket %s, charge %s)",
                method,
                route,
                answer["status"],
                elapsed * 1000,
                answer["headers"].get("x-tokenforge-bucket", "-"),
                answer["headers"].get("x-tokenforge-charge", "-"),
            )
            request_id_var.reset(token)
