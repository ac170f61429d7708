"""NATS JetStream: the connection, the PAYMENTS stream, and W3C trace context
carried by hand in message headers (no instrumentation exists for nats-py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

PAYMENTS_STREAM = "PAYMENTS"
# An order event's header naming the traceparent of the call that created the order
# (the event's own traceparent is the call that moved it): publish spans link to it.
ORDER_TRACEPARENT_HEADER = "tokenforge-order-traceparent"
PAYMENTS_SUBJECTS = "tokenforge.payments.v1.topup.>"
T = TypeVar("T")
# Tries of `while_cluster_settles` against a cluster that answers 503 (about 14 s in all).
ENSURE_ATTEMPTS = 10


# NATS users and what each may do (docs/DEPLOY.md, "NATS users"). Only payments may
# publish top-up events; the wallet may only read and ack its own durable consumer
# and copy refused events to its dead-letter subject; `operator` (people, tests) may
# do anything. deploy/k8s/*/nats.conf say the same for Kubernetes.
WALLET_DURABLE = "wallet-topup-credits"
DEADLETTER_STREAM = "DEADLETTER"
WALLET_DEADLETTER_SUBJECT = "tokenforge.payments.v1.deadletter.wallet"
OPERATOR_USER = "operator"


@dataclass(frozen=True)
class Permissions:
    """Subjects a NATS user may publish to and subscribe on (nats-server's
    `authorization.users[].permissions`; everything else is refused)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _consumer_api(stream: str, durable: str) -> tuple[str, ...]:
    return (
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
        f"$JS.ACK.*.*.{stream}.{durable}.>",
    )


NATS_PERMISSIONS: dict[str, Permissions] = {
    "payments": Permissions(
        publish=(
            PAYMENTS_SUBJECTS,
            f"$JS.API.STREAM.INFO.{PAYMENTS_STREAM}",
            f"$JS.API.STREAM.CREATE.{PAYMENTS_STREAM}",
            f"$JS.API.STREAM.UPDATE.{PAYMENTS_STREAM}",
        ),
        subscribe=("_INBOX.>",),
    ),
    "wallet": Permissions(
        publish=(
            WALLET_DEADLETTER_SUBJECT,
            f"$JS.API.STREAM.INFO.{PAYMENTS_STREAM}",
            f"$JS.API.STREAM.CREATE.{PAYMENTS_STREAM}",
            f"$JS.API.STREAM.UPDATE.{PAYMENTS_STREAM}",
            f"$JS.API.STREAM.INFO.{DEADLETTER_STREAM}",
            f"$JS.API.STREAM.CREATE.{DEADLETTER_STREAM}",
            f"$JS.API.STREAM.UPDATE.{DEADLETTER_STREAM}",
            *_consumer_api(PAYMENTS_STREAM, WALLET_DURABLE),
        ),
        subscribe=("_INBOX.>",),
    ),
    OPERATOR_USER: Permissions(publish=(">",), subscribe=(">",)),
}


def with_credentials(url: str, user: str, password: str) -> str:
    """`nats://host:port` -> `nats://user:password@host:port`."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest.rpartition('@')[2]}"


def topup_subject(event: str) -> str:
    return f"tokenforge.payments.v1.topup.{event}"


async def connect(url: str, name: str, *, ca_file: str = "") -> Client:
    """A connection that reconnects forever. The URL carries this service's NATS user
    and password (`nats://wallet:<password>@host:4222`); several comma-separated URLs
    name a cluster's servers, and the servers the cluster announces are used with the
    same user. `tls://` verifies the server against the system's CAs, or against
    `ca_file` (TOKENFORGE_NATS_CA_FILE)."""
    tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
    servers = [u.strip() for u in url.split(",") if u.strip()]
    parts = urlsplit(servers[0]) if servers else None
    return await nats.connect(
        servers,
        user=unquote(parts.username) if parts and parts.username else None,
        password=unquote(parts.password) if parts and parts.password else None,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        tls=tls,
    )


async def ensure_payments_stream(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the PAYMENTS stream with `replicas` copies (TOKENFORGE_NATS_REPLICAS), or
    bring an existing one to that many; duplicates are dropped by Nats-Msg-Id."""
    config = StreamConfig(
        name=PAYMENTS_STREAM,
        subjects=[PAYMENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=24 * 3600.0,
        num_replicas=max(1, replicas),
    )
    await ensure_stream(js, config)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create `config`'s stream, or update an existing one whose replica count differs
    (JetStream moves it to that many servers; its messages stay)."""
    assert config.name is not None
    name = config.name

    async def ensure() -> None:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(config)
            return
        if (info.config.num_replicas or 1) != (config.num_replicas or 1):
            await js.update_stream(replace(info.config, num_replicas=config.num_replicas))

    await while_cluster_settles(ensure)


async def while_cluster_settles(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, asked again while a JetStream cluster is electing a leader (no answer)
    or still placing a stream's replicas (503 "insufficient resources")."""
    for attempt in range(ENSURE_ATTEMPTS - 1):
        try:
            return await call()
        except (ServiceUnavailableError, nats.errors.TimeoutError):
            await asyncio.sleep(0.25 * (attempt + 1))
    return await call()


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
