"""Calling an upstream channel over HTTP: one pooled aiohttp session, one CLIENT span
per call.

aiohttp, not httpx: on this path it costs about a sixth of the CPU per request
(0.10-0.15 ms against 0.6-1.0 ms, measured in docs/PERFORMANCE.md), and every
request of the product goes through it. Timeouts per channel: `connect`, and
`first_byte` as the longest wait for the next bytes (the first byte of the answer,
then between bytes of a stream), as before.

The span (`POST`, `http.request.method`, `url.full`, `server.address`,
`http.response.status_code`) and the W3C `traceparent` header are made here, not by
aiohttp's OpenTelemetry trace config, whose signal hooks cost more than the call's
own HTTP work (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.gateway import metrics
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.runtime.telemetry import current_traceparent, exporting

# Upstream calls one gateway process keeps open at once unless configured
# (TOKENFORGE_UPSTREAM_MAX_CONNECTIONS); a request past it is refused at once
# (`check_capacity`), never left waiting for a connection.
DEFAULT_MAX_CONNECTIONS = 4096
# A network failure, a refused connection or a broken body, after the request left.
TRANSPORT_ERRORS = (aiohttp.ClientError,)
TIMEOUT_ERRORS = (asyncio.TimeoutError,)

tracer = trace.get_tracer(__name__)
# Headers a channel's protocol requires (the catalog's `headers` may override them).
PROTOCOL_HEADERS = {"anthropic_messages": {"anthropic-version": "2023-06-01"}}


@dataclass(frozen=True)
class Attempt:
    channel_id: str
    outcome: str
    latency_ms: int


@dataclass
class UpstreamAnswer:
    status: int
    payload: dict[str, Any] | None
    attempt: Attempt


def channel_secret(secret_name: str) -> str:
    """A channel's upstream key, from TOKENFORGE_CHANNEL_SECRET_<NAME> (never logged)."""
    if not secret_name:
        return ""
    env = "TOKENFORGE_CHANNEL_SECRET_" + secret_name.upper().replace("-", "_")
    return os.environ.get(env, "")


class Upstream:
    """The gateway's HTTP client to upstream channels (opened on first use, inside
    the running loop, and reused: connections stay warm)."""

    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self._session: aiohttp.ClientSession | None = None
        # 0: no limit. The pool itself has none: this count is the limit.
        self.max_connections = max_connections
        self.open = 0

    def check_capacity(self) -> None:
        """Before a request reserves anything: refuse it at once (503 gateway_busy,
        Retry-After) when this process already holds its limit of upstream calls."""
        if self.max_connections and self.open >= self.max_connections:
            metrics.GATEWAY_BUSY.inc()
            raise DomainError(
                Reason.GATEWAY_BUSY,
                f"This gateway is holding its limit of {self.max_connections} upstream "
                "calls open (TOKENFORGE_UPSTREAM_MAX_CONNECTIONS). Nothing was reserved or "
                "charged; try again in a second (another replica may have room).",
                {"retry_after_s": "1", "limit": str(self.max_connections)},
            )

    def opened(self) -> None:
        self.open += 1
        metrics.UPSTREAM_OPEN.set(self.open)

    def closed(self) -> None:
        self.open -= 1
        metrics.UPSTREAM_OPEN.set(self.open)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                json_serialize=lambda value: orjson.dumps(value).decode(),
                auto_decompress=True,
            )
        return self._session

    async def post_json(
        self, channel: routing_pb2.Channel, path: str, body: dict[str, Any]
    ) -> UpstreamAnswer:
        """POST to one channel; network failures become an answer with status 0."""
        url, headers, timeout = channel_request(channel, path)
        started = time.monotonic()
        self.opened()
        with upstream_span(url, headers) as span:
            try:
                async with self.session.post(
                    url, data=orjson.dumps(body), headers=headers, timeout=timeout
                ) as response:
                    status = response.status
                    content = await response.read()
            except TIMEOUT_ERRORS:
                failed(span, "timeout")
                return UpstreamAnswer(0, None, attempt_of(channel, "timeout", started))
            except TRANSPORT_ERRORS:
                failed(span, "connect_error")
                return UpstreamAnswer(0, None, attempt_of(channel, "connect_error", started))
            finally:
                self.closed()
            answered(span, status)
        payload: dict[str, Any] | None
        try:
            parsed = orjson.loads(content)
            payload = parsed if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            payload = None
        ok = status == 200 and payload is not None
        outcome = "ok" if ok else f"http_{status}"
        return UpstreamAnswer(status, payload, attempt_of(channel, outcome, started))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@contextmanager
def upstream_span(url: str, headers: dict[str, str]) -> Iterator[Span]:
    """The call's CLIENT span, a child of the current one; its context goes upstream in
    `headers` (traceparent). It is never made current: a connection opened during the
    call runs its callbacks in the context current at its opening for as long as it
    lives, so a current CLIENT span, ended at the status line, stayed in memory for the
    whole of a stream (about 3 KB per open stream, docs/PERFORMANCE.md).

    While nothing exports spans (`telemetry.exporting`), no CLIENT span is made: the
    upstream is named the request's own span in `traceparent`, and what the call would
    write on its span goes nowhere."""
    if not exporting():
        if parent := current_traceparent():
            headers["traceparent"] = parent
        yield trace.INVALID_SPAN
        return
    parts = urlsplit(url)
    attributes: dict[str, str | int] = {
        "http.request.method": "POST",
        "url.full": url,
        "server.address": parts.hostname or "",
    }
    if parts.port:
        attributes["server.port"] = parts.port
    span = tracer.start_span("POST", kind=SpanKind.CLIENT, attributes=attributes)
    try:
        propagate.inject(headers, context=trace.set_span_in_context(span))
        yield span
    except Exception as error:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        raise
    finally:
        span.end()


def answered(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


def failed(span: Span, outcome: str) -> None:
    span.set_attribute("error.type", outcome)
    span.set_status(Status(StatusCode.ERROR, outcome))


def channel_request(
    channel: routing_pb2.Channel, path: str
) -> tuple[str, dict[str, str], aiohttp.ClientTimeout]:
    """URL, headers (the channel's key, by its `auth`: Bearer or x-api-key; its extra
    headers) and the per-channel timeouts.

    `sock_read` is the time to the first byte and then between bytes of a stream.
    """
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=(channel.connect_timeout_ms or 5_000) / 1000,
        sock_read=(channel.first_byte_timeout_ms or channel.total_timeout_ms or 60_000) / 1000,
    )
    headers = {"content-type": "application/json", **PROTOCOL_HEADERS.get(channel.protocol, {})}
    headers.update(channel.headers)
    if secret := channel_secret(channel.secret_name):
        if channel.auth == "x-api-key":
            headers["x-api-key"] = secret
        else:
            headers["authorization"] = f"Bearer {secret}"
    return channel.base_url.rstrip("/") + path, headers, timeout


def attempt_of(channel: routing_pb2.Channel, outcome: str, started: float) -> Attempt:
    elapsed = time.monotonic() - started
    metrics.UPSTREAM_LATENCY.labels(channel.channel_id, outcome).observe(elapsed)
    if outcome != "ok":
        metrics.UPSTREAM_ERRORS.labels(channel.channel_id, outcome).inc()
    return Attempt(channel.channel_id, outcome, int(elapsed * 1000))


def retryable(outcome: str, retry_on: list[str]) -> bool:
    """Does this failure move to the next channel? `retry_on` holds statuses,
    "timeout" and "connect"."""
    if outcome == "timeout":
        return "timeout" in retry_on
    if outcome == "connect_error":
        return "connect" in retry_on
    return outcome.removeprefix("http_") in retry_on
