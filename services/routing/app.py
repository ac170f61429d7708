"""Wires the routing service: the versioned catalog, database, gRPC server, and the
background tasks (catalog poll every 2 s, counter sweep every minute)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from services.routing import handlers, metrics
from services.routing.domain.health import HealthBoard
from services.routing.storage.catalog_file import DEMO_CATALOG
from services.routing.storage.catalog_store import CatalogStore
from services.routing.storage.key_cache import KeyCache
from services.routing.storage.unit_of_work import SqlAlchemyUnitOfWork
from services.routing.transport.grpc import RoutingServicer
from tokenforge.config import Settings
from tokenforge.generated.routing.v1 import routing_pb2_grpc
from tokenforge.prod_mode import refuse_unsafe_prod
from tokenforge.runtime.db import create_engine, sessionmaker, upgrade
from tokenforge.runtime.grpc_server import AccessPolicy, Credentials, Role, create_server
from tokenforge.runtime.service import RunningService

SCHEMA = "routing"
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = "tokenforge.routing.v1.RoutingService"

log = logging.getLogger(__name__)

INTERNAL = frozenset({Role.INTERNAL})
EITHER = frozenset({Role.INTERNAL, Role.OPERATOR})
OPERATOR = frozenset({Role.OPERATOR})
# Resolve and Authenticate take a customer's API key: only the gateway asks them.
POLICY = AccessPolicy(
    {
        "Resolve": INTERNAL,
        "Authenticate": INTERNAL,
        "ListModels": EITHER,
        "OpenAccount": EITHER,
        "CreateApiKey": EITHER,
        # The gateway calls these for the user API after checking the key's scope.
        "ListApiKeys": EITHER,
        "RevokeApiKey": EITHER,
        "RotateApiKey": EITHER,
        "ReportOutcome": INTERNAL,
        "ReportOutcomes": INTERNAL,
        "GetHealth": EITHER,
        "GetCatalog": OPERATOR,
        "PutCatalog": OPERATOR,
        "ListCatalogVersions": OPERATOR,
    }
)
SWEEP_EVERY_S = 60.0


def migrate(database_url: str) -> None:
    upgrade(MIGRATIONS, database_url, SCHEMA)


async def _sweep_forever(uow_factory: Callable[[], SqlAlchemyUnitOfWork]) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        try:
            await handlers.sweep_counters(uow_factory())
        except Exception:
            log.exception("counter sweep failed; retrying")


async def start(settings: Settings, port: int = 0) -> RunningService:
    refuse_unsafe_prod(settings, "routing")
    engine = create_engine(settings.database_url)
    sessions = sessionmaker(engine)

    def uow() -> SqlAlchemyUnitOfWork:
        return SqlAlchemyUnitOfWork(sessions)

    bootstrap = Path(settings.catalog_path) if settings.catalog_path else DEMO_CATALOG
    catalog = CatalogStore(uow, bootstrap)
    await catalog.start()
    board = HealthBoard()
    servicer = RoutingServicer(
        uow,
        catalog.current,
        store=catalog,
        cache=KeyCache(),
        health=board,
        resolve_reuse_ms=settings.resolve_reuse_ms,
    )
    unwatch = metrics.BREAKERS.watch(board, catalog.current)
    credentials = Credentials.from_settings(settings)
    server = create_server(
        [(routing_pb2_grpc.add_RoutingServiceServicer_to_server, servicer, SERVICE_NAME)],
        port=port,
        credentials=credentials,
        policy=POLICY,
    )
    await server.server.start()
    tasks = [
        asyncio.create_task(catalog.poll_forever(), name="routing-catalog-poll"),
        asyncio.create_task(_sweep_forever(uow), name="routing-counter-sweep"),
    ]

    async def stop_tasks() -> None:
        unwatch()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    await server.set_serving()
    log.info("routing serving on port %s, catalog %s", server.port, catalog.current().version)
    return RunningService("routing", server, on_stop=[engine.dispose, stop_tasks])
