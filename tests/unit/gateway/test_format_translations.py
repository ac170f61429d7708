"""The client formats' translations (services/gateway/domain/formats/), without network:
each format's body as a chat request, the chat answer and the chat stream back in the
format, and refusals of what a chat channel cannot carry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from services.gateway.domain.formats import Json, StreamTranslator
from services.gateway.domain.formats.anthropic import AnthropicFormat
from services.gateway.domain.formats.completions import CompletionsFormat
from services.gateway.domain.formats.responses import ResponsesFormat
from services.gateway.domain.formats.stream import frames_of, translate
from tokenforge.errors import (
    ANTHROPIC_ERROR_TYPE,
    HTTP_ERROR,
    DomainError,
    Reason,
    anthropic_error_body,
)

REQUEST_ID = "req_0123456789abcdef01234567"
COST = {"cost": 0.00017, "cost_micros": 170, "cost_currency": "CR", "cost_bucket": "credit"}
RECEIPT = {"request_id": REQUEST_ID, "charge": {"micros": 170}, "tokens": {"prompt": 9}}


def refused(make: Any) -> DomainError:
    with pytest.raises(DomainError) as caught:
        make()
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    return caught.value


def chat_answer(message: Json, finish_reason: str = "stop", **usage: Any) -> Json:
    """A finished chat answer as flow/complete.py returns it."""
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "demo-chat",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13, **usage, **COST},
        "receipt": RECEIPT,
    }


def sse(piece: Json | str) -> bytes:
    return b"data: " + (piece.encode() if isinstance(piece, str) else orjson.dumps(piece)) + b"\n\n"


def delta(content: Json, finish_reason: str | None = None) -> bytes:
    chunk = {
        "object": "chat.completion.chunk",
        "model": "demo-chat",
        "choices": [{"index": 0, "delta": content, "finish_reason": finish_reason}],
    }
    return sse(chunk)


FINAL = sse(
    {
        "object": "chat.completion.chunk",
        "model": "demo-chat",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, **COST},
        "receipt": RECEIPT,
    }
)
TEXT_STREAM = [
    delta({"role": "assistant", "content": ""}),
    delta({"content": "Hello"}),
    delta({"content": " world"}),
    delta({}, "stop"),
    FINAL,
    sse("[DONE]"),
]
TOOL_STREAM = [
    delta({"role": "assistant", "content": ""}),
    delta(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}),
    delta({}, "tool_calls"),
    FINAL,
    sse("[DONE]"),
]
CUT_NOTICE = sse({"error": {"message": "The upstream stream ended early.", "code": "upstream_cut"}})


def run(translator: StreamTranslator, pieces: list[bytes]) -> list[tuple[str | None, Json | str]]:
    """(event name, data) of every frame the translator writes for the chat stream."""
    frames = list(translator.start())
    for piece in pieces:
        frames.extend(frames_of(translator, piece))
    out: list[tuple[str | None, Json | str]] = []
    for frame in frames:
        name = None
        for line in frame.decode().strip().split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
                out.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return out


# --- legacy completions ----------------------------------------------------------------


def test_a_completion_prompt_is_the_user_message_with_16_tokens_by_default() -> None:
    chat = CompletionsFormat(
        {"model": "m", "prompt": ["Once upon"], "n": 2, "stop": ["\n"]}, REQUEST_ID
    ).chat_body()
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "Once upon"}],
        "n": 2,
        "stop": ["\n"],
        "max_tokens": 16,
    }
    given = CompletionsFormat({"model": "m", "prompt": "x", "max_tokens": 99}, REQUEST_ID)
    assert given.chat_body()["max_tokens"] == 99


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "suffix": "end"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "logprobs": 2}, "logprobs"),
        ({}, "prompt"),
    ],
)
def test_what_a_chat_channel_cannot_answer_is_refused_naming_it(extra: Json, param: str) -> None:
    error = refused(CompletionsFormat({"model": "m", **extra}, REQUEST_ID).chat_body)
    assert (error.metadata or {})["param"] == param


def test_a_chat_answer_reads_as_a_text_completion_with_its_cost_and_receipt() -> None:
    answer = CompletionsFormat({"model": "m", "prompt": "x"}, REQUEST_ID).answer(
        chat_answer({"role": "assistant", "content": "Hi there"}, "length")
    )
    assert answer["id"] == "cmpl-0123456789abcdef01234567"
    assert answer["object"] == "text_completion"
    assert answer["choices"] == [
        {"text": "Hi there", "index": 0, "logprobs": None, "finish_reason": "length"}
    ]
    assert answer["usage"]["cost_micros"] == 170 and answer["usage"]["total_tokens"] == 13
    assert answer["receipt"] == RECEIPT


def test_a_completion_stream_is_text_completion_chunks_then_usage_then_done() -> None:
    fmt = CompletionsFormat({"model": "m", "prompt": "x", "stream": True}, REQUEST_ID)
    frames = run(fmt.translator(), TEXT_STREAM)
    texts = [d["choices"][0]["text"] for _, d in frames if isinstance(d, dict) and d["choices"]]
    assert texts == ["Hello", " world", ""]
    assert all(d["object"] == "text_completion" for _, d in frames if isinstance(d, dict))
    *_, (_, last), (_, done) = frames
    assert isinstance(last, dict) and last["usage"]["cost_micros"] == 170
    assert last["receipt"] == RECEIPT and done == "[DONE]"


# --- OpenAI Responses ------------------------------------------------------------------


def test_responses_input_items_become_chat_messages() -> None:
    body = {
        "model": "m",
        "instructions": "Be brief",
        "max_output_tokens": 50,
        "input": [
            {"role": "developer", "content": "Use metric units"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
        "reasoning": {"effort": "low"},
    }
    chat = ResponsesFormat(body, REQUEST_ID).chat_body()
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "system", "content": "Use metric units"},
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert chat["max_tokens"] == 50
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "object"}},
    }
    assert chat["reasoning_effort"] == "low"
    streamed = ResponsesFormat({"model": "m", "input": "x", "stream": True}, REQUEST_ID)
    assert streamed.chat_body()["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": [{"type": "web_search_call", "id": "ws"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
            "input[0]",
        ),
        ({"text": "json"}, "text"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"input": None}, "input"),
    ],
)
def test_responses_refuse_what_a_chat_channel_cannot_carry(extra: Json, param: str) -> None:
    body = {"model": "m", "input": "x", **extra}
    error = refused(ResponsesFormat(body, REQUEST_ID).chat_body)
    assert (error.metadata or {})["param"] == param
    if param == "previous_response_id":
        assert "send the conversation in `input`" in error.message


def test_a_chat_answer_reads_as_a_response_with_text_and_function_calls() -> None:
    message = {
        "role": "assistant",
        "content": "Let me look",
        "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": '{"a":1}'}}],
    }
    response = ResponsesFormat({"model": "m", "input": "x"}, REQUEST_ID).answer(
        chat_answer(message, "tool_calls", prompt_tokens_details={"cached_tokens": 3})
    )
    assert response["id"] == "resp_0123456789abcdef01234567"
    assert response["object"] == "response" and response["status"] == "completed"
    text, call = response["output"]
    assert text["type"] == "message" and text["content"][0]["text"] == "Let me look"
    assert call == {
        "type": "function_call",
        "id": "fc_0123456789abcdef01234567_0",
        "call_id": "call_1",
        "name": "f",
        "arguments": '{"a":1}',
        "status": "completed",
    }
    assert response["usage"] == {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 3},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 13,
        **COST,
    }
    assert response["receipt"] == RECEIPT and response["store"] is False
    cut = ResponsesFormat({"model": "m", "input": "x"}, REQUEST_ID).answer(
        chat_answer({"role": "assistant", "content": "Hi"}, "length")
    )
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_responses_stream_is_the_typed_event_sequence_ending_with_the_charge() -> None:
    fmt = ResponsesFormat({"model": "m", "input": "x", "stream": True}, REQUEST_ID)
    frames = run(fmt.translator(), TEXT_STREAM)
    names = [name for name, _ in frames]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    data = [d for _, d in frames if isinstance(d, dict)]
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    assert all(d["type"] == name for name, d in zip(names, data, strict=True))
    assert data[6]["text"] == "Hello world"
    completed = data[-1]["response"]
    assert completed["id"] == data[0]["response"]["id"] == "resp_0123456789abcdef01234567"
    assert completed["output"][0]["content"][0]["text"] == "Hello world"
    assert completed["usage"]["output_tokens"] == 2 and completed["usage"]["cost_micros"] == 170
    assert completed["receipt"] == RECEIPT


def test_a_responses_stream_of_a_tool_call_streams_its_arguments() -> None:
    fmt = ResponsesFormat({"model": "m", "input": "x", "stream": True}, REQUEST_ID)
    frames = run(fmt.translator(), TOOL_STREAM)
    names = [name for name, _ in frames]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = frames[-2][1]
    assert isinstance(done, dict)
    assert done["item"]["call_id"] == "call_1"
    assert done["item"]["arguments"] == '{"city": "Paris"}'


def test_a_broken_responses_stream_fails_but_still_names_the_charge() -> None:
    fmt = ResponsesFormat({"model": "m", "input": "x", "stream": True}, REQUEST_ID)
    pieces = [*TEXT_STREAM[:3], FINAL, CUT_NOTICE, sse("[DONE]")]
    frames = run(fmt.translator(), pieces)
    name, last = frames[-1]
    assert name == "response.failed" and isinstance(last, dict)
    assert last["response"]["status"] == "failed"
    assert last["response"]["output"][0]["status"] == "incomplete"
    assert last["response"]["usage"]["cost_micros"] == 170


# --- Anthropic Messages ----------------------------------------------------------------


def test_anthropic_messages_become_chat_messages_tool_results_first() -> None:
    body = {
        "model": "m",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief"}],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Checking"},
                    {"type": "tool_use", "id": "tu_1", "name": "w", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"},
                    {"type": "text", "text": "thanks"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                    },
                ],
            },
        ],
        "tools": [{"name": "w", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    chat = AnthropicFormat(body, REQUEST_ID).chat_body()
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Checking",
            "tool_calls": [
                {
                    "id": "tu_1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "tu_1", "content": "sunny"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "thanks"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        },
    ]
    assert chat["max_tokens"] == 100 and chat["stop"] == ["END"] and chat["user"] == "u1"
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "w", "parameters": {"type": "object"}, "description": "Weather"},
        }
    ]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False


def test_an_image_in_a_tool_result_goes_to_the_user_message_after_the_tool_message() -> None:
    png = {"type": "base64", "media_type": "image/png", "data": "AA=="}
    result = {
        "type": "tool_result",
        "tool_use_id": "tu_1",
        "is_error": True,
        "content": [{"type": "text", "text": "a screenshot"}, {"type": "image", "source": png}],
    }
    messages = [{"role": "user", "content": [result]}]
    body = {"model": "m", "max_tokens": 10, "messages": messages}
    assert AnthropicFormat(body, REQUEST_ID).chat_body()["messages"] == [
        {"role": "tool", "tool_call_id": "tu_1", "content": "Error: a screenshot"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}],
        },
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
            "messages[0].content[0]",
        ),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ],
)
def test_anthropic_bodies_a_chat_channel_cannot_carry_are_refused(extra: Json, param: str) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    if body["max_tokens"] is None:
        del body["max_tokens"]
    error = refused(AnthropicFormat(body, REQUEST_ID).chat_body)
    assert (error.metadata or {})["param"] == param


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_a_chat_answer_reads_as_an_anthropic_message(finish_reason: str, stop_reason: str) -> None:
    message = {
        "role": "assistant",
        "content": "Sure",
        "tool_calls": [{"id": "call_1", "function": {"name": "w", "arguments": '{"a": 1}'}}],
    }
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    answer = AnthropicFormat(body, REQUEST_ID).answer(
        chat_answer(message, finish_reason, prompt_tokens_details={"cached_tokens": 4})
    )
    assert answer["id"] == "msg_0123456789abcdef01234567" and answer["type"] == "message"
    assert answer["content"] == [
        {"type": "text", "text": "Sure"},
        {"type": "tool_use", "id": "call_1", "name": "w", "input": {"a": 1}},
    ]
    assert answer["stop_reason"] == stop_reason
    assert answer["usage"] == {
        "input_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
        "output_tokens": 4,
        **COST,
    }
    assert answer["receipt"] == RECEIPT


STREAM_BODY = {
    "model": "m",
    "max_tokens": 10,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def test_an_anthropic_stream_is_messages_events_with_the_charge_in_message_delta() -> None:
    frames = run(AnthropicFormat(STREAM_BODY, REQUEST_ID).translator(), TEXT_STREAM)
    names = [name for name, _ in frames]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [d for _, d in frames if isinstance(d, dict)]
    assert all(d["type"] == name for name, d in zip(names, data, strict=True))
    assert data[0]["message"]["id"] == "msg_0123456789abcdef01234567"
    assert [d["delta"]["text"] for d in data[3:5]] == ["Hello", " world"]
    message_delta = data[6]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    assert message_delta["usage"]["input_tokens"] == 9
    assert message_delta["usage"]["output_tokens"] == 2
    assert message_delta["usage"]["cost_micros"] == 170
    assert message_delta["receipt"] == RECEIPT


def test_an_anthropic_stream_of_a_tool_call_sends_input_json_deltas() -> None:
    frames = run(AnthropicFormat(STREAM_BODY, REQUEST_ID).translator(), TOOL_STREAM)
    data = [d for _, d in frames if isinstance(d, dict)]
    start = data[1]
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    [json_delta] = [d for d in data if d["type"] == "content_block_delta"]
    assert json_delta["delta"] == {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}
    assert data[-2]["delta"]["stop_reason"] == "tool_use"


def test_a_broken_anthropic_stream_names_the_charge_then_errors() -> None:
    pieces = [*TEXT_STREAM[:3], FINAL, CUT_NOTICE, sse("[DONE]")]
    frames = run(AnthropicFormat(STREAM_BODY, REQUEST_ID).translator(), pieces)
    names = [name for name, _ in frames]
    assert names[-3:] == ["content_block_stop", "message_delta", "error"]
    _, error = frames[-1]
    assert isinstance(error, dict) and error["error"]["type"] == "api_error"
    _, delta_data = frames[-2]
    assert isinstance(delta_data, dict) and delta_data["usage"]["cost_micros"] == 170


# --- the stream driver and the error table ---------------------------------------------


async def test_translate_closes_the_chat_stream_when_the_client_stops_reading() -> None:
    closed: list[bool] = []

    async def chat_stream() -> AsyncIterator[bytes]:
        try:
            for piece in TEXT_STREAM:
                yield piece
        finally:
            closed.append(True)

    fmt = AnthropicFormat(STREAM_BODY, REQUEST_ID)
    events = translate(chat_stream(), fmt.translator())
    first = await events.__anext__()
    assert first.startswith(b"event: message_start")
    await events.__anext__()
    await events.aclose()  # type: ignore[attr-defined]
    assert closed == [True]


def test_every_http_status_of_the_error_table_has_an_anthropic_type() -> None:
    statuses = {status for status, _, _ in HTTP_ERROR.values()}
    assert statuses <= set(ANTHROPIC_ERROR_TYPE)
    body = anthropic_error_body(
        DomainError(Reason.INSUFFICIENT_BALANCE, "Credit too low. Top up.", {"bucket": "credit"}),
        REQUEST_ID,
    )
    assert body == {
        "type": "error",
        "error": {
            "type": "billing_error",
            "message": "Credit too low. Top up.",
            "code": "insufficient_balance",
            "details": {"bucket": "credit"},
        },
        "request_id": REQUEST_ID,
    }
