"""The whole system in this test process: five services, the mock upstream, real
PostgreSQL and NATS. Tests talk to it through HTTP with the official openai SDK."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from apps.admin import Operator
from tests.e2e.harness import ADMIN, INTERNAL, SPANS, System
from tokenforge.config import Settings
from tokenforge.runtime.service import SERVICES, RunningService, load
from tokenforge.runtime.telemetry import add_span_processor, setup_telemetry


@pytest.fixture(scope="session")
async def system(database_url: str, nats_urls: dict[str, str]) -> AsyncIterator[System]:
    setup_telemetry("tokenforge-e2e")
    add_span_processor(SimpleSpanProcessor(SPANS))
    from apps.mock_upstream.server import start as start_mock

    for name in SERVICES:
        await asyncio.to_thread(load(name).migrate, database_url)
    mock = await start_mock()
    os.environ["TOKENFORGE_MOCK_UPSTREAM_URL"] = mock.url
    # The tests top up with test money: the sandbox provider is on, explicitly.
    base = Settings(
        database_url=database_url,
        internal_token=INTERNAL,
        admin_token=ADMIN,
        catalog_path=str(Path(__file__).parent / "catalog.yaml"),
        sandbox_provider=True,
    )
    running: dict[str, RunningService] = {}
    for name in ("routing", "payments"):
        nats = {"nats_url": nats_urls[name]} if name in nats_urls else {}
        running[name] = await load(name).start(replace(base, **nats), port=0)
    # The wallet credits a top-up only once payments confirms it: it needs payments.
    running["wallet"] = await load("wallet").start(
        replace(base, nats_url=nats_urls["wallet"], payments_addr=running["payments"].address),
        port=0,
    )
    # Usage reads the wallet's holds and ledger rows to reconcile: it needs the wallet.
    running["usage"] = await load("usage").start(
        replace(base, wallet_addr=running["wallet"].address), port=0
    )
    addrs = {name: r.address for name, r in running.items()}
    gateway_settings = Settings(
        database_url=database_url,
        internal_token=INTERNAL,
        admin_token=ADMIN,
        routing_addr=addrs["routing"],
        wallet_addr=addrs["wallet"],
        payments_addr=addrs["payments"],
        usage_addr=addrs["usage"],
    )
    running["gateway"] = await load("gateway").start(gateway_settings, port=0)
    addrs["gateway"] = running["gateway"].address
    operator = Operator.connect(addrs, ADMIN)
    try:
        yield System(
            gateway_url=f"http://127.0.0.1:{running['gateway'].http_port}",
            services=addrs,
            operator=operator,
            spans=SPANS,
            mock_url=mock.url,
        )
    finally:
        await operator.close()
        for r in reversed(list(running.values())):
            await r.stop(grace=0.5)
        await mock.stop()
