"""Call another service over gRPC: one channel per peer, a deadline on every call,
the caller's credential attached, and rich statuses turned back into DomainError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from tokenforge.errors import DomainError, Reason
from tokenforge.runtime.logging import request_id_var

DEFAULT_DEADLINE_S = 5.0

Resp = TypeVar("Resp")


def open_channel(address: str) -> grpc.aio.Channel:
    """One channel per peer, reused for every call (traced)."""
    return grpc.aio.insecure_channel(
        address,
        interceptors=aio_client_interceptors(),  # type: ignore[no-untyped-call]
        options=[("grpc.keepalive_time_ms", 30_000)],
    )


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
        try:
            return await method(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            raise to_domain_error(err, self.name) from err

    async def close(self) -> None:
        await self.channel.close()


def to_domain_error(err: grpc.aio.AioRpcError, peer: str) -> DomainError:
    """Read the ErrorInfo of a rich status; a peer that is down is SERVICE_UNAVAILABLE."""
    code = err.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return DomainError(
            Reason.SERVICE_UNAVAILABLE,
            f"The {peer} service is not answering right now; nothing was charged. "
            "Try again in a moment.",
            {"service": peer},
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
    return DomainError(
        Reason.INTERNAL, f"The {peer} service failed: {code.name} {err.details()}", {}
    )
