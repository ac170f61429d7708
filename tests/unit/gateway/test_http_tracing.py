"""The HTTP request's span (services/gateway/transport/http/tracing.py): OpenTelemetry's
middleware while spans are exported; while they are not, a span of ids alone, in the
client's trace, current for the whole request."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from starlette.types import Receive, Scope, Send

from services.gateway.transport.http.tracing import SpanWhileExported, instrument
from tokenforge.runtime.telemetry import setup_telemetry

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


class Switch:
    def __init__(self) -> None:
        self.on = False

    def __call__(self) -> bool:
        return self.on


def echo_app(exported: Switch) -> FastAPI:
    setup_telemetry("tokenforge")  # the SDK's provider, as a service has (once per process)
    app = FastAPI()

    @app.get("/echo")
    async def echo() -> dict[str, Any]:
        ids = trace.get_current_span().get_span_context()
        return {
            "trace": format(ids.trace_id, "032x"),
            "span": format(ids.span_id, "016x"),
            "valid": ids.is_valid,
        }

    instrument(app, exported)
    return app


def count_traced(app: FastAPI) -> list[str]:
    """The paths of the requests that go through OpenTelemetry's middleware from now on."""
    calls: list[str] = []
    switch = app.middleware_stack.app  # type: ignore[union-attr]
    assert isinstance(switch, SpanWhileExported)
    traced = switch.traced

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["path"])
        await traced(scope, receive, send)

    switch.traced = counted
    return calls


def test_while_nothing_exports_the_request_has_ids_alone_in_the_clients_trace() -> None:
    exported = Switch()
    app = echo_app(exported)
    with TestClient(app) as client:
        client.get("/echo")  # builds the stack
        calls = count_traced(app)
        body = client.get("/echo", headers={"traceparent": TRACEPARENT}).json()
        assert body["trace"] == CLIENT_TRACE and body["span"] != CLIENT_SPAN
        fresh = [client.get("/echo").json() for _ in range(2)]
        assert all(f["valid"] for f in fresh) and fresh[0]["trace"] != fresh[1]["trace"]
        assert CLIENT_TRACE not in {f["trace"] for f in fresh}
        assert calls == []  # OpenTelemetry's middleware did not run

        exported.on = True  # a processor is added: from the next request on
        body = client.get("/echo", headers={"traceparent": TRACEPARENT}).json()
        assert body["trace"] == CLIENT_TRACE and body["span"] != CLIENT_SPAN
        assert calls == ["/echo"]
    assert not trace.get_current_span().get_span_context().is_valid


def test_an_unexpected_instrumentation_stack_traces_every_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    seen: list[str] = []

    async def plain(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.build_middleware_stack = lambda: plain  # type: ignore[method-assign]
    instrument(app, Switch())
    with caplog.at_level(logging.WARNING):  # no lifespan: the request alone
        assert TestClient(app).get("/anything").status_code == 204
    assert app.middleware_stack is plain and seen == ["/anything"]
    assert "every request is traced" in caplog.text
