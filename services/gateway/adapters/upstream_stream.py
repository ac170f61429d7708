"""Opening a streaming call to an upstream channel: headers first, so a failure before
the first byte can still move to the next channel."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from services.gateway.adapters.upstream import Attempt, Upstream, attempt_of, channel_request
from tokenforge.routing.v1 import routing_pb2


async def open_stream(
    upstream: Upstream, channel: routing_pb2.Channel, path: str, body: dict[str, Any]
) -> tuple[httpx.Response | None, Attempt]:
    """Send the request and wait for the status line; the body is read by the caller."""
    url, headers, timeout = channel_request(channel, path)
    request = upstream.client.build_request(
        "POST", url, content=orjson.dumps(body), headers=headers, timeout=timeout
    )
    started = time.monotonic()
    try:
        response = await upstream.client.send(request, stream=True)
    except httpx.TimeoutException:
        return None, attempt_of(channel, "timeout", started)
    except httpx.TransportError:
        return None, attempt_of(channel, "connect_error", started)
    if response.status_code != 200:
        await response.aread()
        await response.aclose()
        return None, attempt_of(channel, f"http_{response.status_code}", started)
    return response, attempt_of(channel, "ok", started)
