"""NATS JetStream: the connection, the PAYMENTS stream, and W3C trace context
carried by hand in message headers (no instrumentation exists for nats-py).
"""

from __future__ import annotations

from collections.abc import Mapping

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

PAYMENTS_STREAM = "PAYMENTS"
# An order event's header naming the traceparent of the call that created the order
# (the event's own traceparent is the call that moved it): publish spans link to it.
ORDER_TRACEPARENT_HEADER = "tokenforge-order-traceparent"
PAYMENTS_SUBJECTS = "tokenforge.payments.v1.topup.>"


def topup_subject(event: str) -> str:
    return f"tokenforge.payments.v1.topup.{event}"


async def connect(url: str, name: str) -> Client:
    return await nats.connect(
        url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5
    )


async def ensure_payments_stream(js: JetStreamContext) -> None:
    """Create (or leave as is) the PAYMENTS stream; duplicates are dropped by Nats-Msg-Id."""
    config = StreamConfig(
        name=PAYMENTS_STREAM,
        subjects=[PAYMENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=24 * 3600.0,
    )
    try:
        await js.stream_info(PAYMENTS_STREAM)
    except NotFoundError:
        await js.add_stream(config)


def trace_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers carrying the current trace context (traceparent, tracestate)."""
    headers: dict[str, str] = dict(extra or {})
    propagate.inject(headers)
    return headers


def context_from_headers(headers: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))


def order_origin_links(headers: Mapping[str, str] | None) -> list[trace.Link]:
    """A span link to the order's creation, when the event names it."""
    traceparent = (headers or {}).get(ORDER_TRACEPARENT_HEADER)
    if not traceparent:
        return []
    origin = trace.get_current_span(propagate.extract({"traceparent": traceparent}))
    context = origin.get_span_context()
    return [trace.Link(context, {"tokenforge.link": "order_created"})] if context.is_valid else []
