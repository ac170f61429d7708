"""The hot endpoints (chat, embeddings, responses, messages) are called by
RequestContextMiddleware directly, past FastAPI's router: only handlers that take the
request alone may be, and each answers exactly as it does through the router (its
DomainError by the app's handler, a failure nobody planned for as `internal_error`
with the request id alone), with `x-request-id` and its route named for the metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from services.gateway.transport.http import create_app
from services.gateway.transport.http import middleware as edge
from services.gateway.transport.http.middleware import (
    DIRECT_PATHS,
    RequestContextMiddleware,
    direct_routes,
)

# Requests every hot endpoint answers before it would call a peer (no peers here).
BAD = [
    ("/v1/chat/completions", b"{", {"authorization": "Bearer tf_x"}),
    ("/v1/chat/completions", b"[1, 2]", {"authorization": "Bearer tf_x"}),
    ("/v1/chat/completions", b'{"model": "m"}', {}),
    ("/v1/embeddings", b"not json", {"authorization": "Bearer tf_x"}),
    ("/v1/responses", b"{", {"authorization": "Bearer tf_x"}),
    ("/v1/messages", b"{", {"x-api-key": "tf_x"}),
    ("/v1/messages", b'{"model": "m"}', {}),
]


def the_middleware(app: FastAPI) -> RequestContextMiddleware:
    if app.middleware_stack is None:  # made as the first request would make it
        app.middleware_stack = app.build_middleware_stack()
    layer: Any = app.middleware_stack
    while not isinstance(layer, RequestContextMiddleware):
        layer = layer.app
    return layer


@pytest.fixture
async def apps() -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, list[str]]]:
    """The gateway's app twice: as made (direct), and with nothing called directly."""
    direct: FastAPI = create_app(None, None)  # type: ignore[arg-type]
    routed: FastAPI = create_app(None, None)  # type: ignore[arg-type]
    the_middleware(routed).direct.clear()
    seen: list[str] = []
    real = edge.call_direct

    async def counted(route: Any, scope: Any, receive: Any, send: Any) -> None:
        seen.append(route.path)
        await real(route, scope, receive, send)

    edge.call_direct = counted  # type: ignore[assignment]
    try:
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=direct), base_url="http://g") as a,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=routed), base_url="http://g") as b,
        ):
            yield a, b, seen
    finally:
        edge.call_direct = real  # type: ignore[assignment]


def test_the_app_calls_every_hot_endpoint_directly() -> None:
    app: FastAPI = create_app(None, None)  # type: ignore[arg-type]
    assert sorted(the_middleware(app).direct) == sorted(DIRECT_PATHS)


@pytest.mark.parametrize(("path", "body", "headers"), BAD)
async def test_a_direct_call_answers_as_the_router_does(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, list[str]],
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    direct, routed, seen = apps
    a = await direct.post(path, content=body, headers=headers)
    assert seen == [path]  # called directly
    b = await routed.post(path, content=body, headers=headers)
    assert seen == [path]  # and that one through the router
    assert 400 <= a.status_code < 500, a.text
    assert a.headers["x-request-id"] and a.headers["x-request-id"] != b.headers["x-request-id"]
    # The same answer, but for the request id an answer may name.
    same_a = a.text.replace(a.headers["x-request-id"], "<request id>")
    same_b = b.text.replace(b.headers["x-request-id"], "<request id>")
    assert (a.status_code, same_a) == (b.status_code, same_b)
    assert a.headers["content-type"] == b.headers["content-type"]


async def test_other_methods_and_paths_still_go_through_the_router(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient, list[str]],
) -> None:
    direct, _, seen = apps
    assert (await direct.get("/v1/chat/completions")).status_code == 405
    assert (await direct.post("/v1/chat/completions/x", content=b"{}")).status_code == 404
    assert (await direct.get("/healthz")).json() == {"status": "ok"}
    assert seen == []


async def test_an_unexpected_failure_of_a_direct_call_answers_the_request_id_alone() -> None:
    app: FastAPI = create_app(None, None)  # type: ignore[arg-type]

    async def boom(request: Request) -> Response:
        raise RuntimeError("SELECT wallet.balances -- Traceback")

    route = next(r for r in the_middleware(app).direct.values())
    route.endpoint = boom
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as h:
        answer = await h.post(route.path, content=b"{}")
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "internal_error"
    assert answer.headers["x-request-id"] in error["message"]
    assert "SELECT" not in answer.text and "Traceback" not in answer.text


def test_a_handler_that_takes_more_than_the_request_is_not_called_directly() -> None:
    async def handler(request: Request, model: str) -> Response:
        return Response()

    async def needs(request: Request, key: str = Depends(lambda: "k")) -> Response:
        return Response()

    for endpoint in (handler, needs):
        router = APIRouter()
        router.add_api_route("/v1/chat/completions", endpoint, methods=["POST"])
        with pytest.raises(RuntimeError, match="takes more than the request"):
            direct_routes(router, ("/v1/chat/completions",))
    with pytest.raises(RuntimeError, match="no POST route"):
        direct_routes(APIRouter(), ("/v1/chat/completions",))
