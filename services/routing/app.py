"""Wires the routing service: catalog file, database, gRPC server."""

from __future__ import annotations

import logging
from pathlib import Path

from services.routing.storage.catalog_file import DEMO_CATALOG, CatalogFile
from services.routing.storage.unit_of_work import SqlAlchemyUnitOfWork
from services.routing.transport.grpc import RoutingServicer
from tokenforge.config import Settings
from tokenforge.routing.v1 import routing_pb2_grpc
from tokenforge.runtime.db import create_engine, sessionmaker, upgrade
from tokenforge.runtime.grpc_server import AccessPolicy, Credentials, Role, create_server
from tokenforge.runtime.service import RunningService

SCHEMA = "routing"
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = "tokenforge.routing.v1.RoutingService"

log = logging.getLogger(__name__)

INTERNAL = frozenset({Role.INTERNAL})
EITHER = frozenset({Role.INTERNAL, Role.OPERATOR})
# Resolve and Authenticate take a customer's API key: only the gateway asks them.
POLICY = AccessPolicy(
    {
        "Resolve": INTERNAL,
        "Authenticate": INTERNAL,
        "ListModels": EITHER,
        "OpenAccount": EITHER,
        "CreateApiKey": EITHER,
    }
)


def migrate(database_url: str) -> None:
    upgrade(MIGRATIONS, database_url, SCHEMA)


async def start(settings: Settings, port: int = 0) -> RunningService:
    catalog = CatalogFile(Path(settings.catalog_path) if settings.catalog_path else DEMO_CATALOG)
    engine = create_engine(settings.database_url)
    sessions = sessionmaker(engine)
    servicer = RoutingServicer(lambda: SqlAlchemyUnitOfWork(sessions), catalog.current)
    credentials = (
        Credentials(settings.internal_token, settings.admin_token)
        if settings.internal_token or settings.admin_token
        else None
    )
    server = create_server(
        [(routing_pb2_grpc.add_RoutingServiceServicer_to_server, servicer, SERVICE_NAME)],
        port=port,
        credentials=credentials,
        policy=POLICY,
    )
    await server.server.start()
    await server.set_serving()
    log.info("routing serving on port %s, catalog %s", server.port, catalog.current().version)
    return RunningService("routing", server, on_stop=[engine.dispose])
