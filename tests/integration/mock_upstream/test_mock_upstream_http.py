"""The mock upstream over real HTTP, read with httpx and with the official openai SDK."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from apps.mock_upstream import replies, tokens
from apps.mock_upstream.server import MockUpstream, start

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the world"}]
HELLO_PROMPT_TOKENS = 5 + tokens.MESSAGE_OVERHEAD_TOKENS
WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
async def mock() -> AsyncIterator[MockUpstream]:
    running = await start()
    yield running
    await running.stop()


@pytest.fixture
async def http(mock: MockUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock.url, timeout=10) as client:
        yield client


@pytest.fixture
def sdk(mock: MockUpstream) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0)


def channel(mock: MockUpstream, knobs: str) -> openai.AsyncOpenAI:
    """An SDK client whose base URL carries knobs, as a catalog channel's would."""
    return openai.AsyncOpenAI(base_url=f"{mock.url}/knobs/{knobs}/v1", api_key="x", max_retries=0)


async def sse_events(response: httpx.Response) -> list[bytes]:
    events = []
    async for line in response.aiter_lines():
        if line:
            assert line.startswith("data: ")
            events.append(line.removeprefix("data: ").encode())
    return events


async def test_chat_completion_has_the_openai_shape_and_deterministic_usage(
    http: httpx.AsyncClient, sdk: openai.AsyncOpenAI
) -> None:
    raw = await http.post("/v1/chat/completions", json={"model": "demo-up", "messages": HELLO})
    parsed = await sdk.chat.completions.create(model="demo-up", messages=HELLO)

    body = raw.json()
    assert raw.status_code == 200
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion" and body["model"] == "demo-up"
    assert isinstance(body["created"], int)
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": HELLO_PROMPT_TOKENS,
        "completion_tokens": 16,
        "total_tokens": HELLO_PROMPT_TOKENS + 16,
    }
    assert parsed.choices[0].message.content == (
        "This is the mock answer to: Say hello to the world lorem lorem lorem lorem lorem"
    )
    assert parsed.usage is not None and parsed.usage.completion_tokens == 16


async def test_stream_with_include_usage_ends_with_the_usage_chunk_then_done(
    http: httpx.AsyncClient,
) -> None:
    request = {
        "model": "mock-chat",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(response)

    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(content) == 16
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": HELLO_PROMPT_TOKENS,
        "completion_tokens": 16,
        "total_tokens": HELLO_PROMPT_TOKENS + 16,
    }


async def test_sdk_stream_deltas_join_to_the_non_streaming_content(sdk: openai.AsyncOpenAI) -> None:
    whole = await sdk.chat.completions.create(model="m", messages=HELLO)
    stream = await sdk.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage

    assert text == whole.choices[0].message.content
    assert finish == "stop"
    assert usage == whole.usage


async def test_stream_without_include_usage_sends_no_usage_chunk(http: httpx.AsyncClient) -> None:
    request = {"model": "m", "messages": HELLO, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=request) as response:
        events = await sse_events(response)

    chunks = [orjson.loads(e) for e in events[:-1]]
    assert events[-1] == b"[DONE]"
    assert all(c["choices"] and "usage" not in c for c in chunks)


async def test_max_tokens_caps_the_reply_with_finish_reason_length(
    sdk: openai.AsyncOpenAI,
) -> None:
    capped = await sdk.chat.completions.create(model="m", messages=HELLO, max_tokens=4)
    newer = await sdk.chat.completions.create(
        model="m",
        messages=HELLO,
        max_completion_tokens=3,
    )
    roomy = await sdk.chat.completions.create(model="m", messages=HELLO, max_tokens=16)

    assert capped.choices[0].message.content == "This is the mock"
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 4
    assert newer.usage is not None and newer.usage.completion_tokens == 3
    assert newer.choices[0].finish_reason == "length"
    assert roomy.choices[0].finish_reason == "stop"


async def test_streamed_max_tokens_stops_with_length_after_that_many_chunks(
    sdk: openai.AsyncOpenAI,
) -> None:
    stream = await sdk.chat.completions.create(
        model="m",
        messages=HELLO,
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    contents = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert contents == ["This", " is"]
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


async def test_status_knob_by_header_answers_that_status_with_an_openai_error(
    sdk: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk.chat.completions.create(
            model="m",
            messages=HELLO,
            extra_headers={"x-mock-status": "429"},
        )

    assert limited.value.status_code == 429
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.type == "rate_limit_error"


async def test_status_knob_by_path_prefix_fails_every_request_of_that_channel(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    failing = channel(mock, "status=503,latency-ms=1")

    with pytest.raises(openai.InternalServerError) as unavailable:
        await failing.chat.completions.create(model="m", messages=HELLO)
    embed = await http.post(
        "/knobs/status=500/v1/embeddings", json={"model": "e", "input": "hello"}
    )

    assert unavailable.value.status_code == 503
    assert unavailable.value.type == "server_error"
    assert embed.status_code == 500 and embed.json()["error"]["message"]


async def test_cut_after_drops_the_stream_after_that_many_content_chunks(
    http: httpx.AsyncClient,
) -> None:
    request = {
        "model": "m",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream(
            "POST", "/v1/chat/completions", json=request, headers={"x-mock-cut-after": "3"}
        ) as response:
            async for line in response.aiter_lines():
                if line:
                    received.append(line.removeprefix("data: ").encode())

    chunks = [orjson.loads(e) for e in received]
    assert len(chunks) == 1 + 3
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:]] == ["This", " is", " the"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert b"[DONE]" not in received


async def test_sdk_raises_a_connection_error_when_a_stream_is_cut(mock: MockUpstream) -> None:
    cutting = channel(mock, "cut-after=2,chunk-gap-ms=1")
    stream = await cutting.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
    )
    texts: list[str] = []

    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")

    assert "".join(texts) == "This is"


async def test_cut_after_without_stream_drops_the_connection_before_the_body(
    sdk: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.APIConnectionError):
        await sdk.chat.completions.create(
            model="m",
            messages=HELLO,
            extra_headers={"x-mock-cut-after": "0"},
        )


async def test_fail_first_answers_503_n_times_per_prefix_then_succeeds(
    mock: MockUpstream,
) -> None:
    # a prefix of its own keeps this counter apart from the other tests' requests
    prefix = f"fail-first=2,reply-tokens={4 + uuid.uuid4().int % 1000}"
    flaky = channel(mock, prefix)
    other = channel(mock, prefix.replace("fail-first=2", "fail-first=1"))
    outcomes: list[int] = []

    for _ in range(3):
        try:
            await flaky.chat.completions.create(model="m", messages=HELLO)
            outcomes.append(200)
        except openai.APIStatusError as exc:
            outcomes.append(exc.status_code)
    with pytest.raises(openai.InternalServerError):
        await other.chat.completions.create(model="m", messages=HELLO)

    assert outcomes == [503, 503, 200]
    assert mock.state.fail_counts[prefix] == 3


async def test_embeddings_are_dimension_8_deterministic_and_agree_across_encodings(
    http: httpx.AsyncClient, sdk: openai.AsyncOpenAI
) -> None:
    floats = await http.post(
        "/v1/embeddings", json={"model": "mock-embed", "input": ["one two", "three"]}
    )
    encoded = await http.post(
        "/v1/embeddings",
        json={"model": "mock-embed", "input": "one two", "encoding_format": "base64"},
    )
    via_sdk = await sdk.embeddings.create(model="mock-embed", input="one two")

    body = floats.json()
    assert body["object"] == "list" and body["model"] == "mock-embed"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in body["data"])
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vector = body["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded.json()["data"][0]["embedding"]))
    assert list(decoded) == vector == replies.embedding_vector("one two")
    assert via_sdk.data[0].embedding == vector


async def test_n_returns_that_many_choices_and_counts_completion_tokens_for_each(
    sdk: openai.AsyncOpenAI,
) -> None:
    answer = await sdk.chat.completions.create(model="m", messages=HELLO, n=3)
    stream = await sdk.chat.completions.create(
        model="m",
        messages=HELLO,
        n=2,
        stream=True,
    )
    streamed: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")

    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.usage is not None and answer.usage.completion_tokens == 3 * 16
    assert streamed[0] == streamed[1] == answer.choices[0].message.content


async def test_tools_and_a_request_to_call_one_answer_with_a_tool_call(
    sdk: openai.AsyncOpenAI,
) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Please call a tool for Paris"}
    ]
    answer = await sdk.chat.completions.create(
        model="m",
        messages=messages,
        tools=[WEATHER_TOOL],
    )
    stream = await sdk.chat.completions.create(
        model="m",
        messages=messages,
        tools=[WEATHER_TOOL],
        stream=True,
    )
    names, arguments, finish = "", "", None
    async for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            if delta_call.function is not None:
                names += delta_call.function.name or ""
                arguments += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish

    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "mock"}
    assert (names, arguments, finish) == ("get_weather", call.function.arguments, "tool_calls")


async def test_tools_without_a_request_to_call_one_answer_with_text(
    sdk: openai.AsyncOpenAI,
) -> None:
    answer = await sdk.chat.completions.create(
        model="m",
        messages=HELLO,
        tools=[WEATHER_TOOL],
    )

    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None


async def test_models_lists_the_mock_models(sdk: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in sdk.models.list()]
    one = await sdk.models.retrieve("anything-at-all")

    assert "mock-chat" in models and "mock-embed" in models
    assert one.id == "anything-at-all"


async def test_recorded_requests_show_what_was_sent_upstream(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    marker = uuid.uuid4().hex
    await http.post(
        "/knobs/reply-tokens=2/v1/chat/completions",
        json={"model": marker, "messages": HELLO, "max_tokens": 7},
        headers={"x-trace-marker": marker},
    )

    recorded = (await http.get("/mock/requests", params={"limit": 1})).json()["data"]

    assert len(recorded) == 1
    assert recorded[0]["body"]["max_tokens"] == 7 and recorded[0]["body"]["model"] == marker
    assert recorded[0]["headers"]["x-trace-marker"] == marker
    assert recorded[0]["knobs"] == "reply-tokens=2"
    assert recorded[0]["path"] == "/knobs/reply-tokens=2/v1/chat/completions"


async def test_require_key_refuses_a_request_without_authorization(
    http: httpx.AsyncClient,
) -> None:
    request = {"model": "m", "messages": HELLO}
    missing = await http.post("/knobs/require-key=1/v1/chat/completions", json=request)
    wrong = await http.post(
        "/knobs/require-key=sk-channel/v1/chat/completions",
        json=request,
        headers={"authorization": "Bearer sk-other"},
    )
    right = await http.post(
        "/knobs/require-key=sk-channel/v1/chat/completions",
        json=request,
        headers={"authorization": "Bearer sk-channel"},
    )
    unchecked = await http.post("/v1/chat/completions", json=request)

    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert wrong.status_code == 401
    assert right.status_code == 200 and unchecked.status_code == 200


async def test_reply_tokens_header_makes_a_64_chunk_stream(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        extra_headers={"x-mock-reply-tokens": "64"},
    )
    contents = [c async for c in stream if c.choices and c.choices[0].delta.content]

    assert len(contents) == 64


async def test_latency_ttfb_and_chunk_gap_delay_the_answer(http: httpx.AsyncClient) -> None:
    request = {"model": "m", "messages": HELLO, "stream": True}
    knobs = {"x-mock-latency-ms": "60", "x-mock-ttfb-ms": "40", "x-mock-chunk-gap-ms": "5"}
    began = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json=request, headers=knobs) as r:
        headers_at = time.perf_counter() - began
        lines = [line async for line in r.aiter_lines() if line]
    finished_at = time.perf_counter() - began

    assert headers_at >= 0.06
    # 40 ms to the first chunk, then 5 ms between each of the 19 frames (role, 16 words,
    # finish, [DONE])
    assert finished_at >= 0.06 + 0.04 + 18 * 0.005
    assert lines[-1] == "data: [DONE]"


async def test_no_usage_knob_leaves_usage_out(mock: MockUpstream, sdk: openai.AsyncOpenAI) -> None:
    answer = await channel(mock, "no-usage").chat.completions.create(model="m", messages=HELLO)
    stream = await sdk.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-no-usage": "1"},
    )
    chunks = [chunk async for chunk in stream]

    assert answer.usage is None
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_bad_knobs_bad_json_and_bad_bodies_answer_400(http: httpx.AsyncClient) -> None:
    typo = await http.post("/knobs/statuss=503/v1/chat/completions", json={})
    not_json = await http.post("/v1/chat/completions", content=b"{nope")
    no_messages = await http.post("/v1/chat/completions", json={"model": "m"})
    unknown_path = await http.get("/v2/anything")

    assert typo.status_code == 400 and typo.json()["error"]["code"] == "invalid_mock_knob"
    assert not_json.status_code == 400
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    assert unknown_path.status_code == 404 and "error" in unknown_path.json()


async def test_a_client_leaving_mid_stream_does_not_break_the_server(
    http: httpx.AsyncClient,
) -> None:
    request = {"model": "m", "messages": HELLO, "stream": True}
    slow = {"x-mock-chunk-gap-ms": "20", "x-mock-reply-tokens": "50"}
    async with http.stream("POST", "/v1/chat/completions", json=request, headers=slow) as r:
        async for _ in r.aiter_lines():
            break

    after = await http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO})

    assert after.status_code == 200


async def test_a_busy_port_raises_instead_of_exiting(mock: MockUpstream) -> None:
    with pytest.raises(OSError):
        await start(port=mock.port)


async def test_stop_frees_the_port() -> None:
    second = await start()
    port = second.port
    await second.stop()

    third = await start(port=port)
    await third.stop()

    assert third.port == port
