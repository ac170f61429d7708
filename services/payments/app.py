"""Wires the payments service: database, gRPC servicer, expiry sweeper, outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from services.payments import handlers
from services.payments.domain.orders import DEFAULT_ORDER_TTL
from services.payments.storage.unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork
from services.payments.transport.grpc import PaymentsServicer
from services.payments.transport.outbox_relay import start_relay
from tokenforge.config import Settings
from tokenforge.payments.v1 import payments_pb2_grpc
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.db import create_engine, sessionmaker, upgrade
from tokenforge.runtime.grpc_server import AccessPolicy, Credentials, Role, create_server
from tokenforge.runtime.service import RunningService

log = logging.getLogger(__name__)

SCHEMA = "payments"
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = "tokenforge.payments.v1.PaymentsService"
SWEEP_INTERVAL_S = 1.0

# The gateway calls every method with the internal token on behalf of its users
# (passing their account id); operators may call them all too.
POLICY = AccessPolicy(
    {
        method: frozenset({Role.INTERNAL, Role.OPERATOR})
        for method in ("CreateTopUp", "GetTopUp", "ListTopUps", "SimulateSandboxOutcome")
    }
)


def migrate(database_url: str) -> None:
    upgrade(MIGRATIONS, database_url, SCHEMA)


def order_ttl_from_env() -> timedelta:
    """TOKENFORGE_TOPUP_TTL_SECONDS, or 15 minutes."""
    seconds = os.environ.get("TOKENFORGE_TOPUP_TTL_SECONDS", "")
    return timedelta(seconds=int(seconds)) if seconds else DEFAULT_ORDER_TTL


async def sweep_forever(uow_factory: Callable[[], UnitOfWork], interval_s: float) -> None:
    """Expire unpaid orders past their time, every `interval_s` seconds."""
    while True:
        try:
            await handlers.expire_due_orders(uow_factory())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("expiry sweep failed; retrying")
        await asyncio.sleep(interval_s)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def start(
    settings: Settings,
    port: int = 0,
    *,
    order_ttl: timedelta | None = None,
    sweep_interval_s: float = SWEEP_INTERVAL_S,
) -> RunningService:
    engine = create_engine(settings.database_url)
    session_factory = sessionmaker(engine)
    on_stop: list[Callable[[], Awaitable[None]]] = [engine.dispose]
    wake_relay: Callable[[], None] | None = None

    if settings.nats_url:
        nc = await tf_nats.connect(settings.nats_url, "payments")
        on_stop.append(nc.close)
        relay, relay_task = await start_relay(engine, nc.jetstream())
        wake_relay = relay.wake
        on_stop.append(lambda: _cancel(relay_task))
    else:
        log.warning("no NATS URL: top-up events stay in the outbox until a relay runs")

    def uow_factory() -> UnitOfWork:
        return SqlAlchemyUnitOfWork(session_factory, wake_relay)

    servicer = PaymentsServicer(uow_factory, order_ttl or order_ttl_from_env())
    server = create_server(
        [(payments_pb2_grpc.add_PaymentsServiceServicer_to_server, servicer, SERVICE_NAME)],
        port=port,
        credentials=(
            Credentials(settings.internal_token, settings.admin_token)
            if settings.internal_token or settings.admin_token
            else None
        ),
        policy=POLICY,
    )
    await server.server.start()
    sweeper = asyncio.create_task(
        sweep_forever(uow_factory, sweep_interval_s), name="payments-expiry-sweeper"
    )
    on_stop.append(lambda: _cancel(sweeper))
    await server.set_serving()
    log.info("payments serving on port %s", server.port)
    return RunningService("payments", server, on_stop=on_stop)
