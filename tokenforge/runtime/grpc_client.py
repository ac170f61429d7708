"""Call another service over gRPC: one channel per peer, a deadline on every call,
the caller's credential attached, and rich statuses turned back into DomainError.

Every call is a CLIENT span (`rpc.system`, `rpc.service`, `rpc.method`) whose context
travels in the call's metadata (W3C `traceparent`), so the callee's server span joins
the caller's trace. It is made here rather than by the OpenTelemetry gRPC client
interceptor: in grpc.aio any client interceptor wraps each call in an intercepted
call with tasks of its own, which cost the gateway about a fifth of its CPU per
request (docs/PERFORMANCE.md); the span and the propagation are the same.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tokenforge.errors import DomainError, Reason
from tokenforge.runtime.logging import request_id_var

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 5.0

Resp = TypeVar("Resp")

tracer = trace.get_tracer(__name__)


# A peer that went away (a restart, a rollout) is dialled again within 5 s of its
# return; gRPC's default backoff grows to 2 minutes, during which every call fails.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def open_channel(address: str) -> grpc.aio.Channel:
    """One channel per peer, reused for every call (no interceptor: see above)."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def method_names(method: Any) -> tuple[str, str]:
    """(service, method) of a stub's method, e.g. ("tokenforge.wallet.v1.WalletService",
    "Hold")."""
    path = getattr(method, "_method", b"")
    text = path.decode() if isinstance(path, bytes) else str(path)
    service, _, name = text.strip("/").rpartition("/")
    return service, name


class Peer:
    """A service we call: its channel, our credential, and its name for errors."""

    def __init__(self, name: str, address: str, token: str) -> None:
        self.name = name
        self.address = address
        self.channel = open_channel(address)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def call(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: Any,
        *,
        timeout: float = DEFAULT_DEADLINE_S,
        request_id: str = "",
    ) -> Resp:
        metadata = self._metadata
        # The request being served (gateway middleware, server interceptors) names
        # the call when the caller did not: every service logs the same request id.
        request_id = request_id or request_id_var.get()
        if request_id:
            metadata = (*metadata, ("x-request-id", request_id))
        service, name = method_names(method)
        with tracer.start_as_current_span(
            f"{service}/{name}",
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                "server.address": self.address,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            try:
                return await method(
                    request, timeout=timeout, metadata=(*metadata, *carrier.items())
                )
            except grpc.aio.AioRpcError as err:
                span.set_attribute("rpc.grpc.status_code", err.code().value[0])
                span.set_status(Status(StatusCode.ERROR, err.code().name))
                raise to_domain_error(err, self.name) from err

    def as_caller(self, token: str) -> Peer:
        """The same peer and channel, called with another credential (the gateway's
        operator console passes on the operator's own); closing it closes nothing."""
        other = copy.copy(self)
        other._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return other

    async def close(self) -> None:
        await self.channel.close()


def to_domain_error(err: grpc.aio.AioRpcError, peer: str) -> DomainError:
    """Read the ErrorInfo of a rich status; a peer that is down is SERVICE_UNAVAILABLE.

    Only a rich status's message (a refusal the peer wrote for its caller) is passed
    on; the details of any other status (grpc's own text, an exception's) go to the
    log, never into the message a user may see."""
    code = err.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return DomainError(
            Reason.SERVICE_UNAVAILABLE,
            f"The {peer} service is not answering right now; nothing was charged. "
            "Try again in a moment.",
            {"service": peer},
        )
    if code is grpc.StatusCode.UNIMPLEMENTED:
        # An older version of the peer (a rolling upgrade): batching clients fall back.
        return DomainError(
            Reason.INTERNAL,
            f"The {peer} service does not offer this call; it may run an older version.",
            {"service": peer, "grpc_code": "UNIMPLEMENTED"},
        )
    status = rpc_status.from_call(err)
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR):
                detail.Unpack(info)
                try:
                    reason = Reason(info.reason)
                except ValueError:
                    reason = Reason.INTERNAL
                return DomainError(reason, status.message, dict(info.metadata))
    log.warning("the %s service answered %s: %s", peer, code.name, err.details())
    return DomainError(
        Reason.INTERNAL,
        f"The {peer} service failed unexpectedly ({code.name}).",
        {"service": peer, "grpc_code": code.name},
    )
