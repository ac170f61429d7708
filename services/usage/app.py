"""Wires the usage service: database, gRPC server."""

from __future__ import annotations

import logging
from pathlib import Path

from services.usage.storage.unit_of_work import SqlAlchemyUnitOfWork
from services.usage.transport.grpc import UsageServicer
from services.usage.transport.wallet_records import WalletRecords
from tokenforge.config import Settings
from tokenforge.generated.usage.v1 import usage_pb2_grpc
from tokenforge.prod_mode import refuse_unsafe_prod
from tokenforge.runtime.db import create_engine, sessionmaker, upgrade
from tokenforge.runtime.grpc_server import AccessPolicy, Credentials, Role, create_server
from tokenforge.runtime.service import RunningService

SCHEMA = "usage"
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = "tokenforge.usage.v1.UsageService"

log = logging.getLogger(__name__)

# Receipts are written by the gateway only; operators (the CLI) may read them.
POLICY = AccessPolicy(
    {
        "RecordReceipt": frozenset({Role.INTERNAL}),
        "RecordReceipts": frozenset({Role.INTERNAL}),
        "GetReceipt": frozenset({Role.INTERNAL, Role.OPERATOR}),
        "ListReceipts": frozenset({Role.INTERNAL, Role.OPERATOR}),
        "AggregateReceipts": frozenset({Role.INTERNAL, Role.OPERATOR}),
        # Runs move money on the wallet through the gateway only.
        "OpenRun": frozenset({Role.INTERNAL}),
        "ReserveFromRun": frozenset({Role.INTERNAL}),
        "CloseRun": frozenset({Role.INTERNAL}),
        "FinishRun": frozenset({Role.INTERNAL}),
        "ExpireRuns": frozenset({Role.INTERNAL}),
        "GetRun": frozenset({Role.INTERNAL, Role.OPERATOR}),
        "GetRunReceipt": frozenset({Role.INTERNAL, Role.OPERATOR}),
        "Reconcile": frozenset({Role.OPERATOR}),
    }
)


def migrate(database_url: str) -> None:
    upgrade(MIGRATIONS, database_url, SCHEMA)


async def start(settings: Settings, port: int = 0) -> RunningService:
    refuse_unsafe_prod(settings, "usage")
    engine = create_engine(settings.database_url)
    sessions = sessionmaker(engine)
    # Reconcile reads the wallet's holds and ledger rows through the wallet's client,
    # with the credential of the operator who asked.
    wallet_addr = settings.wallet_addr
    servicer = UsageServicer(
        lambda: SqlAlchemyUnitOfWork(sessions),
        (lambda token: WalletRecords.connect(wallet_addr, token)) if wallet_addr else None,
    )
    credentials = Credentials.from_settings(settings)
    server = create_server(
        [(usage_pb2_grpc.add_UsageServiceServicer_to_server, servicer, SERVICE_NAME)],
        port=port,
        credentials=credentials,
        policy=POLICY,
    )
    await server.server.start()
    await server.set_serving()
    log.info("usage serving on port %s", server.port)
    return RunningService("usage", server, on_stop=[engine.dispose])
