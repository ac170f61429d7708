"""Opening a streaming call to an upstream channel: headers first, so a failure before
the first byte can still move to the next channel; then the body line by line."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import orjson

from services.gateway.adapters.upstream import (
    TIMEOUT_ERRORS,
    TRANSPORT_ERRORS,
    Attempt,
    Upstream,
    answered,
    attempt_of,
    channel_request,
    failed,
    upstream_span,
)
from tokenforge.generated.routing.v1 import routing_pb2

# One server-sent-events line longer than this is a broken stream, not a chunk.
MAX_LINE_BYTES = 8 * 1024 * 1024
# What reading an open stream may raise: the caller settles what arrived.
STREAM_ERRORS = (*TRANSPORT_ERRORS, *TIMEOUT_ERRORS, ValueError)


class UpstreamStream:
    """An open upstream answer whose body is read as text lines."""

    def __init__(self, response: aiohttp.ClientResponse, upstream: Upstream) -> None:
        self._response = response
        self._upstream: Upstream | None = upstream  # counted open until closed

    async def lines(self) -> AsyncIterator[str]:
        """Each line of the body, without its line break (raises STREAM_ERRORS)."""
        pending = b""
        async for data in self._response.content.iter_any():
            *complete, pending = (pending + data).split(b"\n")
            del data  # nothing of a read is kept while the next is awaited
            if len(pending) > MAX_LINE_BYTES:
                raise ValueError("an upstream stream line is longer than 8 MiB")
            complete.reverse()
            while complete:
                yield complete.pop().rstrip(b"\r").decode()
        if pending:
            yield pending.rstrip(b"\r").decode()

    async def close(self) -> None:
        self._response.release()
        self._response.close()
        if self._upstream is not None:
            self._upstream.closed()
            self._upstream = None


class LineReader(Protocol):
    def line(self, line: str) -> list[str]: ...


class TranslatedStream(UpstreamStream):
    """An open stream of a channel of another protocol, read as chat SSE lines."""

    def __init__(
        self, response: aiohttp.ClientResponse, upstream: Upstream, reader: LineReader
    ) -> None:
        super().__init__(response, upstream)
        self._reader = reader

    async def lines(self) -> AsyncIterator[str]:
        async for line in super().lines():
            for translated in self._reader.line(line):
                yield translated


async def open_stream(
    upstream: Upstream,
    channel: routing_pb2.Channel,
    path: str,
    body: dict[str, Any],
    reader: LineReader | None = None,
) -> tuple[UpstreamStream | None, Attempt]:
    """Send the request and wait for the status line; the body is read by the caller
    (through `reader` when the channel speaks another protocol than chat)."""
    url, headers, timeout = channel_request(channel, path)
    started = time.monotonic()
    # The span covers the call up to the status line; the body is the stream's.
    upstream.opened()
    with upstream_span(url, headers) as span:
        try:
            response = await upstream.session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=timeout
            )
        except TIMEOUT_ERRORS:
            upstream.closed()
            failed(span, "timeout")
            return None, attempt_of(channel, "timeout", started)
        except TRANSPORT_ERRORS:
            upstream.closed()
            failed(span, "connect_error")
            return None, attempt_of(channel, "connect_error", started)
        except BaseException:
            upstream.closed()
            raise
        answered(span, response.status)
    if response.status != 200:
        try:
            await response.read()
        except (*TRANSPORT_ERRORS, *TIMEOUT_ERRORS):
            pass
        finally:
            response.release()
            upstream.closed()
        return None, attempt_of(channel, f"http_{response.status}", started)
    stream = (
        UpstreamStream(response, upstream)
        if reader is None
        else TranslatedStream(response, upstream, reader)
    )
    return stream, attempt_of(channel, "ok", started)
