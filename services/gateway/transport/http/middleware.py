"""The gateway's per-request context as plain ASGI middleware (no BaseHTTPMiddleware:
it wraps every response in an extra task and stream, which costs on every request).

It makes the request id, puts it in the log context and `request.state`, adds
`x-request-id` and `x-trace-id` to the answer, counts and times the request by route
template, and writes one log line per request.

The hot endpoints (`DIRECT_PATHS`: chat, embeddings, responses, messages) are called
from here directly, past FastAPI's router, exception middleware, exit stacks and
dependency solving, which took about a fifth of the gateway's CPU per request
(docs/PERFORMANCE.md). Their handlers take the request alone (checked when the app is
made, `direct_routes`); their DomainError is answered as the app's handler answers it.

It is also the edge of the HTTP front (DESIGN S2): a URL whose path parameters or
query values carry a NUL, bytes that are not UTF-8 or too many characters (or an
overlong `Idempotency-Key` or `x-tokenforge-run`) is refused 400 naming the parameter
before any handler runs; and a failure nobody planned for
is logged with its traceback here and answered `internal_error` with the request id
alone (inside this middleware, so that answer carries `x-request-id` too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import metrics
from services.gateway.domain.planning import new_request_id
from services.gateway.domain.validation import MAX_ID_CHARS, check_url_value, invalid
from services.gateway.flow.stream import SEND_LATER, ReservedStreamingResponse
from services.gateway.transport.http.common import error_response, internal_error
from tokenforge.errors import DomainError
from tokenforge.runtime.logging import request_id_var
from tokenforge.runtime.telemetry import current_trace_id

log = logging.getLogger("services.gateway.transport.http")

# A query value (an id, a time, a cursor) is at most this long.
MAX_QUERY_VALUE_CHARS = 512
# Headers whose value becomes an id in our services (ids are bounded like any other).
BOUNDED_HEADERS = {b"idempotency-key": 255, b"x-tokenforge-run": MAX_ID_CHARS}
# The answer's headers the request's log line names.
LOGGED_HEADERS = frozenset({b"x-tokenforge-bucket", b"x-tokenforge-charge"})
# FastAPI's exit stacks of a request, which it leaves in the request's scope.
FASTAPI_EXIT_STACKS = (
    "fastapi_middleware_astack",
    "fastapi_inner_astack",
    "fastapi_function_astack",
)
# The endpoints called directly (see above), all POST.
DIRECT_PATHS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/messages")
# A path no longer than this cannot hold a path parameter above MAX_ID_CHARS.
_SHORT_PATH = MAX_ID_CHARS + 8


def url_problem(scope: Scope) -> DomainError | None:
    """The refusal of a request whose URL carries what no handler should see."""
    path: str = scope.get("path", "")
    undecodable = "\ufffd" in path and not _utf8(scope.get("raw_path") or path.encode())
    if "\x00" in path or undecodable or len(path) > _SHORT_PATH:
        found = _path_problem(scope, undecodable)
        if found is not None:
            return found
    for name, value in scope.get("headers", ()):
        if name in BOUNDED_HEADERS and len(value) > BOUNDED_HEADERS[name]:
            header = name.decode()
            return invalid(header, f"`{header}` is at most {BOUNDED_HEADERS[name]} characters.")
    query: bytes = scope.get("query_string", b"")
    return _query_problem(query) if query else None


def _utf8(raw: bytes) -> bool:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _path_problem(scope: Scope, undecodable: bool) -> DomainError | None:
    params: dict[str, Any] = {}
    for route in _routes(getattr(scope.get("app"), "router", None)):
        match, child = route.matches(scope)
        if match is Match.FULL and child.get("path_params"):
            params = child["path_params"]
            break
    try:
        for name, value in params.items():
            if undecodable and "\ufffd" in str(value):
                raise invalid(name, f"`{name}` is not UTF-8 text.")
            check_url_value(name, str(value))
    except DomainError as error:
        return error
    if "\x00" in scope.get("path", "") or undecodable:
        return invalid("path", "The URL path must be UTF-8 text without NUL characters.")
    return None


def _routes(router: Any) -> Iterator[Any]:
    """Every route of a router, the routes of included routers too (FastAPI keeps
    those behind an include whose own `matches` names no path parameter)."""
    for route in getattr(router, "routes", []):
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included)
        else:
            yield route


def _query_problem(query: bytes) -> DomainError | None:
    for pair in query.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        try:
            name = unquote_to_bytes(raw_name.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return invalid("query", "The query string is not UTF-8 text.")
        try:
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return invalid(name, f"`{name}` is not UTF-8 text.")
        if "\x00" in name or len(name) > MAX_ID_CHARS:
            return invalid("query", "A query parameter name is too long or holds a NUL.")
        try:
            check_url_value(name, value, MAX_QUERY_VALUE_CHARS)
        except DomainError as error:
            return error
    return None


def direct_routes(router: Any, paths: tuple[str, ...] = DIRECT_PATHS) -> dict[str, APIRoute]:
    """The POST routes of `paths` in `router` (and the routers it includes), each
    checked to take the request alone (no parameters, no dependencies: nothing FastAPI
    would solve is skipped)."""
    found: dict[str, APIRoute] = {}
    for route in _routes(router):
        if isinstance(route, APIRoute) and route.path in paths and "POST" in (route.methods or ()):
            d = route.dependant
            extra = (
                d.path_params,
                d.query_params,
                d.header_params,
                d.cookie_params,
                d.body_params,
                d.dependencies,
            )
            if any(extra) or not d.request_param_name:
                raise RuntimeError(
                    f"{route.path} cannot be called directly: it takes more than the request"
                )
            found[route.path] = route
    if missing := set(paths) - set(found):
        raise RuntimeError(f"no POST route for {sorted(missing)}")
    return found


async def call_direct(route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
    """One hot endpoint, as FastAPI would call it: the request in, its response (or its
    DomainError's answer) out; anything else goes on up (answered `internal_error`)."""
    scope["route"], scope["endpoint"] = route, route.endpoint
    try:
        response = await route.endpoint(Request(scope, receive, send))
    except DomainError as error:
        response = error_response(error)
    await response(scope, receive, send)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, direct: dict[str, APIRoute] | None = None) -> None:
        self.app = app
        # Filled once the app's routes exist (transport/http/__init__.py).
        self.direct = direct if direct is not None else {}

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
                # Only what the log line names: the answer is kept while a stream is open.
                answer["headers"] = {
                    name: v.decode() for k, v in headers if (name := k.lower()) in LOGGED_HEADERS
                }
                answer["elapsed"] = time.perf_counter() - started
            await send(message)

        # A streamed answer is handed back here by the route and sent once the route's
        # own frames have ended (memory per open stream; flow/stream.py).
        later: list[ReservedStreamingResponse] = []
        scope[SEND_LATER] = later
        try:
            refused = url_problem(scope)
            if refused is not None:
                await error_response(refused)(scope, receive, send_with_context)
                return
            direct = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
            if direct is not None:
                await call_direct(direct, scope, receive, send_with_context)
            else:
                await self.app(scope, receive, send_with_context)
            if later:
                # Closed by now; the scope would keep them for the stream's life.
                for key in FASTAPI_EXIT_STACKS:
                    scope.pop(key, None)
            while later:
                await later.pop().send_now(receive, send_with_context)
        except ClientDisconnect:
            # The client left before its request was read: nothing ran, nobody to answer.
            log.info("request %s: the client went away before its body arrived", request_id)
        except Exception:
            log.exception("unexpected error (request %s)", request_id)
            if "elapsed" in answer:  # the answer has begun: it can only be cut short
                raise
            fallback = error_response(internal_error(request_id))
            await fallback(scope, receive, send_with_context)
        finally:
            for unsent in later:  # the route failed after handing it back
                await unsent.drop()
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
                answer["headers"].get(b"x-tokenforge-bucket", "-"),
                answer["headers"].get(b"x-tokenforge-charge", "-"),
            )
            request_id_var.reset(token)
