"""One paid request through all five services, as a client with the openai SDK sees it."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import openai
import pydantic
import pytest

from tests.e2e.harness import ADMIN, INTERNAL, System
from tokenforge.config import Settings
from tokenforge.runtime.embedded import free_port
from tokenforge.runtime.service import load

CREDIT_PRICES = (2_500_000, 10_000_000)  # demo-chat official: 2.5 CR in, 10 CR out per 1M
ROUTED_PRICES = (1_000_000, 4_000_000)


def expected_charge(prices: tuple[int, int], prompt: int, completion: int) -> int:
    exact = prompt * prices[0] + completion * prices[1]
    return -(-exact // 1_000_000)


def client(system: System, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)


async def balances(system: System, key: str) -> dict[str, dict[str, int]]:
    async with system.http(key) as http:
        body = (await http.get("/v1/wallet")).json()
    return {
        b["bucket"]: {k: b[k]["micros"] for k in ("posted", "held", "available")}
        for b in body["balances"]
    }


async def test_openai_sdk_chat_is_charged_to_credit_with_receipt_and_ledger_row(
    system: System,
) -> None:
    _, key = await system.new_account()
    before = await balances(system, key)
    raw = await client(system, key).chat.completions.with_raw_response.create(
        model="demo-chat", messages=[{"role": "user", "content": "Say hello to the ledger"}]
    )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert completion.choices[0].message.content
    assert raw.headers["x-tokenforge-bucket"] == "credit"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    charge = expected_charge(CREDIT_PRICES, usage.prompt_tokens, usage.completion_tokens)
    extra = usage.model_extra or {}
    assert extra["cost_micros"] == charge
    assert extra["cost_currency"] == "CR"

    async with system.http(key) as http:
        receipt = (await http.get(f"/v1/usage/{request_id}")).json()
        ledger = (await http.get("/v1/wallet/ledger", params={"request_id": request_id})).json()
    assert receipt["status"] == "succeeded"
    assert receipt["route"] == "official" and receipt["bucket"] == "credit"
    assert receipt["upstream_model"] == "mock-gpt-official"
    assert receipt["charge"]["micros"] == charge
    assert receipt["tokens"]["prompt"] == usage.prompt_tokens
    [row] = ledger["data"]
    assert row["kind"] == "request_charge"
    assert row["amount"]["micros"] == -charge
    assert row["entry_id"] == receipt["ledger_entry_id"]
    assert row["trace_id"] == receipt["trace_id"] != ""

    after = await balances(system, key)
    assert after["credit"]["posted"] == before["credit"]["posted"] - charge
    assert after["credit"]["held"] == 0
    assert after["routed"] == before["routed"]
    assert row["balance_after"]["micros"] == after["credit"]["posted"]


class UsageAsClientsType(pydantic.BaseModel):
    """`usage` as LiteLLM and OpenRouter clients type it: `cost` a float, strictly (a
    string would be refused, where LiteLLM only warns)."""

    model_config = pydantic.ConfigDict(strict=True, extra="allow")
    cost: float
    cost_micros: int


async def test_clients_read_the_cost_as_a_number_equal_to_the_micros(system: System) -> None:
    _, key = await system.new_account()
    sdk = client(system, key)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="demo-chat", messages=[{"role": "user", "content": "What does this cost?"}]
    )
    usage = raw.parse().usage
    assert usage is not None
    extra = usage.model_extra or {}
    # The openai SDK hands the number over as a float, the integer as an int.
    assert type(extra["cost"]) is float and type(extra["cost_micros"]) is int
    typed = UsageAsClientsType.model_validate(extra)
    assert typed.cost_micros > 0
    # The JSON number on the wire is exactly the micros in units.
    wire = json.loads(raw.http_response.content, parse_float=Decimal)["usage"]
    assert wire["cost"] == Decimal(wire["cost_micros"]).scaleb(-6)
    assert wire["cost_micros"] == typed.cost_micros

    # The same in a stream's usage chunk.
    stream = await sdk.chat.completions.create(
        model="demo-chat",
        messages=[{"role": "user", "content": "And streamed?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1].usage
    assert last is not None
    streamed = UsageAsClientsType.model_validate(last.model_extra or {})
    assert streamed.cost_micros > 0
    assert Decimal(repr(streamed.cost)) == Decimal(streamed.cost_micros).scaleb(-6)


async def test_routed_suffix_is_paid_from_the_routed_balance_only(system: System) -> None:
    _, key = await system.new_account()
    before = await balances(system, key)
    raw = await client(system, key).chat.completions.with_raw_response.create(
        model="demo-chat@routed", messages=[{"role": "user", "content": "cheaper please"}]
    )
    completion = raw.parse()
    assert completion.usage is not None
    charge = expected_charge(
        ROUTED_PRICES, completion.usage.prompt_tokens, completion.usage.completion_tokens
    )
    after = await balances(system, key)
    assert raw.headers["x-tokenforge-route"] == "routed"
    assert after["routed"]["posted"] == before["routed"]["posted"] - charge
    assert after["credit"] == before["credit"]


async def test_bad_input_gets_openai_errors_and_charges_nothing(system: System) -> None:
    _, key = await system.new_account()
    before = await balances(system, key)
    sdk = client(system, key)
    with pytest.raises(openai.AuthenticationError) as unknown_key:
        await client(system, "tf_not_a_real_key").chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown_key.value.status_code == 401
    with pytest.raises(openai.NotFoundError) as unknown_model:
        await sdk.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown_model.value.code == "model_not_found"
    async with system.http(key) as http:
        malformed = await http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        no_messages = await http.post("/v1/chat/completions", json={"model": "demo-chat"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["type"] == "invalid_request_error"
    assert "x-request-id" in malformed.headers
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"
    assert await balances(system, key) == before


async def test_insufficient_balance_is_402_naming_the_bucket_and_amounts(system: System) -> None:
    _, key = await system.new_account(credit=10, routed=0)
    with pytest.raises(openai.APIStatusError) as refused:
        await client(system, key).chat.completions.create(
            model="demo-chat",
            max_tokens=1000,
            messages=[{"role": "user", "content": "an expensive question"}],
        )
    assert refused.value.status_code == 402
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "insufficient_balance"
    assert error["details"]["bucket"] == "credit"
    assert error["details"]["available_micros"] == 10
    assert "Credit" in error["message"] and "Top up" in error["message"]
    after = await balances(system, key)
    assert after["credit"] == {"posted": 10, "held": 0, "available": 10}


async def test_without_max_tokens_the_gateway_caps_output_to_what_the_balance_pays(
    system: System,
) -> None:
    # Enough for the prompt estimate and a few hundred output tokens, not the model's 1024.
    _, key = await system.new_account(credit=3_000, routed=0)
    raw = await client(system, key).chat.completions.with_raw_response.create(
        model="demo-chat", messages=[{"role": "user", "content": "short"}]
    )
    assert raw.parse().choices[0].message.content
    after = await balances(system, key)
    assert 0 <= after["credit"]["available"] < 3_000
    assert after["credit"]["held"] == 0


async def test_sandbox_topup_reaches_the_wallet_over_nats_and_credits_its_bucket(
    system: System,
) -> None:
    _, key = await system.new_account(credit=0, routed=0)
    async with system.http(key) as http:
        created = await http.post("/v1/topups", json={"bucket": "routed", "amount": "5.00"})
        assert created.status_code == 201, created.text
        order = created.json()
        assert order["status"] == "pending"
        assert order["received_balance"]["micros"] == 5_000_000
        paid = await http.post(f"/v1/topups/{order['order_id']}/sandbox", json={"outcome": "pay"})
        assert paid.json()["status"] == "succeeded"
        for _ in range(100):
            wallet = await balances(system, key)
            if wallet["routed"]["posted"]:
                break
            await asyncio.sleep(0.1)
        ledger = (
            await http.get("/v1/wallet/ledger", params={"order_id": order["order_id"]})
        ).json()
    assert wallet["routed"]["posted"] == 5_000_000
    assert wallet["credit"]["posted"] == 0
    [row] = ledger["data"]
    assert row["kind"] == "topup_credit" and row["bucket"] == "routed"


async def test_a_service_that_is_down_gives_503_and_charges_nothing(system: System) -> None:
    _, key = await system.new_account()
    before = await balances(system, key)
    settings = Settings(
        internal_token=INTERNAL,
        admin_token=ADMIN,
        routing_addr=system.services["routing"],
        wallet_addr=f"127.0.0.1:{free_port()}",  # nothing listens there
        payments_addr=system.services["payments"],
        usage_addr=system.services["usage"],
    )
    gateway = await load("gateway").start(settings, port=0)
    try:
        sdk = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key=key, max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as down:
            await sdk.chat.completions.create(
                model="demo-chat", messages=[{"role": "user", "content": "hello?"}]
            )
    finally:
        await gateway.stop(grace=0.5)
    assert down.value.status_code == 503
    assert down.value.code == "service_unavailable"
    assert "wallet" in down.value.message
    assert await balances(system, key) == before
