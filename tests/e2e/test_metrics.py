"""Operators' metrics: gRPC calls by method, HTTP by route, upstream by channel, charges."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from tests.e2e.harness import INTERNAL, System
from tests.e2e.sockets import listening
from tokenforge.config import Settings
from tokenforge.runtime.embedded import free_port
from tokenforge.runtime.metrics import owner


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


async def test_a_service_started_with_default_settings_serves_metrics_on_loopback_only(
    system: System, database_url: str
) -> None:
    """`tokenforge serve` with TOKENFORGE_METRICS_PORT and no TOKENFORGE_METRICS_HOST:
    the endpoint answers on 127.0.0.1 and listens nowhere else."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFORGE_")}
    env |= {
        "TOKENFORGE_DATABASE_URL": database_url,
        "TOKENFORGE_INTERNAL_TOKEN": INTERNAL,
        "TOKENFORGE_METRICS_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "serve", "usage", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not listening(port):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the metrics endpoint never listened"
            await asyncio.sleep(0.1)
        assert listening(port) == {"127.0.0.1"}
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert answer.status_code == 200
        assert "tokenforge_grpc_server_handled_total" in answer.text
        # Only the usage service's own metrics and the shared ones: no gateway's (HTTP,
        # upstream, receipts queued), no wallet's, though the process imports them.
        families = {
            line.split()[2] for line in answer.text.splitlines() if line.startswith("# TYPE")
        }
        assert families, answer.text
        assert not {f for f in families if owner(f) not in ("", "usage")}, families
        assert "tokenforge_http_requests" not in families
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_metrics_host_is_loopback_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENFORGE_METRICS_HOST", raising=False)
    assert Settings.from_env().metrics_host == "127.0.0.1"
    assert Settings().metrics_host == "127.0.0.1"
    monkeypatch.setenv("TOKENFORGE_METRICS_HOST", "0.0.0.0")
    assert Settings.from_env().metrics_host == "0.0.0.0"
