"""The whole system in one process, for end-to-end tests (fixture in conftest.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apps.admin import Operator
from tokenforge.config import Settings
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.money import Bucket
from tokenforge.runtime.service import RunningService

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
    # The operators' token (a `tokenforge dev` system has its own: tests/e2e/chaos.py).
    admin_token: str = ADMIN

    async def new_account(
        self, credit: int = 10_000_000, routed: int = 10_000_000, fallback_allowed: bool = False
    ) -> tuple[str, str]:
        """A fresh account with money in both buckets; answers (account_id, api_key).
        `fallback_allowed`: the key may move a request to another route."""
        account_id = "acct_" + uuid.uuid4().hex[:12]
        project = await self.operator.open_account(account_id, "e2e")
        for bucket, micros in ((Bucket.CREDIT, credit), (Bucket.ROUTED, routed)):
            if micros:
                await self.operator.adjust(
                    account_id,
                    bucket,
                    micros,
                    "e2e grant",
                    f"grant-{account_id}-{bucket.value}",
                    "e2e",
                )
        settings = routing_pb2.KeySettings(fallback_allowed=fallback_allowed)
        key = await self.operator.create_key(account_id, project, "e2e key", settings)
        return account_id, key

    async def another_gateway(self, database_url: str, **addrs: Any) -> RunningService:
        """A second gateway replica on this system's services (and its database), with
        `addrs` in place of theirs (e.g. `usage_addr` of a port nobody listens on) or
        other settings (e.g. `cors_origins`)."""
        from tokenforge.runtime.service import load

        settings = Settings(
            database_url=database_url,
            internal_token=INTERNAL,
            admin_token=ADMIN,
            routing_addr=self.services["routing"],
            wallet_addr=self.services["wallet"],
            payments_addr=self.services["payments"],
            usage_addr=self.services["usage"],
        )
        running: RunningService = await load("gateway").start(replace(settings, **addrs), port=0)
        return running

    def http(self, api_key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.gateway_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30
        )
