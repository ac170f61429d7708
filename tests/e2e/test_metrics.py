"""Operators' metrics: gRPC calls by method, HTTP by route, upstream by channel, charges."""

from __future__ import annotations

import openai
from prometheus_client import REGISTRY

from tests.e2e.harness import System


def sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def test_a_paid_request_moves_the_grpc_http_upstream_and_charge_metrics(
    system: System,
) -> None:
    _, key = await system.new_account()
    hold = {"method": "/tokenforge.wallet.v1.WalletService/Hold", "code": "OK"}
    http = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    before = (
        sample("tokenforge_grpc_server_handled_total", hold),
        sample("tokenforge_http_requests_total", http),
        sample("tokenforge_charges_micros_total", {"bucket": "credit", "route": "official"}),
        sample("tokenforge_upstream_seconds_count", {"channel": "mock-primary", "outcome": "ok"}),
    )
    client = openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)
    completion = await client.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "measure me"}]
    )
    charge = (completion.usage.model_extra or {})["cost_micros"]  # type: ignore[union-attr]
    after = (
        sample("tokenforge_grpc_server_handled_total", hold),
        sample("tokenforge_http_requests_total", http),
        sample("tokenforge_charges_micros_total", {"bucket": "credit", "route": "official"}),
        sample("tokenforge_upstream_seconds_count", {"channel": "mock-primary", "outcome": "ok"}),
    )
    assert after[0] == before[0] + 1
    assert after[1] == before[1] + 1
    assert after[2] == before[2] + charge
    assert after[3] == before[3] + 1
