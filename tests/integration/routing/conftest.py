"""Routing started once against the real PostgreSQL of the session (demo catalog)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing import app
from services.routing.storage.unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork
from tests.integration.services import ADMIN, INTERNAL, Caller, calling, started
from tokenforge.generated.routing.v1 import routing_pb2, routing_pb2_grpc
from tokenforge.runtime.db import create_engine, sessionmaker
from tokenforge.runtime.service import RunningService

__all__ = ["ADMIN", "INTERNAL", "Routing"]


class Routing(Caller):
    stub_class = routing_pb2_grpc.RoutingServiceStub

    async def open_account(self) -> tuple[str, str]:
        account = f"acct-{uuid.uuid4()}"
        opened = await self.call(
            "OpenAccount", routing_pb2.OpenAccountRequest(account_id=account, display_name="Test")
        )
        return account, opened.project_id

    async def new_key(
        self, account: str = "", scopes: list[routing_pb2.Scope] | None = None
    ) -> str:
        if not account:
            account, _ = await self.open_account()
        created = await self.call(
            "CreateApiKey",
            routing_pb2.CreateApiKeyRequest(account_id=account, name="test", scopes=scopes or []),
        )
        return str(created.api_key)

    async def resolve(
        self,
        api_key: str,
        model: str,
        endpoint: routing_pb2.Endpoint = routing_pb2.ENDPOINT_CHAT_COMPLETIONS,
    ) -> Any:
        return await self.call(
            "Resolve", routing_pb2.ResolveRequest(api_key=api_key, model=model, endpoint=endpoint)
        )


@pytest.fixture(scope="session")
async def routing_app(database_url: str) -> AsyncIterator[RunningService]:
    async with started(app, database_url) as running:
        yield running


@pytest.fixture(scope="session")
async def routing(routing_app: RunningService) -> AsyncIterator[Routing]:
    async with calling(Routing, routing_app, INTERNAL) as caller:
        yield caller


@pytest.fixture(scope="session")
async def routing_operator(routing_app: RunningService) -> AsyncIterator[Routing]:
    async with calling(Routing, routing_app, ADMIN) as caller:
        yield caller


@pytest.fixture(scope="session")
async def routing_engine(
    routing_app: RunningService, database_url: str
) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def routing_uow(routing_engine: AsyncEngine) -> Callable[[], UnitOfWork]:
    sessions = sessionmaker(routing_engine)
    return lambda: SqlAlchemyUnitOfWork(sessions)
