"""Wires the wallet: engine, servicer, gRPC server, hold-expiry sweeper, top-up consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.payments.client import PaymentsClient
from services.wallet import handlers, metrics
from services.wallet.domain import commands
from services.wallet.storage.unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork
from services.wallet.transport.grpc import WalletServicer
from services.wallet.transport.nats_consumer import DURABLE, TopUpConsumer
from tokenforge.config import Settings
from tokenforge.generated.wallet.v1 import wallet_pb2_grpc
from tokenforge.money import configure_labels
from tokenforge.prod_mode import refuse_unsafe_prod
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.db import create_engine, sessionmaker, upgrade
from tokenforge.runtime.grpc_server import AccessPolicy, Credentials, Role, create_server
from tokenforge.runtime.nats import PAYMENTS_STREAM
from tokenforge.runtime.service import RunningService

log = logging.getLogger(__name__)

SCHEMA = "wallet"
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = "tokenforge.wallet.v1.WalletService"
SWEEP_INTERVAL_S = 1.0

# Who may call what (callers are named by TOKENFORGE_CALLER_TOKENS; "internal" is the
# shared internal token, kept so single-token deployments and tests still work):
# - holds (Hold/Settle/CapturePart/Release/ExtendHold): the gateway, which runs requests, and
#   operators; no other service reserves or charges money. A batch method (HoldMany,
#   SettleMany, CapturePartMany, ReleaseMany) is open to exactly who may call its
#   unary method;
# - Credit: only the shared internal credential. Paid top-ups arrive on NATS and are
#   credited in-process by the wallet's own consumer, so no service needs Credit over
#   gRPC; operators correct balances with Adjust, never with a fake top-up;
# - Adjust/Reverse (corrections with a reason) and Reconcile: operators only;
# - reads (balances, ledger, holds) and OpenAccount: every authenticated caller.
HOLD_CALLERS = frozenset({"gateway", "internal"})
HOLD_ROLES = frozenset({Role.OPERATOR})
POLICY = AccessPolicy(
    rules={
        "Hold": HOLD_ROLES,
        "HoldMany": HOLD_ROLES,
        "Settle": HOLD_ROLES,
        "SettleMany": HOLD_ROLES,
        "CapturePart": HOLD_ROLES,
        "CapturePartMany": HOLD_ROLES,
        "Release": HOLD_ROLES,
        "ReleaseMany": HOLD_ROLES,
        "ExtendHold": HOLD_ROLES,
        "Credit": frozenset(),
        "Adjust": frozenset({Role.OPERATOR}),
        "Reverse": frozenset({Role.OPERATOR}),
        "Reconcile": frozenset({Role.OPERATOR}),
    },
    callers={
        "Hold": HOLD_CALLERS,
        "HoldMany": HOLD_CALLERS,
        "Settle": HOLD_CALLERS,
        "SettleMany": HOLD_CALLERS,
        "CapturePart": HOLD_CALLERS,
        "CapturePartMany": HOLD_CALLERS,
        "Release": HOLD_CALLERS,
        "ReleaseMany": HOLD_CALLERS,
        "ExtendHold": HOLD_CALLERS,
        "Credit": frozenset({"internal"}),
    },
)
# Enough connections for a burst of concurrent holds (pool + overflow = 64).
DB_POOL_SIZE = 32


def migrate(database_url: str) -> None:
    upgrade(MIGRATIONS, database_url, SCHEMA)


async def sweep_expired_holds(uow: UnitOfWork) -> int:
    """Expire every open hold past its TTL now (the sweeper's one pass; tests call it)."""
    total = 0
    while True:
        ended = await handlers.expire_holds(commands.ExpireHolds(limit=500), uow)
        total += ended
        if ended < 500:
            return total


async def _sweep_forever(uow: UnitOfWork) -> None:
    while True:
        try:
            ended = await sweep_expired_holds(uow)
            if ended:
                log.info("expired %s holds past their TTL", ended)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("hold expiry sweep failed; retrying")
        await asyncio.sleep(SWEEP_INTERVAL_S)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def start(settings: Settings, port: int = 0) -> RunningService:
    refuse_unsafe_prod(settings, "wallet")
    configure_labels(settings.bucket_labels)
    engine = create_engine(settings.database_url, pool_size=DB_POOL_SIZE)
    sessions = sessionmaker(engine)

    def uow_factory() -> UnitOfWork:
        return SqlAlchemyUnitOfWork(sessions)

    server = create_server(
        [
            (
                wallet_pb2_grpc.add_WalletServiceServicer_to_server,
                WalletServicer(uow_factory),
                SERVICE_NAME,
            )
        ],
        port=port,
        credentials=Credentials.from_settings(settings),
        policy=POLICY,
    )
    await server.server.start()

    sweeper = asyncio.create_task(_sweep_forever(uow_factory()), name="wallet-hold-sweeper")

    async def stop_sweeper() -> None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    on_stop: list[Callable[[], Awaitable[None]]] = [engine.dispose, stop_sweeper]
    if settings.nats_url:
        if not settings.payments_addr:
            raise ValueError(
                "The wallet credits a top-up only once payments confirms the order: set "
                "TOKENFORGE_PAYMENTS_ADDR (payments' gRPC host:port) with TOKENFORGE_NATS_URL."
            )
        payments = PaymentsClient.connect(settings.payments_addr, settings.peer_token)
        on_stop.append(payments.close)
        nc = await tf_nats.connect(settings.nats_url, "wallet", ca_file=settings.nats_ca_file)
        consumer = TopUpConsumer(nc, uow_factory, payments, replicas=settings.nats_replicas)
        await consumer.start()
        lag = asyncio.create_task(
            metrics.sample_consumer_lag(nc.jetstream(), PAYMENTS_STREAM, DURABLE),
            name="wallet-consumer-lag",
        )
        on_stop += [nc.close, consumer.stop, lambda: _cancel(lag)]

    await server.set_serving()
    log.info("wallet serving on port %s", server.port)
    return RunningService("wallet", server, on_stop=on_stop)
