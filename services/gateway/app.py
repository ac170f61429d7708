"""Wires the gateway: peers (gRPC), the upstream client, the HTTP app (uvicorn) and
the gRPC server (health, reflection, GatewayService).

The gateway keeps request-scoped state only: idempotency records, and the queue of
receipts and finishes waiting for the relay.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path

import uvicorn

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.budgets import Budgets
from services.gateway.domain.budgets import BudgetPolicy
from services.gateway.flow import background
from services.gateway.relay import drain, run_relay
from services.gateway.runs import run_sweeper
from services.gateway.storage.audit import AuditLog
from services.gateway.storage.finish_queue import FinishQueue
from services.gateway.storage.idempotency import IdempotencyStore
from services.gateway.transport.grpc import GatewayServicer
from services.gateway.transport.http import create_app
from services.gateway.transport.http.tracing import instrument
from tokenforge.config import Settings
from tokenforge.generated.gateway.v1 import gateway_pb2_grpc
from tokenforge.prod_mode import refuse_unsafe_prod
from tokenforge.runtime.db import create_engine, upgrade
from tokenforge.runtime.grpc_server import Credentials, create_server
from tokenforge.runtime.service import RunningService

SCHEMA = "gateway"
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"


def migrate(database_url: str) -> None:
    """The gateway's schema holds request-scoped state only (idempotency records)."""
    upgrade(MIGRATIONS, database_url, SCHEMA)


async def start_http(
    app: object, port: int, trusted_proxies: tuple[str, ...] = (), grace_s: float = 25.0
) -> uvicorn.Server:
    """`trusted_proxies`: whose `X-Forwarded-For` names the client (none: the
    connection's peer is the client, whatever the headers say; uvicorn would
    otherwise believe any process on loopback). `grace_s`: on stop, how long open
    requests and streams may still run; uvicorn then cancels the rest, and each ends
    like a request whose client left (settled for what it delivered)."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=os.environ.get("TOKENFORGE_BIND_HOST", "127.0.0.1"),
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=max(1, round(grace_s)),
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    server.task = task  # type: ignore[attr-defined]
    return server


def bound_port(server: uvicorn.Server) -> int:
    sockets = [s for srv in server.servers for s in srv.sockets]
    return int(sockets[0].getsockname()[1])


async def start(settings: Settings, port: int = 0) -> RunningService:
    refuse_unsafe_prod(settings, "gateway")
    peers = Peers.from_settings(settings)
    upstream = Upstream(settings.upstream_max_connections)
    engine = create_engine(settings.database_url, pool_size=10) if settings.database_url else None
    if engine is not None:
        # Receipts wait here when usage is down, and budget draws' finishes always.
        owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        peers.finish_queue = FinishQueue(engine, owner)
        policy = BudgetPolicy(
            requests=settings.budget_requests, idle_s=settings.budget_idle_ms / 1000
        )
        if policy.enabled:
            peers.budgets = Budgets(peers.wallet_client, policy)
    idempotency = IdempotencyStore(engine) if engine else None
    app = create_app(
        peers,
        upstream,
        idempotency,
        cors_origins=settings.cors_origins,
        operator_digest=settings.admin_digest,
        audit=AuditLog(engine) if engine else None,
    )
    instrument(app)  # the request's span: transport/http/tracing.py
    grpc_server = create_server(
        [
            (
                gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
                GatewayServicer(peers),
                "tokenforge.gateway.v1.GatewayService",
            )
        ],
        port=port,
        credentials=Credentials.from_settings(settings),
    )
    await grpc_server.server.start()
    http = await start_http(
        app, settings.http_port, settings.trusted_proxies, settings.shutdown_grace_ms / 1000
    )
    sweeper = asyncio.create_task(run_sweeper(peers))  # forgotten runs release their hold
    # Queued finishes and receipts go to the wallet and usage; done budgets close.
    relay = asyncio.create_task(run_relay(peers))
    # The running requests' Idempotency-Key claims, renewed while this process lives.
    leases = asyncio.create_task(idempotency.keep_leases()) if idempotency else None

    async def stop_http() -> None:
        # No new connections; open requests and streams run on within the grace period
        # while the relay still delivers their finishes (docs/OPERATIONS.md, "Stopping").
        http.should_exit = True
        await http.task  # type: ignore[attr-defined]
        # Past the grace uvicorn cancels the requests still running without waiting for
        # them: let each end (its reservation handed to a background finish) first.
        if running := list(http.server_state.tasks):
            await asyncio.wait(running, timeout=5)
        sweeper.cancel()
        relay.cancel()
        if leases is not None:
            leases.cancel()
        await background.drain()  # requests whose clients left end their reservations
        await drain(peers)  # what waits is delivered, the budgets closed
        await upstream.close()
        await peers.close()
        if engine is not None:
            await engine.dispose()

    await grpc_server.set_serving()
    return RunningService("gateway", grpc_server, http_port=bound_port(http), on_stop=[stop_http])
