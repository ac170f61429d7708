"""The whole system in one process, for end-to-end tests (fixture in conftest.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tokenforge.admin import Operator
from tokenforge.money import Bucket
from tokenforge.routing.v1 import routing_pb2

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

    def http(self, api_key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.gateway_url, headers={"authorization": f"Bearer {api_key}"}, timeout=30
        )
