"""Usage started once against the real PostgreSQL of the session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.usage import app
from tests.integration.services import ADMIN, INTERNAL, Caller, calling, started
from tokenforge.generated.usage.v1 import usage_pb2_grpc
from tokenforge.runtime.service import RunningService

__all__ = ["ADMIN", "INTERNAL", "Usage"]


class Usage(Caller):
    stub_class = usage_pb2_grpc.UsageServiceStub


@pytest.fixture(scope="session")
async def usage_app(database_url: str) -> AsyncIterator[RunningService]:
    async with started(app, database_url) as running:
        yield running


@pytest.fixture(scope="session")
async def usage(usage_app: RunningService) -> AsyncIterator[Usage]:
    async with calling(Usage, usage_app, INTERNAL) as caller:
        yield caller


@pytest.fixture(scope="session")
async def usage_operator(usage_app: RunningService) -> AsyncIterator[Usage]:
    async with calling(Usage, usage_app, ADMIN) as caller:
        yield caller
