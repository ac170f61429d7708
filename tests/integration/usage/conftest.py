"""Usage started once against the real PostgreSQL of the session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.usage import app
from tokenforge.config import Settings
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService
from tokenforge.usage.v1 import usage_pb2_grpc

INTERNAL = "t-internal"
ADMIN = "t-admin"


class Usage:
    """The stub plus the peer that attaches a credential and maps errors."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.stub = usage_pb2_grpc.UsageServiceStub(peer.channel)

    async def call(self, method: str, request: Any) -> Any:
        return await self.peer.call(getattr(self.stub, method), request)


@pytest.fixture(scope="session")
async def usage_app(database_url: str) -> AsyncIterator[RunningService]:
    await asyncio.to_thread(app.migrate, database_url)
    running = await app.start(
        Settings(database_url=database_url, internal_token=INTERNAL, admin_token=ADMIN), port=0
    )
    yield running
    await running.stop()


@pytest.fixture(scope="session")
async def usage(usage_app: RunningService) -> AsyncIterator[Usage]:
    peer = Peer("usage", usage_app.address, INTERNAL)
    yield Usage(peer)
    await peer.close()


@pytest.fixture(scope="session")
async def usage_operator(usage_app: RunningService) -> AsyncIterator[Usage]:
    peer = Peer("usage", usage_app.address, ADMIN)
    yield Usage(peer)
    await peer.close()
