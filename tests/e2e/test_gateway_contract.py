"""What an OpenAI client relies on: Idempotency-Key, limits, tools, the sync SDK, and
receipts on every answer."""

from __future__ import annotations

import asyncio

import httpx
import openai

from services.gateway.client import GatewayClient
from tests.e2e.harness import INTERNAL, System

CHAT = {"model": "demo-chat", "messages": [{"role": "user", "content": "count me once"}]}


async def ledger_rows(system: System, key: str) -> list[dict]:
    async with system.http(key) as http:
        answer = await http.get("/v1/wallet/ledger", params={"limit": 500})
    return [r for r in answer.json()["data"] if r["kind"] == "request_charge"]


async def test_idempotency_key_repeat_returns_the_first_answer_and_charges_once(
    system: System,
) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        headers = {"idempotency-key": "click-1"}
        first = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        again = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        other = await http.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 5}, headers=headers
        )
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-tokenforge-charge"] == first.headers["x-tokenforge-charge"]
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert len(await ledger_rows(system, key)) == 1


async def test_concurrent_repeats_of_one_idempotency_key_charge_once(system: System) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        answers = await asyncio.gather(
            *[
                http.post("/v1/chat/completions", json=CHAT, headers={"idempotency-key": "k"})
                for _ in range(8)
            ]
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) >= 1
    assert set(statuses) <= {200, 409}
    in_progress = [a for a in answers if a.status_code == 409]
    assert all(a.json()["error"]["code"] == "request_in_progress" for a in in_progress)
    assert all("retry-after" in a.headers for a in in_progress)
    assert len(await ledger_rows(system, key)) == 1


async def test_a_failed_request_the_route_charges_for_keeps_its_idempotency_key(
    system: System,
) -> None:
    """A 502 that charged the prompt (the route's policy) is the key's answer: a repeat
    gets it again instead of running, and paying, a second time. A 502 that charged
    nothing gives the key back, so a repeat runs."""
    _, key = await system.new_account()
    charged = {"model": "test-down-charged", "messages": [{"role": "user", "content": "hi"}]}
    free = {"model": "test-down", "messages": [{"role": "user", "content": "hi"}]}
    async with system.http(key) as http:
        first = await http.post(
            "/v1/chat/completions", json=charged, headers={"idempotency-key": "c"}
        )
        again = await http.post(
            "/v1/chat/completions", json=charged, headers={"idempotency-key": "c"}
        )
        free_first = await http.post(
            "/v1/chat/completions", json=free, headers={"idempotency-key": "f"}
        )
        free_again = await http.post(
            "/v1/chat/completions", json=free, headers={"idempotency-key": "f"}
        )
    assert first.status_code == again.status_code == 502
    assert "Charged" in first.json()["error"]["message"]
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(await ledger_rows(system, key)) == 1  # one prompt charge, not two
    assert free_first.status_code == free_again.status_code == 502
    assert "idempotent-replayed" not in free_again.headers  # ran again: nothing was charged


async def test_a_body_too_large_is_413_and_charges_nothing(system: System) -> None:
    _, key = await system.new_account()
    huge = "word " * (2 * 1024 * 1024)
    async with system.http(key) as http:
        answer = await http.post(
            "/v1/chat/completions",
            json={"model": "demo-chat", "messages": [{"role": "user", "content": huge}]},
        )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"
    assert await ledger_rows(system, key) == []


async def test_tools_pass_through_and_come_back_as_tool_calls(system: System) -> None:
    _, key = await system.new_account()
    client = openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)
    completion = await client.chat.completions.create(
        model="demo-chat",
        messages=[{"role": "user", "content": "please call a tool"}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_price",
                    "parameters": {
                        "type": "object",
                        "properties": {"ticker": {"type": "string"}},
                        "required": ["ticker"],
                    },
                },
            }
        ],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "get_price"
    receipt = (completion.model_extra or {})["receipt"]
    assert receipt["charge"]["micros"] > 0 and receipt["attempts"][0]["outcome"] == "ok"


async def test_unknown_fields_are_passed_on_not_refused(system: System) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        answer = await http.post(
            "/v1/chat/completions", json={**CHAT, "some_future_parameter": {"x": 1}}
        )
    assert answer.status_code == 200


async def test_the_sync_sdk_lists_models_with_routes_and_completes(system: System) -> None:
    _, api_key = await system.new_account()

    def run_sync() -> tuple[list[str], object, str | None]:
        client = openai.OpenAI(base_url=system.gateway_url + "/v1", api_key=api_key, max_retries=0)
        models = client.models.list()
        completion = client.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": "sync hello"}]
        )
        return (
            sorted(m.id for m in models.data),
            (models.data[0].model_extra or {}).get("routes"),
            completion.choices[0].message.content,
        )

    # The system serves on this event loop; the sync client runs in a thread.
    ids, routes, text = await asyncio.to_thread(run_sync)
    assert "demo-chat" in ids
    assert routes
    assert text


APP = "https://app.example"
PREFLIGHT = {
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type, idempotency-key, "
    "x-tokenforge-run, x-stainless-os",
}


async def test_a_browser_on_an_allowed_origin_may_call_the_api_and_read_its_headers(
    system: System, database_url: str
) -> None:
    _, key = await system.new_account()
    gateway = await system.another_gateway(database_url, cors_origins=(APP,))
    try:
        url = f"http://127.0.0.1:{gateway.http_port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            allowed = await http.options(
                "/v1/chat/completions", headers={"origin": APP, **PREFLIGHT}
            )
            foreign = await http.options(
                "/v1/chat/completions", headers={"origin": "https://evil.example", **PREFLIGHT}
            )
            answer = await http.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={"origin": APP, "authorization": f"Bearer {key}"},
            )
            refused = await http.post("/v1/chat/completions", json=CHAT, headers={"origin": APP})
            other = await http.get(
                "/v1/wallet",
                headers={"origin": "https://evil.example", "authorization": f"Bearer {key}"},
            )
    finally:
        await gateway.stop(grace=0.5)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP
    assert "POST" in allowed.headers["access-control-allow-methods"]
    sent = {h.strip() for h in PREFLIGHT["access-control-request-headers"].split(",")}
    assert sent <= {h.strip() for h in allowed.headers["access-control-allow-headers"].split(",")}
    # Another origin's preflight is not allowed: no allow-origin, so the browser stops.
    assert foreign.status_code == 400
    assert "access-control-allow-origin" not in foreign.headers
    assert "access-control-allow-origin" not in other.headers
    # The real request: the page reads the request id and the charge.
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == APP
    exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-tokenforge-charge", "x-tokenforge-charge-micros"} <= exposed
    # Errors carry it too, so the page can read why.
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == APP


async def test_without_configured_origins_no_preflight_is_allowed(system: System) -> None:
    async with httpx.AsyncClient(base_url=system.gateway_url, timeout=30) as http:
        preflight = await http.options("/v1/chat/completions", headers={"origin": APP, **PREFLIGHT})
    assert "access-control-allow-origin" not in preflight.headers


async def test_the_gateway_client_previews_a_route_without_holding_anything(
    system: System,
) -> None:
    """The gateway's typed client (services/gateway/client.py): the route, prices and
    worst case of a request that is never sent; the balance stays untouched."""
    account, key = await system.new_account(credit=1_000_000)
    client = GatewayClient.connect(system.services["gateway"], INTERNAL)
    try:
        preview = await client.preview_route(
            key, "demo-chat", prompt_tokens=100, max_output_tokens=50
        )
    finally:
        await client.close()
    assert preview.selected_model == "demo-chat"
    assert preview.channel_ids and preview.catalog_version
    [paying] = [b for b in await system.operator.balances(account) if b.bucket == preview.bucket]
    assert 0 < preview.worst_case_micros <= preview.available_micros == paying.available_micros
    assert paying.held_micros == 0 and paying.available_micros == paying.posted_micros
