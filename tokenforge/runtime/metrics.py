"""Prometheus metrics every service shares: gRPC calls by method, and the calls our
typed clients send (batch sizes, reused Resolve answers). Each process serves them on
TOKENFORGE_METRICS_HOST:TOKENFORGE_METRICS_PORT (`tokenforge serve` starts the endpoint
with `start_metrics_server`; the host is loopback unless configured).

Service-specific metrics (HTTP requests, upstream calls, charges and receipts; holds,
orders, outbox, consumer lag, breakers) live in `services/<context>/metrics.py`, named
`tokenforge_<context>_...` except the gateway's older names (GATEWAY_METRICS). A
service's endpoint exports only its own and the shared ones (`ServiceMetrics`),
whatever modules its process imported.

The server interceptor also carries the caller's `x-request-id` (gRPC metadata the
gateway sends) into `request_id_var` for the call, so every log line a call writes,
in every service, names the request; and it writes one access line per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from tokenforge.config import Settings

from tokenforge.runtime.logging import request_id_var

# One line per served call (method, status, time); quieten with the logger's level.
access_log = logging.getLogger("tokenforge.grpc.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

GRPC_HANDLED = Counter(
    "tokenforge_grpc_server_handled_total",
    "gRPC calls handled, by method and status code.",
    ["method", "code"],
)
GRPC_LATENCY = Histogram(
    "tokenforge_grpc_server_handling_seconds",
    "gRPC handling time, by method.",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
BATCH_ITEMS = Histogram(
    "tokenforge_client_batch_items",
    "Items per call our clients send (1: the unary call, alone; more: a batch call), "
    "by call (e.g. wallet.Hold).",
    ["call"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
RESOLVES = Counter(
    "tokenforge_routing_client_resolves_total",
    "Resolve answers the gateway used, by where they came from: routing (a call) or "
    "reused (a reusable answer of the last second).",
    ["answered"],
)


# The gateway's metrics defined in this module (the request path, upstream calls,
# receipts and budgets); the others here are every service's (gRPC served, clients'
# batches). A service's own module names its metrics `tokenforge_<service>_...`.
GATEWAY_METRICS = frozenset(
    {
        "tokenforge_http_requests",
        "tokenforge_http_request_seconds",
        "tokenforge_upstream_seconds",
        "tokenforge_upstream_time_to_first_token_seconds",
        "tokenforge_upstream_errors",
        "tokenforge_routing_client_resolves",
        "tokenforge_charges_micros",
        "tokenforge_receipts",
        "tokenforge_receipts_queued",
        "tokenforge_receipts_relayed",
        "tokenforge_receipts_waiting",
        "tokenforge_budget_draws",
        "tokenforge_budgets",
        "tokenforge_charges_not_collected",
        "tokenforge_upstream_open_connections",
    }
)
SERVICES = ("gateway", "routing", "wallet", "payments", "usage")


def owner(family: str) -> str:
    """The service a metric family belongs to; "" for every service's own."""
    if family in GATEWAY_METRICS:
        return "gateway"
    for service in SERVICES:
        if family.startswith(f"tokenforge_{service}_"):
            return service
    return ""


class ServiceMetrics:
    """The process's metrics a service exports: its own and every service's (gRPC
    served, process), never another service's (a process imports their modules)."""

    def __init__(self, service: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.service = service
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if owner(family.name) in ("", self.service):
                yield family


def start_metrics_server(settings: Settings, service: str = "") -> WSGIServer | None:
    """The `/metrics` endpoint on settings.metrics_host:metrics_port, in a thread of its
    own; None when no port is configured. Loopback unless TOKENFORGE_METRICS_HOST says
    otherwise: the counters name methods, routes and channels, and nobody outside the
    host (or the pod, where Prometheus is let in on purpose) needs to read them.
    `service`: export only that service's metrics (ServiceMetrics); "" exports all."""
    if not settings.metrics_port:
        return None
    registry = REGISTRY
    if service:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServiceMetrics(service))
    server, _ = start_http_server(
        settings.metrics_port, addr=settings.metrics_host, registry=registry
    )
    return server


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts, times and logs every unary call by its full method name, with the
    caller's request id (`x-request-id` metadata) set for the call's log lines."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None or method.startswith("/grpc."):
            return handler
        inner = handler.unary_unary
        request_id = _request_id(details.invocation_metadata or ())

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            token = request_id_var.set(request_id) if request_id else None
            if request_id:
                trace.get_current_span().set_attribute("tokenforge.request_id", request_id)
            try:
                return await inner(request, context)
            except BaseException:
                code = _code_name(context) or "UNKNOWN"
                raise
            finally:
                if code == "OK":
                    code = _code_name(context) or "OK"
                elapsed = time.perf_counter() - started
                GRPC_HANDLED.labels(method, code).inc()
                GRPC_LATENCY.labels(method).observe(elapsed)
                access_log.info("%s %s in %.1f ms", method, code, elapsed * 1000)
                if token is not None:
                    request_id_var.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _request_id(metadata: Any) -> str:
    for key, value in metadata:
        if key == "x-request-id" and isinstance(value, str):
            return value[:128]
    return ""


def _code_name(context: grpc.aio.ServicerContext) -> str | None:
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - older grpc has no code() on the aio context
        return None
    if code is None:
        return None
    return str(code.name) if isinstance(code, grpc.StatusCode) else str(code)
