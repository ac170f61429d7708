"""Calling an upstream channel over HTTP (one pooled, traced httpx client)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from tokenforge.routing.v1 import routing_pb2
from tokenforge.runtime import metrics


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
    def __init__(self) -> None:
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
            timeout=httpx.Timeout(60.0),
        )
        HTTPXClientInstrumentor().instrument_client(self.client)

    async def post_json(
        self, channel: routing_pb2.Channel, path: str, body: dict[str, Any]
    ) -> UpstreamAnswer:
        """POST to one channel; network failures become an answer with status 0."""
        url, headers, timeout = channel_request(channel, path)
        started = time.monotonic()
        try:
            response = await self.client.post(
                url, content=orjson.dumps(body), headers=headers, timeout=timeout
            )
        except httpx.TimeoutException:
            return UpstreamAnswer(0, None, attempt_of(channel, "timeout", started))
        except httpx.TransportError:
            return UpstreamAnswer(0, None, attempt_of(channel, "connect_error", started))
        payload: dict[str, Any] | None
        try:
            parsed = orjson.loads(response.content)
            payload = parsed if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            payload = None
        ok = response.status_code == 200 and payload is not None
        outcome = "ok" if ok else f"http_{response.status_code}"
        return UpstreamAnswer(response.status_code, payload, attempt_of(channel, outcome, started))

    async def close(self) -> None:
        await self.client.aclose()


def channel_request(
    channel: routing_pb2.Channel, path: str
) -> tuple[str, dict[str, str], httpx.Timeout]:
    """URL, headers (with the channel's key) and the per-channel timeouts.

    `read` is the time to the first byte and then between bytes of a stream.
    """
    timeout = httpx.Timeout(
        (channel.total_timeout_ms or 60_000) / 1000,
        connect=(channel.connect_timeout_ms or 5_000) / 1000,
        read=(channel.first_byte_timeout_ms or channel.total_timeout_ms or 60_000) / 1000,
    )
    headers = {"content-type": "application/json"}
    if secret := channel_secret(channel.secret_name):
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
