"""The HTTP request's span: OpenTelemetry's FastAPI instrumentation while spans are
exported, a span of ids alone while they are not.

While nothing exports (`tokenforge.runtime.telemetry.exporting`: `make run` as shipped),
OpenTelemetry's ASGI middleware still did its whole work for each request (the route's
span details, the request's attributes, a wrapped `send`) to build a span that is not
recorded: about a tenth of the gateway's event loop at c=1 (docs/PERFORMANCE.md). Then
each request gets the span the sampler would give it all the same, at a fraction of the
cost: the trace of the client's `traceparent` (or a new one) with a span id of its own,
unsampled, current for the whole request. So `x-trace-id`, receipts, log lines and the
calls to the other services name the request's trace exactly as before. The choice is
made per request: a processor added later (a test's, an exporter's) is used from the next
request on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenforge.runtime.telemetry import context_of, exporting

log = logging.getLogger("tokenforge.gateway.http")
_tracer = trace.get_tracer(__name__)


class SpanWhileExported:
    """`traced` (OpenTelemetry's middleware around `plain`) while spans are exported;
    `plain` inside a span of ids alone otherwise."""

    def __init__(
        self, traced: ASGIApp, plain: ASGIApp, exported: Callable[[], bool] = exporting
    ) -> None:
        self.traced = traced
        self.plain = plain
        self.exported = exported

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exported():
            await self.traced(scope, receive, send)
            return
        parent = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = context_of(value.decode("latin-1"))
                break
        span = _tracer.start_span("HTTP", context=parent, kind=trace.SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.plain(scope, receive, send)
        finally:
            otel_context.detach(token)
            span.end()  # nothing to end while nothing records; kept for the day it does


def instrument(app: FastAPI, exported: Callable[[], bool] = exporting) -> None:
    """OpenTelemetry's FastAPI instrumentation, used only while spans are exported (see
    the module). No span per ASGI `send`/`receive` message: a 64-chunk stream made 66
    spans that say nothing the request span does not (its duration, its status)."""
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz", exclude_spans=["receive", "send"]
    )
    traced_stack = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        # The instrumentation's stack: ServerErrorMiddleware(OpenTelemetryMiddleware(the
        # app's own stack)). Another shape (a new release) is used as it is.
        outer = traced_stack()
        traced = getattr(outer, "app", None)
        if not isinstance(outer, ServerErrorMiddleware) or not isinstance(
            traced, OpenTelemetryMiddleware
        ):
            log.warning("unexpected OpenTelemetry middleware stack: every request is traced")
            return outer
        return ServerErrorMiddleware(app=SpanWhileExported(traced, traced.app, exported))

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
