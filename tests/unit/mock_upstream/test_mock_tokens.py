"""The mock upstream's deterministic rules, without a server: token counts, replies, knobs,
stream frames and embedding vectors."""

from __future__ import annotations

import json
import math

import pytest

from apps.mock_upstream import replies, tokens
from apps.mock_upstream.knobs import KnobError, Knobs, header_knobs, parse_path_knobs


def user(text: str) -> dict[str, object]:
    return {"role": "user", "content": text}


def test_prompt_tokens_are_words_plus_four_per_message() -> None:
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "Be brief."},
        user("Say hello to the world"),
    ]

    assert tokens.prompt_tokens(messages) == (2 + 4) + (5 + 4)


def test_prompt_tokens_read_text_parts_and_count_missing_content_as_zero_words() -> None:
    messages: list[dict[str, object]] = [
        {"role": "user", "content": [{"type": "text", "text": "two words"}, {"type": "image"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]

    assert tokens.prompt_tokens(messages) == (2 + 4) + (0 + 4)


def test_reply_echoes_first_words_of_last_user_message_padded_to_sixteen() -> None:
    messages = [user("ignored earlier message"), user("Say hello to the big wide world")]

    words = tokens.reply_words(messages)

    assert tokens.reply_text(words) == (
        "This is the mock answer to: Say hello to the big lorem lorem lorem lorem lorem"
    )
    assert len(words) == tokens.DEFAULT_REPLY_TOKENS


def test_reply_length_follows_reply_tokens_both_ways() -> None:
    messages = [user("hi")]

    assert tokens.reply_words(messages, 3) == ["This", "is", "the"]
    assert len(tokens.reply_words(messages, 64)) == 64


def test_cap_reply_cuts_only_when_the_reply_is_longer_than_max_tokens() -> None:
    words = tokens.reply_words([user("hi")])

    assert tokens.cap_reply(words, 4) == (words[:4], True)
    assert tokens.cap_reply(words, 16) == (words, False)
    assert tokens.cap_reply(words, None) == (words, False)


def test_path_knobs_and_header_knobs_merge_with_the_header_winning() -> None:
    path = parse_path_knobs("status=503,latency-ms=50,no-usage")
    headers = header_knobs({"X-Mock-Status": "429", "Authorization": "Bearer x"})

    knobs = Knobs.from_values({**path, **headers})

    assert knobs == Knobs(status=429, latency_ms=50, no_usage=True)


def test_unknown_or_unreadable_knobs_are_refused_with_the_known_names() -> None:
    with pytest.raises(KnobError, match="latency-ms"):
        Knobs.from_values({"latency": "5"})
    with pytest.raises(KnobError, match="whole number"):
        Knobs.from_values({"status": "soon"})
    with pytest.raises(KnobError, match="HTTP status"):
        Knobs.from_values({"status": "42"})


def test_require_key_accepts_any_key_for_true_and_only_that_key_otherwise() -> None:
    any_key = Knobs.from_values({"require-key": "1"})
    one_key = Knobs.from_values({"require-key": "sk-channel"})

    assert any_key.accepts_key("Bearer whatever") and not any_key.accepts_key(None)
    assert one_key.accepts_key("Bearer sk-channel") and not one_key.accepts_key("Bearer x")
    assert Knobs().accepts_key(None)
    # Anthropic clients send the key as x-api-key.
    assert one_key.accepts_key(None, "sk-channel") and not one_key.accepts_key(None, "x")


def test_a_json_schema_answer_fills_the_required_fields_and_a_forced_tool_is_called() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "kind": {"enum": ["sunny", "rainy"]},
            "at": {
                "type": "object",
                "properties": {"hour": {"type": "integer"}},
                "required": ["hour"],
            },
            "note": {"type": "string"},
        },
        "required": ["city", "kind", "at"],
    }
    body = {
        **_chat_body(),
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    }
    plan = replies.plan_chat(replies.ChatRequest.parse(body), reply_tokens=5)
    text = replies.completion_object(plan, "c", 0, True)["choices"][0]["message"]["content"]
    assert json.loads(text) == {"city": "mock", "kind": "sunny", "at": {"hour": 1}}

    forced = {
        **_chat_body(),
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "required",
    }
    plan = replies.plan_chat(replies.ChatRequest.parse(forced), reply_tokens=5)
    assert plan.tool_call is not None and plan.finish_reason == "tool_calls"


def test_cut_frames_keep_role_chunks_and_the_first_content_chunks_only() -> None:
    plan = replies.plan_chat(replies.ChatRequest.parse(_chat_body()), reply_tokens=5)

    frames = replies.stream_frames(plan, "chatcmpl-x", 0, include_usage=True)
    cut = replies.cut_frames(frames, 2)

    assert [f.kind for f in frames] == ["head"] + ["content"] * 5 + ["tail"] * 3
    assert [f.kind for f in cut] == ["head", "content", "content"]
    assert frames[-1].data == replies.DONE_FRAME


def test_tool_call_fills_required_arguments_and_counts_name_and_argument_words() -> None:
    body = _chat_body("Please call a tool now")
    body["tools"] = [_weather_tool()]

    plan = replies.plan_chat(replies.ChatRequest.parse(body), reply_tokens=16)

    assert plan.tool_call is not None
    assert plan.tool_call.name == "get_weather"
    assert plan.tool_call.arguments == '{"city": "mock", "days": 1}'
    assert plan.finish_reason == "tool_calls"
    assert plan.completion_tokens_per_choice == 1 + 4


def test_tool_choice_none_answers_with_text() -> None:
    body = _chat_body("call a tool")
    body["tools"] = [_weather_tool()]
    body["tool_choice"] = "none"

    plan = replies.plan_chat(replies.ChatRequest.parse(body), reply_tokens=16)

    assert plan.tool_call is None and plan.finish_reason == "stop"


def test_chat_request_without_model_or_with_zero_n_is_invalid() -> None:
    with pytest.raises(replies.InvalidRequest) as missing_model:
        replies.ChatRequest.parse({"messages": [user("hi")]})
    with pytest.raises(replies.InvalidRequest) as zero_n:
        replies.ChatRequest.parse({**_chat_body(), "n": 0})

    assert missing_model.value.param == "model"
    assert zero_n.value.param == "n"


def test_embedding_vector_is_deterministic_unit_length_and_input_dependent() -> None:
    first = replies.embedding_vector("hello")

    assert first == replies.embedding_vector("hello")
    assert first != replies.embedding_vector("hello!")
    assert len(first) == replies.EMBEDDING_DIMENSIONS
    assert math.isclose(math.sqrt(sum(v * v for v in first)), 1.0, rel_tol=1e-6)


def _chat_body(text: str = "hi") -> dict[str, object]:
    return {"model": "mock-chat", "messages": [user(text)]}


def _weather_tool() -> dict[str, object]:
    return {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }


def test_reasoning_tokens_count_within_the_output_cap() -> None:
    classes = replies.TokenClasses(cached=3, cache_write=0, reasoning=4)
    body = {**_chat_body(), "max_tokens": 10}
    plan = replies.plan_chat(replies.ChatRequest.parse(body), 16, classes)
    assert plan.completion_tokens_per_choice == 10 and plan.reasoning_tokens == 4
    assert len(plan.words) == 6 and plan.finish_reason == "length"
    usage = plan.usage()
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 4}
    assert usage["prompt_tokens_details"] == {"cached_tokens": 3}
