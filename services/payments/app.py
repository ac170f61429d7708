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
from services.payments.adapters.stripe_checkout import StripeCheckout, StripeSettings
from services.payments.domain.orders import OrderTtls
from services.payments.domain.providers import PROVIDERS
from services.payments.storage.unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork
from services.payments.transport.grpc import PaymentsServicer
from services.payments.transport.outbox_relay import start_relay
from tokenforge.config import Settings
from tokenforge.generated.payments.v1 import payments_pb2_grpc
from tokenforge.prod_mode import refuse_unsafe_prod
from tokenforge.runtime import nats as tf_nats
from tokenforge.runtime.db import create_engine, sessionmaker, upgrade
from tokenforge.runtime.grpc_server import AccessPolicy, Credentials, Role, create_server
from tokenforge.runtime.service import RunningService

log = logging.getLogger(__name__)

SCHEMA = "payments"
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = "tokenforge.payments.v1.PaymentsService"
SWEEP_INTERVAL_S = 1.0

# The gateway calls the user's methods with the internal token on behalf of its users
# (passing their account id) and hands webhooks in; operators may call those too.
# Reviews and cross-account reads are for operators only.
_BOTH = frozenset({Role.INTERNAL, Role.OPERATOR})
_OPERATOR = frozenset({Role.OPERATOR})
POLICY = AccessPolicy(
    {
        **dict.fromkeys(
            (
                "CreateTopUp",
                "GetTopUp",
                "ListTopUps",
                "SimulateSandboxOutcome",
                "SubmitTransferProof",
                "CancelTopUp",
                "HandleProviderEvent",
            ),
            _BOTH,
        ),
        **dict.fromkeys(("ReviewTopUp", "ListAllTopUps", "InspectTopUp"), _OPERATOR),
    }
)


def migrate(database_url: str) -> None:
    upgrade(MIGRATIONS, database_url, SCHEMA)


def order_ttls_from_env() -> OrderTtls:
    """TOKENFORGE_TOPUP_TTL_SECONDS_<PROVIDER> (e.g. ..._MANUAL_TRANSFER=259200), else
    TOKENFORGE_TOPUP_TTL_SECONDS for every provider, else each provider's own."""
    per_provider = {}
    for name in PROVIDERS:
        seconds = os.environ.get(f"TOKENFORGE_TOPUP_TTL_SECONDS_{name.upper()}", "")
        if seconds:
            per_provider[name] = timedelta(seconds=int(seconds))
    everyone = os.environ.get("TOKENFORGE_TOPUP_TTL_SECONDS", "")
    return OrderTtls(per_provider, timedelta(seconds=int(everyone)) if everyone else None)


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
    order_ttl: timedelta | OrderTtls | None = None,
    sweep_interval_s: float = SWEEP_INTERVAL_S,
    stripe: StripeSettings | None = None,
) -> RunningService:
    """`order_ttl` and `stripe` override the environment (tests)."""
    refuse_unsafe_prod(settings, "payments")
    engine = create_engine(settings.database_url)
    session_factory = sessionmaker(engine)
    on_stop: list[Callable[[], Awaitable[None]]] = [engine.dispose]
    wake_relay: Callable[[], None] | None = None

    if settings.nats_url:
        nc = await tf_nats.connect(settings.nats_url, "payments", ca_file=settings.nats_ca_file)
        on_stop.append(nc.close)
        relay, relay_task = await start_relay(engine, nc.jetstream(), settings.nats_replicas)
        wake_relay = relay.wake
        on_stop.append(lambda: _cancel(relay_task))
    else:
        log.warning("no NATS URL: top-up events stay in the outbox until a relay runs")

    def uow_factory() -> UnitOfWork:
        return SqlAlchemyUnitOfWork(session_factory, wake_relay)

    if isinstance(order_ttl, timedelta):
        order_ttl = OrderTtls(everyone=order_ttl)
    stripe = stripe or StripeSettings.from_env()
    checkout = StripeCheckout(stripe) if stripe.configured else None
    if checkout is None:
        log.info("stripe is not configured (TOKENFORGE_STRIPE_API_KEY): card top-ups are off")
    if settings.sandbox_provider:
        log.warning(
            "the sandbox provider is on (TOKENFORGE_SANDBOX_PROVIDER): test money, any "
            "order can be paid without a payment; never in production"
        )
    servicer = PaymentsServicer(
        uow_factory,
        order_ttl or order_ttls_from_env(),
        checkout,
        sandbox=settings.sandbox_provider,
    )
    server = create_server(
        [(payments_pb2_grpc.add_PaymentsServiceServicer_to_server, servicer, SERVICE_NAME)],
        port=port,
        credentials=(Credentials.from_settings(settings)),
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
