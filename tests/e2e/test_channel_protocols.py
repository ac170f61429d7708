"""Channels that speak other protocols (tests/e2e/catalog.yaml: `proto-*` models): an
OpenAI client on an Anthropic Messages channel and an Anthropic client on an OpenAI
Responses channel, streamed or not, on the official and the routed route; fallback
between channels (and routes) of different protocols; what a protocol cannot carry is
refused before anything is held.

The mock upstream answers each protocol natively and reports every token class: the
Anthropic channels 3 cache reads and 2 cache writes of the prompt's 15 tokens, the
Responses channels 3 cached and 4 reasoning tokens (of 20 output tokens). Each
answer's cost is the upstream's counts at the route's prices, the receipt's charge
and the ledger row's amount."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.e2e.harness import System
from tests.e2e.test_client_formats import (
    PROMPT_TOKENS,
    SYSTEM_TEXT,
    USER_TEXT,
    WEATHER,
    claude,
    gpt,
    money_story,
)
from tests.e2e.test_paid_request import balances

# The mock's token classes on each channel (the knobs in the catalog's base_url).
ANTHROPIC_TOKENS = {"prompt": 15, "cached": 3, "cache_write": 2, "completion": 16, "reasoning": 0}
RESPONSES_TOKENS = {"prompt": 15, "cached": 3, "cache_write": 0, "completion": 20, "reasoning": 4}
# (input, cached input, cache write, output) per million.
ANTHROPIC_PRICES = {
    "official": (2_500_000, 1_250_000, 3_125_000, 10_000_000),
    "routed": (1_000_000, 500_000, 1_250_000, 4_000_000),
}
RESPONSES_PRICES = {
    "official": (2_500_000, 1_250_000, 2_500_000, 10_000_000),
    "routed": (1_000_000, 500_000, 1_000_000, 4_000_000),
}
ROUTES = [("", "official"), ("@routed", "routed")]
CHAT = [{"role": "system", "content": SYSTEM_TEXT}, {"role": "user", "content": USER_TEXT}]


@pytest.fixture(autouse=True)
def anthropic_channel_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Anthropic channels' key (secret_name mock-anthropic-key): the mock refuses
    any other."""
    monkeypatch.setenv("TOKENFORGE_CHANNEL_SECRET_MOCK_ANTHROPIC_KEY", "sk-ant-mock")


def charge(tokens: dict[str, int], prices: tuple[int, int, int, int]) -> int:
    fresh = tokens["prompt"] - tokens["cached"] - tokens["cache_write"]
    exact = (
        fresh * prices[0]
        + tokens["cached"] * prices[1]
        + tokens["cache_write"] * prices[2]
        + tokens["completion"] * prices[3]
    )
    return -(-exact // 1_000_000)


async def last_upstream_call(system: System) -> dict[str, Any]:
    [call] = await last_upstream_calls(system)
    return call


async def last_upstream_calls(system: System) -> list[dict[str, Any]]:
    """The mock's last recorded request, if any (a list of at most one)."""
    async with httpx.AsyncClient() as http:
        recorded = (await http.get(f"{system.mock_url}/mock/requests", params={"limit": 1})).json()
    calls: list[dict[str, Any]] = recorded["data"]
    return calls


def assert_receipt_tokens(receipt: dict[str, Any], tokens: dict[str, int]) -> None:
    assert {k: receipt["tokens"][k] for k in tokens} == tokens
    assert receipt["tokens"]["reported_by_upstream"] is True


# --- an OpenAI client on an Anthropic Messages channel ----------------------------------


@pytest.mark.parametrize(("suffix", "route"), ROUTES)
async def test_openai_chat_on_an_anthropic_channel_is_charged_by_every_token_class(
    system: System, suffix: str, route: str
) -> None:
    _, key = await system.new_account()
    raw = await gpt(system, key).chat.completions.with_raw_response.create(
        model="proto-anthropic" + suffix, messages=CHAT
    )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert completion.choices[0].message.content.startswith("This is the mock answer to: Say")
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens == PROMPT_TOKENS
    assert usage.completion_tokens == 16
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 3
    cost = (usage.model_extra or {})["cost_micros"]
    assert cost == charge(ANTHROPIC_TOKENS, ANTHROPIC_PRICES[route])
    receipt = await money_story(system, key, request_id, cost)
    assert_receipt_tokens(receipt, ANTHROPIC_TOKENS)
    assert receipt["channel_protocol"] == "anthropic_messages"
    assert receipt["client_format"] == "openai" and receipt["route"] == route
    assert receipt["prices"]["cache_write_per_million"]["micros"] == ANTHROPIC_PRICES[route][2]

    call = await last_upstream_call(system)
    assert call["path"].endswith("/v1/messages")
    assert call["headers"]["x-api-key"] == "sk-ant-mock"
    assert "authorization" not in call["headers"]
    assert call["headers"]["anthropic-version"] == "2023-06-01"
    assert call["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    body = call["body"]
    assert body["system"] == SYSTEM_TEXT and body["max_tokens"] == 512
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": USER_TEXT}]}]


async def test_an_openai_chat_stream_on_an_anthropic_channel_ends_with_the_charge(
    system: System,
) -> None:
    _, key = await system.new_account()
    stream = await gpt(system, key).chat.completions.create(
        model="proto-anthropic",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=100,
    )
    text, finish, final = "", None, None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            final = chunk
    assert text.startswith("This is the mock answer to: Say hello")
    assert finish == "stop" and final is not None and final.usage is not None
    assert final.usage.prompt_tokens == PROMPT_TOKENS and final.usage.completion_tokens == 16
    extra = final.model_extra or {}
    cost = (final.usage.model_extra or {})["cost_micros"]
    assert cost == charge(ANTHROPIC_TOKENS, ANTHROPIC_PRICES["official"])
    receipt = await money_story(system, key, extra["receipt"]["request_id"], cost)
    assert extra["receipt"] == receipt
    assert_receipt_tokens(receipt, ANTHROPIC_TOKENS)
    assert receipt["channel_protocol"] == "anthropic_messages"
    assert (await last_upstream_call(system))["body"]["stream"] is True


async def test_openai_responses_with_a_tool_on_an_anthropic_channel_get_the_call(
    system: System,
) -> None:
    _, key = await system.new_account()
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER}
    response = await gpt(system, key).responses.create(
        model="proto-anthropic",
        input="Please call a tool for Paris",
        tools=[tool],  # type: ignore[list-item]
        max_output_tokens=100,
    )
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "mock"}
    extra = response.model_extra or {}
    assert extra["receipt"]["client_format"] == "openai_responses"
    assert extra["receipt"]["channel_protocol"] == "anthropic_messages"
    sent = (await last_upstream_call(system))["body"]
    assert sent["tools"] == [{"name": "get_weather", "input_schema": WEATHER}]

    async with gpt(system, key).responses.stream(
        model="proto-anthropic", input=USER_TEXT, max_output_tokens=100
    ) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.input_tokens == 9
    assert final.usage.input_tokens_details.cached_tokens == 3
    cost = (final.usage.model_extra or {})["cost_micros"]
    tokens = {**ANTHROPIC_TOKENS, "prompt": 9}
    assert cost == charge(tokens, ANTHROPIC_PRICES["official"])
    receipt = await money_story(
        system, key, (final.model_extra or {})["receipt"]["request_id"], cost
    )
    assert_receipt_tokens(receipt, tokens)


class Weather(BaseModel):
    city: str
    celsius: int


@pytest.mark.parametrize("model", ["demo-chat", "proto-anthropic", "proto-responses"])
async def test_chat_parse_with_a_json_schema_gets_the_schemas_object_on_every_protocol(
    system: System, model: str
) -> None:
    _, key = await system.new_account()
    completion = await gpt(system, key).chat.completions.parse(
        model=model, messages=CHAT, response_format=Weather, max_tokens=100
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather) and parsed.city == "mock"
    extra = (completion.usage.model_extra or {}) if completion.usage else {}
    receipt = (completion.model_extra or {})["receipt"]
    await money_story(system, key, receipt["request_id"], extra["cost_micros"])
    sent = (await last_upstream_call(system))["body"]
    if model == "proto-anthropic":  # one forced tool whose input is the answer
        assert sent["tool_choice"] == {"type": "tool", "name": "json_answer"}
        assert sent["tools"][0]["input_schema"]["required"] == ["city", "celsius"]
    elif model == "proto-responses":
        assert sent["text"]["format"]["type"] == "json_schema"
        assert sent["text"]["format"]["name"] == "Weather"


# --- an Anthropic client on an OpenAI Responses channel --------------------------------


@pytest.mark.parametrize(("suffix", "route"), ROUTES)
async def test_anthropic_messages_on_a_responses_channel_are_charged_with_reasoning_apart(
    system: System, suffix: str, route: str
) -> None:
    _, key = await system.new_account()
    raw = await claude(system, key).messages.with_raw_response.create(
        model="proto-responses" + suffix,
        max_tokens=200,
        system=SYSTEM_TEXT,
        messages=[{"role": "user", "content": USER_TEXT}],
    )
    message = await raw.parse()
    request_id = raw.headers["x-request-id"]
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("This is the mock answer to: Say hello")
    assert message.usage.input_tokens == PROMPT_TOKENS - 3
    assert message.usage.cache_read_input_tokens == 3
    assert message.usage.output_tokens == 20
    cost = (message.usage.model_extra or {})["cost_micros"]
    assert cost == charge(RESPONSES_TOKENS, RESPONSES_PRICES[route])
    receipt = await money_story(system, key, request_id, cost)
    assert_receipt_tokens(receipt, RESPONSES_TOKENS)
    assert receipt["channel_protocol"] == "openai_responses"
    assert receipt["client_format"] == "anthropic_messages"
    assert receipt["prices"]["reasoning_per_million"] == receipt["prices"]["output_per_million"]

    call = await last_upstream_call(system)
    assert call["path"].endswith("/v1/responses")
    body = call["body"]
    assert body["store"] is False and body["max_output_tokens"] == 200
    assert body["input"][0] == {"type": "message", "role": "system", "content": SYSTEM_TEXT}


async def test_an_anthropic_stream_on_a_responses_channel_names_the_charge(
    system: System,
) -> None:
    _, key = await system.new_account()
    kinds: list[str] = []
    async with claude(system, key).messages.stream(
        model="proto-responses",
        max_tokens=200,
        system=SYSTEM_TEXT,
        messages=[{"role": "user", "content": USER_TEXT}],
    ) as stream:
        request_id = stream.response.headers["x-request-id"]
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 20
    receipt = await money_story(
        system, key, request_id, charge(RESPONSES_TOKENS, RESPONSES_PRICES["official"])
    )
    assert_receipt_tokens(receipt, RESPONSES_TOKENS)
    assert receipt["channel_protocol"] == "openai_responses"


async def test_anthropic_tools_on_a_responses_channel_come_back_as_tool_use(
    system: System,
) -> None:
    _, key = await system.new_account()
    message = await claude(system, key).messages.create(
        model="proto-responses",
        max_tokens=200,
        tools=[{"name": "get_weather", "input_schema": WEATHER}],  # type: ignore[list-item, typeddict-item]
        messages=[{"role": "user", "content": "Please call a tool for Paris"}],
    )
    assert message.stop_reason == "tool_use"
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "mock"}
    sent = (await last_upstream_call(system))["body"]
    assert sent["tools"][0]["type"] == "function" and sent["tools"][0]["name"] == "get_weather"


# --- refused before anything is held ----------------------------------------------------


async def test_what_a_protocol_cannot_carry_is_refused_naming_it_with_nothing_held(
    system: System,
) -> None:
    _, key = await system.new_account()
    before = await balances(system, key)
    with pytest.raises(openai.BadRequestError) as two:
        await gpt(system, key).chat.completions.create(model="proto-anthropic", messages=CHAT, n=2)
    error: Any = two.value.body
    assert error["param"] == "n" and "anthropic_messages" in error["message"]
    with pytest.raises(openai.BadRequestError) as stop:
        await gpt(system, key).chat.completions.create(
            model="proto-responses", messages=CHAT, stop=["END"], stream=True
        )
    error = stop.value.body
    assert error["param"] == "stop" and "openai_responses" in error["message"]
    with pytest.raises(anthropic.BadRequestError) as sequences:
        await claude(system, key).messages.create(
            model="proto-responses",
            max_tokens=50,
            stop_sequences=["END"],
            messages=[{"role": "user", "content": "hi"}],
        )
    anthropic_error: Any = sequences.value.body
    assert anthropic_error["error"]["type"] == "invalid_request_error"
    assert "`stop`" in anthropic_error["error"]["message"]
    assert await balances(system, key) == before


# --- fallback between protocols ---------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_channel_down_falls_back_to_a_channel_of_another_protocol(
    system: System, streamed: bool
) -> None:
    _, key = await system.new_account()
    client = gpt(system, key)
    if streamed:
        stream = await client.chat.completions.create(
            model="proto-fallback",
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        extra = chunks[-1].model_extra or {}
        usage = chunks[-1].usage
    else:
        completion = await client.chat.completions.create(model="proto-fallback", messages=CHAT)
        extra = completion.model_extra or {}
        usage = completion.usage
    assert usage is not None and usage.completion_tokens == 20
    cost = (usage.model_extra or {})["cost_micros"]
    assert cost == charge(RESPONSES_TOKENS, ANTHROPIC_PRICES["official"])
    receipt = await money_story(system, key, extra["receipt"]["request_id"], cost)
    assert [(a["channel"], a["outcome"]) for a in receipt["attempts"]] == [
        ("mock-anthropic-down", "http_503"),
        ("mock-responses-fb", "ok"),
    ]
    assert receipt["channel_protocol"] == "openai_responses" and receipt["fallback_used"]


async def test_a_route_down_falls_back_to_a_route_whose_channel_speaks_anthropic(
    system: System,
) -> None:
    _, key = await system.new_account(fallback_allowed=True)
    async with claude(system, key).messages.stream(
        model="proto-route-fallback",
        max_tokens=200,
        system=SYSTEM_TEXT,
        messages=[{"role": "user", "content": USER_TEXT}],
    ) as stream:
        request_id = stream.response.headers["x-request-id"]
        final = await stream.get_final_message()
    assert final.usage.cache_creation_input_tokens == 2
    assert final.usage.cache_read_input_tokens == 3 and final.usage.input_tokens == 10
    receipt = await money_story(
        system, key, request_id, charge(ANTHROPIC_TOKENS, ANTHROPIC_PRICES["routed"])
    )
    assert receipt["route"] == "routed" and receipt["channel_protocol"] == "anthropic_messages"
    assert [r["outcome"] for r in receipt["route_attempts"]] == ["fell_back", "final"]
    assert_receipt_tokens(receipt, ANTHROPIC_TOKENS)


# --- legacy completions and count_tokens on channels of other protocols ------------------


@pytest.mark.parametrize(
    ("model", "tokens", "prices", "protocol"),
    [
        ("proto-anthropic", ANTHROPIC_TOKENS, ANTHROPIC_PRICES, "anthropic_messages"),
        ("proto-responses", RESPONSES_TOKENS, RESPONSES_PRICES, "openai_responses"),
    ],
)
async def test_legacy_completions_on_other_protocols_are_charged_as_reported(
    system: System,
    model: str,
    tokens: dict[str, int],
    prices: dict[str, tuple[int, int, int, int]],
    protocol: str,
) -> None:
    _, key = await system.new_account()
    # One prompt message: 4 + 4 words at the mock; the channel's cache counts as before.
    expected = {**tokens, "prompt": 8}
    completion = await gpt(system, key).completions.create(
        model=model, prompt="Once upon a time", max_tokens=50
    )
    assert completion.choices[0].text.startswith("This is the mock answer to: Once")
    cost = (completion.usage.model_extra or {})["cost_micros"] if completion.usage else 0
    assert cost == charge(expected, prices["official"])
    receipt = await money_story(
        system, key, (completion.model_extra or {})["receipt"]["request_id"], cost
    )
    assert_receipt_tokens(receipt, expected)
    assert receipt["client_format"] == "openai_completions"
    assert receipt["channel_protocol"] == protocol

    stream = await gpt(system, key).completions.create(
        model=model + "@routed",
        prompt="Once upon a time",
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith("This is the mock answer to: Once")
    last = chunks[-1]
    assert last.usage is not None
    cost = (last.usage.model_extra or {})["cost_micros"]
    assert cost == charge(expected, prices["routed"])
    receipt = await money_story(
        system, key, (last.model_extra or {})["receipt"]["request_id"], cost
    )
    assert receipt["channel_protocol"] == protocol and receipt["route"] == "routed"


async def test_count_tokens_on_an_anthropic_channel_model_holds_and_calls_nothing(
    system: System,
) -> None:
    _, key = await system.new_account()
    before = await balances(system, key)
    last_before = await last_upstream_calls(system)
    counted = await claude(system, key).messages.count_tokens(
        model="proto-anthropic", messages=[{"role": "user", "content": USER_TEXT}]
    )
    assert counted.input_tokens > 0
    assert await balances(system, key) == before
    # The mock's last request is the same one: nothing was called upstream.
    assert await last_upstream_calls(system) == last_before


async def test_the_usage_listing_and_its_sums_show_every_token_class(system: System) -> None:
    _, key = await system.new_account()
    client = gpt(system, key)
    await client.chat.completions.create(model="proto-anthropic", messages=CHAT)
    await client.chat.completions.create(model="proto-responses", messages=CHAT)
    async with system.http(key) as http:
        sums = (await http.get("/v1/usage/aggregates", params={"by": "model"})).json()
        listed = await http.get("/v1/usage", headers={"accept": "text/csv"})
    by_model = {row["model"]: row for row in sums["data"]}
    anthropic_row, responses_row = by_model["proto-anthropic"], by_model["proto-responses"]
    assert (anthropic_row["cached_tokens"], anthropic_row["cache_write_tokens"]) == (3, 2)
    assert (responses_row["reasoning_tokens"], responses_row["completion_tokens"]) == (4, 20)
    header, *rows = [line.split(",") for line in listed.text.strip().splitlines()]
    for name in ("cache_write_tokens", "reasoning_tokens", "client_format", "channel_protocol"):
        assert name in header
    protocols = sorted(row[header.index("channel_protocol")] for row in rows)
    assert protocols == ["anthropic_messages", "openai_responses"]
