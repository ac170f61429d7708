"""Routing's limits and keys through the HTTP front: a per-minute limit holds across
two gateway processes sharing the load, the user API for keys stays inside its
account, and the model list shows channel health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.e2e.harness import ADMIN, INTERNAL, System
from tokenforge.config import Settings
from tokenforge.generated.routing.v1 import routing_pb2, routing_pb2_grpc
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService, load

CHAT = {"model": "demo-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture
async def second_gateway(system: System) -> AsyncIterator[str]:
    """Another gateway process (same code, own state) in front of the same services."""
    settings = Settings(
        internal_token=INTERNAL,
        admin_token=ADMIN,
        routing_addr=system.services["routing"],
        wallet_addr=system.services["wallet"],
        payments_addr=system.services["payments"],
        usage_addr=system.services["usage"],
    )
    running: RunningService = await load("gateway").start(settings, port=0)
    yield f"http://127.0.0.1:{running.http_port}"
    await running.stop(grace=0.5)


async def _routing_call(system: System, method: str, request: object) -> object:
    peer = Peer("routing", system.services["routing"], ADMIN)
    try:
        stub = routing_pb2_grpc.RoutingServiceStub(peer.channel)
        return await peer.call(getattr(stub, method), request)
    finally:
        await peer.close()


async def _limited_key(system: System, rpm: int) -> str:
    account_id, _ = await system.new_account()
    created = await _routing_call(
        system,
        "CreateApiKey",
        routing_pb2.CreateApiKeyRequest(
            account_id=account_id,
            name="limited",
            settings=routing_pb2.KeySettings(requests_per_minute=rpm),
        ),
    )
    return str(created.api_key)  # type: ignore[attr-defined]


async def test_rate_limits_hold_when_two_gateway_processes_share_the_load(
    system: System, second_gateway: str
) -> None:
    key = await _limited_key(system, rpm=5)
    headers = {"authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=system.gateway_url, headers=headers, timeout=30) as one,
        httpx.AsyncClient(base_url=second_gateway, headers=headers, timeout=30) as two,
    ):
        answers = await asyncio.gather(
            *(gw.post("/v1/chat/completions", json=CHAT) for gw in [one, two] * 6)
        )

    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 5, statuses
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 7
    for answer in refused:
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"


async def test_the_keys_api_creates_lists_rotates_and_revokes_within_one_account(
    system: System,
) -> None:
    _, manager = await system.new_account()
    _, stranger = await system.new_account()
    async with system.http(manager) as http, system.http(stranger) as other:
        created = await http.post(
            "/v1/keys",
            json={"name": "ci", "scopes": ["inference"], "requests_per_minute": 30},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["key"].startswith("tf_") and body["limits"]["requests_per_minute"] == 30

        listed = (await http.get("/v1/keys")).json()["data"]
        assert body["id"] in [k["id"] for k in listed]
        assert all("key" not in k for k in listed)
        assert body["id"] not in [k["id"] for k in (await other.get("/v1/keys")).json()["data"]]

        stolen = await other.post(f"/v1/keys/{body['id']}/revoke")
        assert stolen.status_code == 404

        rotated = await http.post(f"/v1/keys/{body['id']}/rotate", json={"grace_seconds": 0})
        assert rotated.status_code == 200, rotated.text
        new_key = rotated.json()["key"]
        assert rotated.json()["limits"]["requests_per_minute"] == 30

        async with system.http(new_key) as fresh:
            ok = await fresh.post("/v1/chat/completions", json=CHAT)
            assert ok.status_code == 200
            # The new key has only the inference scope: it may not manage keys.
            assert (await fresh.get("/v1/keys")).status_code == 403
        revoked = await http.post(f"/v1/keys/{rotated.json()['id']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        async with system.http(new_key) as fresh:
            assert (await fresh.post("/v1/chat/completions", json=CHAT)).status_code == 401


async def test_the_model_list_shows_each_routes_channel_health(system: System) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        models = (await http.get("/v1/models")).json()["data"]

    chat = next(m for m in models if m["id"] == "demo-chat")
    health = chat["routes"][0]["health"]
    assert [h["channel"] for h in health] == chat["routes"][0]["channels"]
    assert all(h["state"] in ("closed", "open", "half_open") for h in health)
