"""Every route checks the whole key, and a key mints nothing beyond its own powers
(issue 17, "What was seen" 3 and 4), on the whole system through HTTP.

- A key allowed only from 10.11.12.0/24, used from 127.0.0.1, is refused on every
  authenticated route (it got 200 on the wallet, ledger, top-ups, usage, runs and
  `POST /v1/keys`), and mints nothing.
- `X-Forwarded-For` from loopback does not satisfy the allow-list; it does only
  through a gateway told to trust that proxy (TOKENFORGE_TRUSTED_PROXIES).
- A key limited to scopes [inference, keys], model demo-embed and routed routes
  cannot create a broader key (403 naming what exceeds, nothing minted); a key it
  creates with settings left out has its restrictions, so it cannot chat
  demo-chat@official; nor can it rotate or revoke a broader key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ADMIN, INTERNAL, System
from tokenforge.config import Settings
from tokenforge.generated.routing.v1 import routing_pb2, routing_pb2_grpc
from tokenforge.runtime.service import RunningService, load
from tokenforge.wire import route_kind_to_proto

ALLOWED = "10.11.12.0/24"
CHAT = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
EMBED = {"model": "demo-embed", "input": "hi"}

# Every authenticated route, as (method, path, JSON body or None).
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/embeddings", EMBED),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/demo-chat", None),
    ("POST", "/v1/routes/preview", CHAT),
    ("GET", "/v1/wallet", None),
    ("GET", "/v1/wallet/ledger", None),
    ("GET", "/v1/topups", None),
    ("POST", "/v1/topups", {"amount": "10", "bucket": "credit", "provider": "sandbox"}),
    ("GET", "/v1/topups/ord_missing", None),
    ("POST", "/v1/topups/ord_missing/cancel", None),
    ("GET", "/v1/usage", None),
    ("GET", "/v1/usage/aggregates", None),
    ("GET", "/v1/usage/req_missing", None),
    ("POST", "/v1/runs", {"bucket": "credit", "budget": "1"}),
    ("POST", "/v1/runs", {"model": "demo-chat", "budget": "1"}),
    ("GET", "/v1/runs/run_missing", None),
    ("GET", "/v1/runs/run_missing/receipt", None),
    ("POST", "/v1/runs/run_missing/close", None),
    ("GET", "/v1/keys", None),
    ("POST", "/v1/keys", {"name": "escape"}),
    ("POST", "/v1/keys/key_missing/revoke", None),
    ("POST", "/v1/keys/key_missing/rotate", None),
]


async def _create_key(
    system: System, account_id: str, **fields: Any
) -> routing_pb2.CreateApiKeyResponse:
    """A key made by the operator (admin token), with scopes and settings."""
    stub = routing_pb2_grpc.RoutingServiceStub(system.operator.routing.channel)
    answer: routing_pb2.CreateApiKeyResponse = await system.operator.routing.call(
        stub.CreateApiKey, routing_pb2.CreateApiKeyRequest(account_id=account_id, **fields)
    )
    return answer


async def _keys(system: System, account_id: str) -> list[routing_pb2.ApiKeyInfo]:
    stub = routing_pb2_grpc.RoutingServiceStub(system.operator.routing.channel)
    answer = await system.operator.routing.call(
        stub.ListApiKeys, routing_pb2.ListApiKeysRequest(account_id=account_id)
    )
    return list(answer.keys)


async def _ip_limited_key(system: System) -> tuple[str, str]:
    account_id, _ = await system.new_account()
    created = await _create_key(
        system,
        account_id,
        name="office only",
        settings=routing_pb2.KeySettings(ip_allowlist=[ALLOWED]),
    )
    return account_id, created.api_key


def _assert_refused(answer: httpx.Response, code: str, what: str) -> dict[str, Any]:
    assert answer.status_code == 403, (what, answer.status_code, answer.text)
    error: dict[str, Any] = answer.json()["error"]
    assert error["type"] == "permission_error", (what, error)
    assert error["code"] == code, (what, error)
    assert error["message"], what
    return error


@pytest.fixture
async def behind_a_proxy(system: System) -> AsyncIterator[str]:
    """A gateway that trusts the proxy on loopback (the k8s ingress case)."""
    settings = Settings(
        internal_token=INTERNAL,
        admin_token=ADMIN,
        routing_addr=system.services["routing"],
        wallet_addr=system.services["wallet"],
        payments_addr=system.services["payments"],
        usage_addr=system.services["usage"],
        trusted_proxies=("127.0.0.1",),
    )
    running: RunningService = await load("gateway").start(settings, port=0)
    yield f"http://127.0.0.1:{running.http_port}"
    await running.stop(grace=0.5)


async def test_an_ip_limited_key_from_another_address_is_refused_on_every_route(
    system: System,
) -> None:
    account_id, key = await _ip_limited_key(system)

    async with system.http(key) as client:
        for method, path, body in ROUTES:
            answer = await client.request(method, path, json=body)
            _assert_refused(answer, "permission_denied", f"{method} {path}")
        wallet = await client.get("/v1/wallet")

    assert "127.0.0.1" in wallet.json()["error"]["message"]
    assert sorted(k.name for k in await _keys(system, account_id)) == ["e2e key", "office only"]
    balances = await system.operator.balances(account_id)
    assert balances and all(b.held_micros == 0 for b in balances)
    assert {b.posted_micros for b in balances} == {10_000_000}


async def test_x_forwarded_for_from_loopback_does_not_satisfy_the_allow_list(
    system: System,
) -> None:
    account_id, key = await _ip_limited_key(system)
    spoof = {"x-forwarded-for": "10.11.12.5", "forwarded": "for=10.11.12.5"}

    async with system.http(key) as client:
        for method, path, body in [
            ("GET", "/v1/wallet", None),
            ("POST", "/v1/chat/completions", CHAT),
            ("POST", "/v1/keys", {"name": "escape"}),
        ]:
            answer = await client.request(method, path, json=body, headers=spoof)
            _assert_refused(answer, "permission_denied", f"{method} {path}")

    assert len(await _keys(system, account_id)) == 2  # its "e2e key" and "office only"


async def test_a_trusted_proxy_names_the_client_and_the_allow_list_sees_it(
    system: System, behind_a_proxy: str
) -> None:
    _, key = await _ip_limited_key(system)
    headers = {"authorization": f"Bearer {key}"}

    async with httpx.AsyncClient(base_url=behind_a_proxy, headers=headers, timeout=30) as proxy:
        inside = await proxy.get("/v1/wallet", headers={"x-forwarded-for": "10.11.12.5"})
        chat = await proxy.post(
            "/v1/chat/completions", json=CHAT, headers={"x-forwarded-for": "10.11.12.5"}
        )
        # The client names 10.11.12.5 itself; the trusted proxy appends the real peer.
        outside = await proxy.get(
            "/v1/wallet", headers={"x-forwarded-for": "10.11.12.5, 198.51.100.7"}
        )

    assert inside.status_code == 200, inside.text
    assert chat.status_code == 200, chat.text
    _assert_refused(outside, "permission_denied", "a client behind the proxy")
    assert "198.51.100.7" in outside.json()["error"]["message"]


async def test_runs_and_previews_from_an_allowed_address_are_served(
    system: System, behind_a_proxy: str
) -> None:
    """Opening a run (by bucket and by model) and a route preview check the client's
    address like every other route: served from inside the allow-list."""
    _, key = await _ip_limited_key(system)
    headers = {"authorization": f"Bearer {key}", "x-forwarded-for": "10.11.12.5"}
    async with httpx.AsyncClient(base_url=behind_a_proxy, headers=headers, timeout=30) as proxy:
        preview = await proxy.post("/v1/routes/preview", json=CHAT)
        opened = [
            await proxy.post("/v1/runs", json={"bucket": "credit", "budget": "1"}),
            await proxy.post("/v1/runs", json={"model": "demo-chat", "budget": "1"}),
        ]
        for run in opened:
            assert run.status_code == 201, run.text
            closed = await proxy.post(f"/v1/runs/{run.json()['use']['value']}/close")
            assert closed.status_code == 200, closed.text
    assert preview.status_code == 200, preview.text


async def _restricted_key(system: System) -> tuple[str, str, str]:
    """The key of the issue: scopes inference and keys, model demo-embed, routed routes."""
    account_id, owner = await system.new_account()
    routed = route_kind_to_proto("routed")
    created = await _create_key(
        system,
        account_id,
        name="restricted",
        scopes=[routing_pb2.SCOPE_INFERENCE, routing_pb2.SCOPE_KEYS],
        settings=routing_pb2.KeySettings(
            allowed_models=["demo-embed"],
            allowed_route_kinds=[routed],
            route_preference=[routed],
        ),
    )
    return account_id, owner, created.api_key


async def test_a_restricted_key_cannot_mint_a_broader_one(system: System) -> None:
    account_id, _, restricted = await _restricted_key(system)
    before = await _keys(system, account_id)

    async with system.http(restricted) as client:
        broader = await client.post(
            "/v1/keys",
            json={
                "name": "everything",
                "scopes": ["inference", "wallet_read", "topup", "keys"],
                "allowed_models": ["*"],
                "allowed_route_kinds": ["official", "routed"],
                "fallback_allowed": True,
            },
        )
        wider_models = await client.post(
            "/v1/keys", json={"name": "x", "allowed_models": ["demo-*"]}
        )

    error = _assert_refused(broader, "permission_denied", "a broader key")
    for power in ("topup", "wallet_read", "models *", "official routes", "falling back"):
        assert power in error["message"], (power, error)
    assert error["param"] == "scopes"
    _assert_refused(wider_models, "permission_denied", "a wider model pattern")
    assert [k.key_id for k in await _keys(system, account_id)] == [k.key_id for k in before]


async def test_a_key_made_by_a_restricted_key_inherits_its_restrictions(system: System) -> None:
    account_id, _, restricted = await _restricted_key(system)

    async with system.http(restricted) as client:
        made = await client.post("/v1/keys", json={"name": "child"})
    assert made.status_code == 201, made.text
    child = made.json()
    assert sorted(child["scopes"]) == ["inference", "keys"]
    assert child["allowed_models"] == ["demo-embed"]
    assert child["allowed_route_kinds"] == ["routed"]

    async with system.http(child["key"]) as client:
        chat = await client.post(
            "/v1/chat/completions", json={**CHAT, "model": "demo-chat@official"}
        )
        wallet = await client.get("/v1/wallet")
    assert chat.status_code == 403, chat.text
    assert chat.json()["error"]["type"] == "permission_error"
    _assert_refused(wallet, "scope_missing", "the wallet without wallet_read")
    assert len(await _keys(system, account_id)) == 3  # the owner's, restricted, child


async def test_a_restricted_key_cannot_rotate_or_revoke_a_broader_one(system: System) -> None:
    account_id, owner, restricted = await _restricted_key(system)
    keys = await _keys(system, account_id)
    owner_id = next(k.key_id for k in keys if k.name == "e2e key")

    async with system.http(restricted) as client:
        rotated = await client.post(f"/v1/keys/{owner_id}/rotate")
        revoked = await client.post(f"/v1/keys/{owner_id}/revoke")
    async with system.http(owner) as client:
        still = await client.get("/v1/wallet")

    error = _assert_refused(rotated, "permission_denied", "rotate a broader key")
    assert "key" not in rotated.json()
    assert "rotate only keys within" in error["message"]
    _assert_refused(revoked, "permission_denied", "revoke a broader key")
    assert still.status_code == 200
    after = await _keys(system, account_id)
    assert len(after) == len(keys)
    assert all(not k.HasField("revoked_at") for k in after)
