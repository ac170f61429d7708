"""What the per-service integration suites share: their credentials, a service
migrated and started once on the session's database, and a caller (the service's
stub plus the peer that attaches a credential and maps errors)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

from tokenforge.config import Settings
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService

INTERNAL = "t-internal"
ADMIN = "t-admin"


class Caller:
    """`await caller.call("Method", request)`: the stub's method through the peer."""

    stub_class: ClassVar[Any]

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.stub = self.stub_class(peer.channel)

    async def call(self, method: str, request: Any) -> Any:
        return await self.peer.call(getattr(self.stub, method), request)


C = TypeVar("C", bound=Caller)


@asynccontextmanager
async def started(app: Any, database_url: str, **settings: Any) -> AsyncIterator[RunningService]:
    """The service (`services.<context>.app`) migrated and started on a free port with
    the test credentials (and `settings`); stopped at the end."""
    await asyncio.to_thread(app.migrate, database_url)
    running: RunningService = await app.start(
        Settings(database_url=database_url, internal_token=INTERNAL, admin_token=ADMIN, **settings),
        port=0,
    )
    try:
        yield running
    finally:
        await running.stop()


@asynccontextmanager
async def calling(kind: type[C], service: RunningService, token: str) -> AsyncIterator[C]:
    """A caller of the running service with `token` (INTERNAL or ADMIN)."""
    peer = Peer(service.name, service.address, token)
    try:
        yield kind(peer)
    finally:
        await peer.close()
