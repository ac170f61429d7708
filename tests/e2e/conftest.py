"""The whole system in this test process: five services, the mock upstream, real
PostgreSQL and NATS. Tests talk to it through HTTP with the official openai SDK."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tokenforge.admin import Operator
from tokenforge.config import Settings
from tokenforge.money import Bucket
from tokenforge.runtime.service import SERVICES, RunningService, load
from tokenforge.runtime.telemetry import add_span_processor, setup_telemetry

INTERNAL = "e2e-internal-token"
ADMIN = "e2e-admin-token"

SPANS = InMemorySpanExporter()


@dataclass
class System:
    gateway_url: str
    services: dict[str, str]
    operator: Operator
    spans: InMemorySpanExporter
    mock_url: str

    async def new_account(
        self, credit: int = 10_000_000, routed: int = 10_000_000
    ) -> tuple[str, str]:
        """A fresh account with money in both buckets; answers (account_id, api_key)."""
        import uuid

        account_id = "acct_" + uuid.uuid4().hex[:12]
        project = await self.operator.open_account(account_id, "e2e")
        for bucket, micros in ((Bucket.CREDIT, credit), (Bucket.ROUTED, routed)):
            if micros:
                await self.operator.adjust(
                    account_id, bucket, micros, "e2e grant", f"grant-{bucket.value}", "e2e"
                )
        key = await self.operator.create_key(account_id, project, "e2e key")
        return account_id, key

    def http(self, api_key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.gateway_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30
        )


@pytest.fixture(scope="session")
async def system(database_url: str, nats_url: str) -> AsyncIterator[System]:
    setup_telemetry("tokenforge-e2e")
    add_span_processor(SimpleSpanProcessor(SPANS))
    from tokenforge.mock_upstream.server import start as start_mock

    for name in SERVICES:
        await asyncio.to_thread(load(name).migrate, database_url)
    mock = await start_mock()
    os.environ["TOKENFORGE_MOCK_UPSTREAM_URL"] = mock.url
    base = Settings(
        database_url=database_url, nats_url=nats_url, internal_token=INTERNAL, admin_token=ADMIN
    )
    running: dict[str, RunningService] = {}
    for name in ("routing", "wallet", "payments", "usage"):
        running[name] = await load(name).start(base, port=0)
    addrs = {name: r.address for name, r in running.items()}
    gateway_settings = Settings(
        database_url=database_url,
        nats_url=nats_url,
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
