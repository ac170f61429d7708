"""The channel protocols' translators (services/gateway/domain/protocols/) against the
mock upstream's native protocols (tokenforge/mock_upstream/protocols.py), as plain
data: a chat request written in the channel's protocol, the channel's answer and
stream read back as chat, with the upstream's token counts exactly; what a protocol
cannot carry refused naming it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from apps.mock_upstream import protocols as native
from apps.mock_upstream import replies
from services.gateway.domain.planning import charge_for, usage_from_response
from services.gateway.domain.protocols import (
    ANTHROPIC_MESSAGES,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    protocol_for,
    refusal,
)
from tokenforge.errors import DomainError
from tokenforge.money import Bucket, Money, Price

CLASSES = replies.TokenClasses(cached=3, cache_write=2, reasoning=4)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def chat(**more: Any) -> dict[str, Any]:
    return {
        "model": "up-model",
        "messages": [
            {"role": "system", "content": "Answer briefly"},
            {"role": "user", "content": "Say hello to the ledger"},
        ],
        "max_tokens": 100,
        **more,
    }


def served(protocol: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The chat answer and the chat stream lines of one call on a channel of `protocol`,
    answered by the mock's native protocol."""
    call = protocol_for(protocol)
    sent = call.request(body)
    if protocol == ANTHROPIC_MESSAGES:
        plan = replies.plan_chat(native.messages_request(sent), 16, CLASSES)
        whole, frames = native.message_object(plan, True), native.message_frames(plan, True)
    else:
        plan = replies.plan_chat(native.responses_request(sent), 16, CLASSES)
        whole, frames = native.response_object(plan, True), native.response_frames(plan, True)
    answer = call.answer(whole)
    assert answer is not None
    reader = call.reader()
    lines = [
        out
        for frame in frames
        for line in frame.data.decode().split("\n")
        for out in reader.line(line)
    ]
    return answer, lines


def chunks_of(lines: list[str]) -> list[dict[str, Any]]:
    assert lines[-1] == "data: [DONE]"
    return [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


@pytest.mark.parametrize("protocol", [ANTHROPIC_MESSAGES, OPENAI_RESPONSES])
def test_an_answer_and_its_stream_read_back_as_the_same_chat_answer(protocol: str) -> None:
    answer, lines = served(protocol, chat())
    message = answer["choices"][0]["message"]
    assert message["content"].startswith("This is the mock answer to: Say hello")
    assert answer["choices"][0]["finish_reason"] == "stop"
    chunks = chunks_of(lines)
    assert streamed_text(chunks) == message["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    # The stream's usage chunk carries the same counts as the whole answer.
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer["usage"]


def test_anthropic_usage_is_every_prompt_token_with_cache_reads_and_writes_named() -> None:
    answer, _ = served(ANTHROPIC_MESSAGES, chat())
    # The mock counts 15 prompt tokens; Anthropic reports 10 + 3 read + 2 written.
    assert answer["usage"] == {
        "prompt_tokens": 15,
        "completion_tokens": 20,
        "total_tokens": 35,
        "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    usage = usage_from_response(answer)
    assert usage is not None and (usage.cached_tokens, usage.cache_write_tokens) == (3, 2)
    price = Price(Bucket.CREDIT, 2_500_000, 10_000_000, 1_250_000, 0, 3_125_000)
    charge, capped = charge_for(price, usage, Money(10**6, Bucket.CREDIT))
    assert charge.micros == -(
        -(10 * 2_500_000 + 3 * 1_250_000 + 2 * 3_125_000 + 20 * 10**7) // 10**6
    )
    assert not capped


def test_responses_usage_names_cached_and_reasoning_tokens() -> None:
    answer, _ = served(OPENAI_RESPONSES, chat())
    assert answer["usage"]["prompt_tokens"] == 15
    assert answer["usage"]["completion_tokens"] == 20
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4
    usage = usage_from_response(answer)
    assert usage is not None and usage.reasoning_tokens == 4


def test_the_anthropic_request_carries_system_tools_choice_stop_and_tool_turns() -> None:
    body = chat(
        tools=[{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        parallel_tool_calls=False,
        stop="END",
        temperature=0.5,
        user="u-1",
    )
    body["messages"] += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    sent = protocol_for(ANTHROPIC_MESSAGES).request(body)
    assert sent["system"] == "Answer briefly" and sent["max_tokens"] == 100
    assert sent["stop_sequences"] == ["END"] and sent["temperature"] == 0.5
    assert sent["metadata"] == {"user_id": "u-1"}
    assert sent["tools"] == [{"name": "weather", "input_schema": WEATHER}]
    assert sent["tool_choice"] == {
        "type": "tool",
        "name": "weather",
        "disable_parallel_tool_use": True,
    }
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}
        ],
    }
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}],
    }


@pytest.mark.parametrize("protocol", [ANTHROPIC_MESSAGES, OPENAI_RESPONSES])
def test_a_tool_call_comes_back_as_a_chat_tool_call_whole_and_streamed(protocol: str) -> None:
    body = chat(
        tools=[{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}]
    )
    body["messages"][-1]["content"] = "Please call a tool"
    answer, lines = served(protocol, body)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "mock"}
    chunks = chunks_of(lines)
    deltas = [
        d
        for c in chunks
        if c.get("choices")
        for d in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert deltas[0]["id"] == call["id"] and deltas[0]["function"]["name"] == "weather"
    arguments = "".join(d["function"]["arguments"] for d in deltas)
    assert orjson.loads(arguments) == {"city": "mock"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("protocol", [ANTHROPIC_MESSAGES, OPENAI_RESPONSES])
def test_a_json_schema_answer_is_the_message_text_on_every_protocol(protocol: str) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "Weather", "schema": WEATHER}}
    answer, lines = served(protocol, chat(response_format=schema))
    assert answer["choices"][0]["finish_reason"] == "stop"
    text = answer["choices"][0]["message"]["content"]
    assert orjson.loads(text) == {"city": "mock"}
    assert orjson.loads(streamed_text(chunks_of(lines))) == {"city": "mock"}


@pytest.mark.parametrize(
    ("protocol", "more", "param"),
    [
        (ANTHROPIC_MESSAGES, {"n": 2}, "n"),
        (ANTHROPIC_MESSAGES, {"logprobs": True}, "logprobs"),
        (ANTHROPIC_MESSAGES, {"temperature": 1.5}, "temperature"),
        (ANTHROPIC_MESSAGES, {"seed": 7}, "seed"),
        (ANTHROPIC_MESSAGES, {"reasoning_effort": "high"}, "reasoning_effort"),
        (OPENAI_RESPONSES, {"stop": ["END"]}, "stop"),
        (OPENAI_RESPONSES, {"max_tokens": 8}, "max_tokens"),
        (OPENAI_RESPONSES, {"presence_penalty": 0.5}, "presence_penalty"),
        (
            OPENAI_RESPONSES,
            {"tools": [{"type": "custom", "custom": {"name": "x"}}]},
            "tools[0]",
        ),
    ],
)
def test_what_a_protocol_cannot_carry_is_refused_naming_it(
    protocol: str, more: dict[str, Any], param: str
) -> None:
    error = refusal(chat(**more), {OPENAI_CHAT, protocol})
    assert isinstance(error, DomainError)
    assert error.metadata == {"param": param, "channel_protocol": protocol}
    assert f"`{param}`" in error.message and protocol in error.message


def test_defaults_and_neutral_parameters_are_carried_by_leaving_them_out() -> None:
    body = chat(n=1, presence_penalty=0, logprobs=False, stream_options={"include_usage": True})
    assert refusal(body, {OPENAI_CHAT, ANTHROPIC_MESSAGES, OPENAI_RESPONSES}) is None


@pytest.mark.parametrize("protocol", [ANTHROPIC_MESSAGES, OPENAI_RESPONSES])
def test_an_error_in_the_channels_stream_breaks_the_chat_stream(protocol: str) -> None:
    reader = protocol_for(protocol).reader()
    kind = "error" if protocol == ANTHROPIC_MESSAGES else "response.failed"
    with pytest.raises(ValueError, match="stream failed"):
        reader.line(
            "data: " + orjson.dumps({"type": kind, "error": {"type": "overloaded"}}).decode()
        )


def test_an_answer_of_another_shape_is_not_taken_for_an_answer() -> None:
    assert protocol_for(ANTHROPIC_MESSAGES).answer({"object": "chat.completion"}) is None
    assert protocol_for(OPENAI_RESPONSES).answer({"type": "message", "content": []}) is None
