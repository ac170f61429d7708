"""The client formats besides Chat Completions on the same money path, as their official
SDKs see them: Anthropic Messages (the `anthropic` SDK), OpenAI Responses and legacy
completions (the `openai` SDK). Each answer's cost is the receipt's charge and the
ledger row's amount, on the official and the routed route; a 402 comes in each
format's error shape; a stream the client abandons leaves nothing held."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.e2e.harness import System
from tests.e2e.test_budgets import until_nothing_held
from tests.e2e.test_paid_request import CREDIT_PRICES, ROUTED_PRICES, balances, expected_charge
from tests.e2e.test_streaming_and_fallback import receipt_of

ROUTES = [("demo-chat", CREDIT_PRICES, "official"), ("demo-chat@routed", ROUTED_PRICES, "routed")]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
# Mock upstream counting (apps/mock_upstream/tokens.py): words + 4 per message.
SYSTEM_TEXT = "Answer briefly"  # 2 + 4
USER_TEXT = "Say hello to the ledger"  # 5 + 4
PROMPT_TOKENS = 15


def claude(system: System, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=system.gateway_url, api_key=key, max_retries=0)


def gpt(system: System, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)


async def money_story(
    system: System, key: str, request_id: str, cost_micros: int
) -> dict[str, Any]:
    """The answer's cost is the receipt's charge, the ledger row's amount and what the
    credits it was paid from gave."""
    receipt = await receipt_of(system, key, request_id)
    async with system.http(key) as http:
        rows = (await http.get("/v1/wallet/ledger", params={"request_id": request_id})).json()
        paid = (await http.get(receipt["paid_from_url"])).json()["data"]
    assert receipt["charge"]["micros"] == cost_micros > 0
    [row] = rows["data"]
    assert row["kind"] == "request_charge"
    assert row["amount"]["micros"] == -cost_micros
    assert row["entry_id"] == receipt["ledger_entry_id"]
    assert {s["entry_id"] for s in paid} == {row["entry_id"]}, paid
    assert sum(s["used"]["micros"] for s in paid) == cost_micros, paid
    return receipt


async def last_upstream_body(system: System) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        recorded = (await http.get(f"{system.mock_url}/mock/requests", params={"limit": 1})).json()
    body: dict[str, Any] = recorded["data"][-1]["body"]
    return body


# --- Anthropic Messages ----------------------------------------------------------------


@pytest.mark.parametrize(("model", "prices", "route"), ROUTES)
async def test_anthropic_messages_create_is_charged_as_its_receipt_and_ledger_row(
    system: System, model: str, prices: tuple[int, int], route: str
) -> None:
    _, key = await system.new_account()
    raw = await claude(system, key).messages.with_raw_response.create(
        model=model,
        max_tokens=200,
        system=SYSTEM_TEXT,
        messages=[{"role": "user", "content": USER_TEXT}],
    )
    message = await raw.parse()
    request_id = raw.headers["x-request-id"]
    assert message.type == "message" and message.role == "assistant"
    assert message.id == "msg_" + request_id.removeprefix("req_")
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("This is the mock answer to: Say hello")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == PROMPT_TOKENS
    assert message.usage.output_tokens == 16
    cost = (message.usage.model_extra or {})["cost_micros"]
    assert cost == expected_charge(prices, PROMPT_TOKENS, 16)
    assert raw.headers["x-tokenforge-route"] == route
    receipt = await money_story(system, key, request_id, cost)
    assert (message.model_extra or {})["receipt"] == receipt
    assert receipt["route"] == route and receipt["tokens"]["prompt"] == PROMPT_TOKENS
    assert receipt["client_format"] == "anthropic_messages"


async def test_anthropic_max_tokens_cuts_the_answer_with_stop_reason_max_tokens(
    system: System,
) -> None:
    _, key = await system.new_account()
    message = await claude(system, key).messages.create(
        model="demo-chat",
        max_tokens=3,
        messages=[{"role": "user", "content": [{"type": "text", "text": USER_TEXT}]}],
        stop_sequences=["never"],
        extra_body={"temperature": 0.2},
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    sent = await last_upstream_body(system)
    assert sent["max_tokens"] == 3 and sent["stop"] == ["never"] and sent["temperature"] == 0.2


@pytest.mark.parametrize(("model", "prices", "route"), ROUTES)
async def test_anthropic_messages_stream_names_the_charge_in_message_delta(
    system: System, model: str, prices: tuple[int, int], route: str
) -> None:
    _, key = await system.new_account()
    kinds: list[str] = []
    delta_event: Any = None
    async with claude(system, key).messages.stream(
        model=model,
        max_tokens=200,
        system=[{"type": "text", "text": SYSTEM_TEXT}],
        messages=[{"role": "user", "content": USER_TEXT}],
    ) as stream:
        request_id = stream.response.headers["x-request-id"]
        async for event in stream:
            kinds.append(event.type)
            if event.type == "message_delta":
                delta_event = event
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert text.startswith("This is the mock answer to: Say hello")
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[1] == "content_block_start" and "content_block_stop" in kinds
    assert kinds.index("content_block_stop") < kinds.index("message_delta")
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == PROMPT_TOKENS and final.usage.output_tokens == 16
    cost = (delta_event.usage.model_extra or {})["cost_micros"]
    assert cost == expected_charge(prices, PROMPT_TOKENS, 16)
    receipt = await money_story(system, key, request_id, cost)
    assert (delta_event.model_extra or {})["receipt"]["ledger_entry_id"] == receipt[
        "ledger_entry_id"
    ]


async def test_anthropic_tools_get_a_tool_use_and_tool_results_reach_the_channel(
    system: System,
) -> None:
    _, key = await system.new_account()
    client = claude(system, key)
    tools: Any = [
        {"name": "get_weather", "description": "The weather of a city", "input_schema": WEATHER}
    ]
    asked: Any = {"role": "user", "content": "Please call a tool for Paris"}
    raw = await client.messages.with_raw_response.create(
        model="demo-chat", max_tokens=100, tools=tools, messages=[asked]
    )
    message = await raw.parse()
    assert message.stop_reason == "tool_use"
    [use] = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "mock"}
    await money_story(
        system, key, raw.headers["x-request-id"], (message.usage.model_extra or {})["cost_micros"]
    )
    sent = await last_upstream_body(system)
    assert sent["tools"][0]["function"]["parameters"] == WEATHER

    result: Any = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
    }
    history: Any = [asked, {"role": "assistant", "content": message.content}, result]
    await client.messages.create(model="demo-chat", max_tokens=100, tools=tools, messages=history)
    sent = await last_upstream_body(system)
    assert sent["messages"][1]["tool_calls"][0]["id"] == use.id
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}

    async with client.messages.stream(
        model="demo-chat", max_tokens=100, tools=tools, messages=[asked]
    ) as stream:
        final = await stream.get_final_message()
    [streamed] = [b for b in final.content if b.type == "tool_use"]
    assert streamed.input == {"city": "mock"} and final.stop_reason == "tool_use"


async def test_an_anthropic_repeat_with_the_same_idempotency_key_gets_the_first_answer(
    system: System,
) -> None:
    _, key = await system.new_account()
    body = {"model": "demo-chat", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": key, "idempotency-key": "messages-once"}
    async with httpx.AsyncClient(base_url=system.gateway_url) as http:
        first = await http.post("/v1/messages", json=body, headers=headers)
        again = await http.post("/v1/messages", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert again.json() == first.json()
    async with system.http(key) as http:
        assert len((await http.get("/v1/usage")).json()["data"]) == 1

    _, poor = await system.new_account(credit=10, routed=0)
    headers = {"x-api-key": poor, "idempotency-key": "refused-once"}
    async with httpx.AsyncClient(base_url=system.gateway_url) as http:
        refused = [await http.post("/v1/messages", json=body, headers=headers) for _ in range(2)]
    assert [r.status_code for r in refused] == [402, 402]
    assert refused[1].headers["idempotent-replayed"] == "true"
    assert refused[0].json()["error"] == refused[1].json()["error"]
    assert refused[1].json()["error"]["type"] == "billing_error"


async def test_anthropic_count_tokens_charges_nothing(system: System) -> None:
    _, key = await system.new_account()
    before = await balances(system, key)
    counted = await claude(system, key).messages.count_tokens(
        model="demo-chat",
        system=SYSTEM_TEXT,
        messages=[{"role": "user", "content": USER_TEXT}],
    )
    assert counted.input_tokens > 0
    longer = await claude(system, key).messages.count_tokens(
        model="demo-chat", messages=[{"role": "user", "content": USER_TEXT * 10}]
    )
    assert longer.input_tokens > counted.input_tokens
    assert await balances(system, key) == before
    async with system.http(key) as http:
        assert (await http.get("/v1/usage")).json()["data"] == []


async def test_anthropic_errors_come_in_anthropics_shape(system: System) -> None:
    _, key = await system.new_account(credit=10, routed=0)
    async with httpx.AsyncClient(base_url=system.gateway_url) as http:
        no_cap = await http.post(
            "/v1/messages",
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert no_cap.status_code == 400
    body = no_cap.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]

    with pytest.raises(anthropic.AuthenticationError) as unknown:
        await claude(system, "tf_not_a_real_key").messages.create(
            model="demo-chat", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]

    with pytest.raises(anthropic.NotFoundError) as no_model:
        await claude(system, key).messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert no_model.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]

    with pytest.raises(anthropic.APIStatusError) as refused:
        await claude(system, key).messages.create(
            model="demo-chat", max_tokens=500, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.status_code == 402
    error: Any = refused.value.body
    assert error["type"] == "error" and error["error"]["type"] == "billing_error"
    assert "Top up" in error["error"]["message"]
    assert error["error"]["details"]["available_micros"] == 10
    assert (await balances(system, key))["credit"] == {"posted": 10, "held": 0, "available": 10}


async def test_an_unexpected_failure_on_messages_answers_api_error_with_the_request_id(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.gateway.domain.formats.anthropic import AnthropicFormat

    def broken(self: AnthropicFormat) -> dict[str, Any]:
        raise RuntimeError("SELECT secret FROM wallet.balances")

    account, key = await system.new_account()
    monkeypatch.setattr(AnthropicFormat, "chat_body", broken)
    async with httpx.AsyncClient(base_url=system.gateway_url) as http:
        answer = await http.post(
            "/v1/messages",
            headers={"x-api-key": key},
            json={
                "model": "demo-chat",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    monkeypatch.undo()
    assert answer.status_code == 500
    request_id = answer.headers["x-request-id"]
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["request_id"] == request_id and request_id in body["error"]["message"]
    assert "SELECT" not in answer.text and "wallet." not in answer.text
    await until_nothing_held(system, account)


# --- OpenAI Responses ------------------------------------------------------------------


@pytest.mark.parametrize(("model", "prices", "route"), ROUTES)
async def test_responses_create_is_charged_as_its_receipt_and_ledger_row(
    system: System, model: str, prices: tuple[int, int], route: str
) -> None:
    _, key = await system.new_account()
    raw = await gpt(system, key).responses.with_raw_response.create(
        model=model, instructions=SYSTEM_TEXT, input=USER_TEXT, max_output_tokens=200
    )
    response = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert response.id == "resp_" + request_id.removeprefix("req_")
    assert response.status == "completed"
    assert response.output_text.startswith("This is the mock answer to: Say hello")
    assert response.usage is not None
    assert response.usage.input_tokens == PROMPT_TOKENS and response.usage.output_tokens == 16
    assert response.usage.total_tokens == PROMPT_TOKENS + 16
    cost = (response.usage.model_extra or {})["cost_micros"]
    assert cost == expected_charge(prices, PROMPT_TOKENS, 16)
    assert raw.headers["x-tokenforge-route"] == route
    receipt = await money_story(system, key, request_id, cost)
    assert (response.model_extra or {})["receipt"] == receipt
    assert receipt["client_format"] == "openai_responses"


async def test_responses_function_calls_and_json_schema_reach_the_channel(
    system: System,
) -> None:
    _, key = await system.new_account()
    client = gpt(system, key)
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    response = await client.responses.create(
        model="demo-chat", input="Please call a tool for Paris", tools=tools
    )
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "mock"}

    follow_up: Any = [
        {"role": "user", "content": "Please call a tool for Paris"},
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    schema: Any = {
        "format": {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}
    }
    await client.responses.create(model="demo-chat", input=follow_up, text=schema)
    sent = await last_upstream_body(system)
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER, "strict": True},
    }


@pytest.mark.parametrize(("model", "prices", "route"), ROUTES)
async def test_responses_stream_sends_the_typed_events_and_completes_with_the_charge(
    system: System, model: str, prices: tuple[int, int], route: str
) -> None:
    _, key = await system.new_account()
    kinds: list[str] = []
    numbers: list[int] = []
    async with gpt(system, key).responses.stream(
        model=model, instructions=SYSTEM_TEXT, input=USER_TEXT
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
        final = await stream.get_final_response()
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert numbers == list(range(len(kinds)))
    assert final.output_text.startswith("This is the mock answer to: Say hello")
    assert final.usage is not None and final.usage.input_tokens == PROMPT_TOKENS
    cost = (final.usage.model_extra or {})["cost_micros"]
    assert cost == expected_charge(prices, PROMPT_TOKENS, final.usage.output_tokens)
    receipt = (final.model_extra or {})["receipt"]
    assert receipt["route"] == route
    await money_story(system, key, receipt["request_id"], cost)


async def test_a_responses_stream_of_a_function_call_completes_with_the_call(
    system: System,
) -> None:
    _, key = await system.new_account()
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    async with gpt(system, key).responses.stream(
        model="demo-chat", input="Please call a tool for Paris", tools=tools
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "mock"}
    assert final.usage is not None and (final.usage.model_extra or {})["cost_micros"] > 0


async def test_responses_refuse_previous_response_id_naming_the_param(system: System) -> None:
    _, key = await system.new_account()
    with pytest.raises(openai.BadRequestError) as refused:
        await gpt(system, key).responses.create(
            model="demo-chat", input="again", previous_response_id="resp_123"
        )
    assert refused.value.param == "previous_response_id"
    assert "send the conversation in `input`" in refused.value.message


# --- legacy completions ----------------------------------------------------------------


@pytest.mark.parametrize(("model", "prices", "route"), ROUTES)
async def test_completions_create_is_charged_as_its_receipt_and_ledger_row(
    system: System, model: str, prices: tuple[int, int], route: str
) -> None:
    _, key = await system.new_account()
    raw = await gpt(system, key).completions.with_raw_response.create(
        model=model, prompt=[USER_TEXT], max_tokens=50, n=2
    )
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].text.startswith("This is the mock answer to: Say hello")
    assert completion.usage is not None and completion.usage.prompt_tokens == 9
    assert completion.usage.completion_tokens == 32
    cost = (completion.usage.model_extra or {})["cost_micros"]
    assert cost == expected_charge(prices, 9, 32)
    receipt = await money_story(system, key, raw.headers["x-request-id"], cost)
    assert (completion.model_extra or {})["receipt"] == receipt
    assert receipt["route"] == route and receipt["client_format"] == "openai_completions"


async def test_completions_stream_in_text_completion_chunks_with_the_charge_last(
    system: System,
) -> None:
    _, key = await system.new_account()
    stream = await gpt(system, key).completions.create(
        model="demo-chat",
        prompt=USER_TEXT,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith("This is the mock answer to: Say hello")
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.usage is not None and last.usage.completion_tokens == 16
    cost = (last.usage.model_extra or {})["cost_micros"]
    receipt = (last.model_extra or {})["receipt"]
    await money_story(system, key, receipt["request_id"], cost)


async def test_completions_without_max_tokens_answer_16_tokens_and_refuse_many_prompts(
    system: System,
) -> None:
    _, key = await system.new_account()
    completion = await gpt(system, key).completions.create(
        model="demo-chat", prompt="one two three four five six seven eight nine ten eleven"
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 16
    with pytest.raises(openai.BadRequestError) as refused:
        await gpt(system, key).completions.create(model="demo-chat", prompt=["one", "two"])
    assert refused.value.param == "prompt"


# --- every format: 402 in its shape, an abandoned stream holds nothing -----------------


async def test_an_empty_balance_is_402_in_every_openai_format(system: System) -> None:
    account, key = await system.new_account(credit=10, routed=0)
    client = gpt(system, key)
    with pytest.raises(openai.APIStatusError) as responses:
        await client.responses.create(model="demo-chat", input="hi", max_output_tokens=500)
    with pytest.raises(openai.APIStatusError) as completions:
        await client.completions.create(model="demo-chat", prompt="hi", max_tokens=500)
    for refused in (responses.value, completions.value):
        assert refused.status_code == 402
        assert refused.code == "insufficient_balance"
        assert "Top up" in refused.message
    await until_nothing_held(system, account)
    assert (await balances(system, key))["credit"] == {"posted": 10, "held": 0, "available": 10}
    async with system.http(key) as http:
        rejected = (await http.get("/v1/usage")).json()["data"]
    assert sorted(r["client_format"] for r in rejected) == [
        "openai_completions",
        "openai_responses",
    ]
    assert {r["status"] for r in rejected} == {"rejected"}


STREAMS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/completions", {"prompt": "tell me everything", "stream": True}),
    ("/v1/responses", {"input": "tell me everything", "stream": True}),
    (
        "/v1/messages",
        {
            "max_tokens": 400,
            "stream": True,
            "messages": [{"role": "user", "content": "tell me everything"}],
        },
    ),
]


@pytest.mark.parametrize(("path", "body"), STREAMS)
async def test_a_stream_abandoned_in_any_format_leaves_nothing_held(
    system: System, path: str, body: dict[str, Any]
) -> None:
    account, key = await system.new_account()
    body = {"model": "test-slow", **body}
    if path == "/v1/completions":
        body["max_tokens"] = 400
    async with (
        httpx.AsyncClient(base_url=system.gateway_url, timeout=30) as http,
        http.stream("POST", path, headers={"x-api-key": key} | auth(key), json=body) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        frames = 0
        async for line in response.aiter_lines():
            if line.startswith("data:") and orjson.loads(line[5:]) is not None:
                frames += 1
            if frames >= 8:
                break  # the client goes away mid-stream
    await until_nothing_held(system, account)
    receipt = await receipt_of(system, key, request_id)
    assert receipt["settlement_rule"] == "client_disconnect"
    assert 0 < receipt["tokens"]["completion"] < 200
    assert (await balances(system, key))["credit"]["held"] == 0
    await money_story(system, key, request_id, receipt["charge"]["micros"])


async def events_of(system: System, key: str, path: str, body: dict[str, Any]) -> list[Any]:
    """(event name, data) of a whole stream, read raw."""
    seen: list[Any] = []
    name = None
    async with (
        httpx.AsyncClient(base_url=system.gateway_url, timeout=30) as http,
        http.stream("POST", path, headers=auth(key), json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                seen.append((name, orjson.loads(line[6:])))
    return seen


async def test_a_stream_the_upstream_cuts_names_its_partial_charge_in_each_format(
    system: System,
) -> None:
    _, key = await system.new_account()
    asked = [{"role": "user", "content": "tell me everything"}]
    messages = await events_of(
        system,
        key,
        "/v1/messages",
        {"model": "test-cut", "max_tokens": 100, "stream": True, "messages": asked},
    )
    (_, delta), (last, error) = messages[-2], messages[-1]
    assert last == "error" and error["error"]["type"] == "api_error"
    receipt = await money_story(
        system, key, delta["receipt"]["request_id"], delta["usage"]["cost_micros"]
    )
    assert receipt["status"] == "partial" and receipt["settlement_rule"] == "error_mid_stream"

    responses = await events_of(
        system, key, "/v1/responses", {"model": "test-cut", "input": "tell me", "stream": True}
    )
    name, failed = responses[-1]
    assert name == "response.failed" and failed["response"]["status"] == "failed"
    receipt = await money_story(
        system,
        key,
        failed["response"]["receipt"]["request_id"],
        failed["response"]["usage"]["cost_micros"],
    )
    assert receipt["status"] == "partial"


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
