"""What the gateway refuses before anything runs (services/gateway/domain/validation.py):
each refusal is INVALID_ARGUMENT naming the parameter; what honest clients send
passes untouched."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.gateway.domain.runs import parse_budget, parse_estimate
from services.gateway.domain.validation import (
    MAX_JSON_DEPTH,
    check_json,
    validate_chat,
    validate_embeddings,
    validate_request,
    validate_run,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.money import MAX_AMOUNT_MICROS, MoneyError, parse_amount

CHAT: dict[str, Any] = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}


def refused(check: Any, *args: Any) -> DomainError:
    with pytest.raises(DomainError) as caught:
        check(*args)
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    return caught.value


def param_of(check: Any, *args: Any) -> str:
    return (refused(check, *args).metadata or {})["param"]


def checked(body: Any) -> None:
    check_json(orjson.dumps(body), body)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_bodies_honest_clients_send_pass() -> None:
    full = {
        **CHAT,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 100,
        "n": 2,
        "temperature": 0.7,
        "top_p": 1,
        "seed": -(2**63),
        "stop": ["\n\n"],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "logit_bias": {"50256": -100},
        "user": "u-1",
        "some_future_parameter": {"passes": "through"},
    }
    validate_chat(full)
    checked(full)
    for inputs in ("text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        validate_embeddings({"model": "demo-embed", "input": inputs})
    validate_request({"model": "demo-embed", "input": "x"})
    validate_run({"model": "demo-chat", "budget": "2.5"})
    validate_run(
        {"bucket": "routed", "estimate": {"requests": 3, "prompt_tokens": 9, "max_tokens": 9}}
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": CHAT["messages"]}, "model"),
        ({**CHAT, "model": 5}, "model"),
        ({**CHAT, "model": "m" * 257}, "model"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": "hi"}, "messages"),
        ({**CHAT, "messages": [1, 2]}, "messages[0]"),
        ({**CHAT, "messages": [{"role": "user", "content": "a"}, "b"]}, "messages[1]"),
        ({**CHAT, "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({**CHAT, "messages": [{"role": 1, "content": "hi"}]}, "messages[0].role"),
        ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**CHAT, "messages": [{"role": "user", "content": [1]}]}, "messages[0].content"),
        ({**CHAT, "messages": [{"role": "user", "name": ["x"]}]}, "messages[0].name"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "stream": 1}, "stream"),
        ({**CHAT, "stream_options": "usage"}, "stream_options"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "max_tokens": 2**31}, "max_tokens"),
        ({**CHAT, "max_tokens": 1.5}, "max_tokens"),
        ({**CHAT, "max_tokens": True}, "max_tokens"),
        ({**CHAT, "max_completion_tokens": -1}, "max_completion_tokens"),
        ({**CHAT, "n": 17}, "n"),
        ({**CHAT, "n": "2"}, "n"),
        ({**CHAT, "temperature": 2.5}, "temperature"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "temperature": True}, "temperature"),
        ({**CHAT, "top_p": -0.1}, "top_p"),
        ({**CHAT, "presence_penalty": 3}, "presence_penalty"),
        ({**CHAT, "seed": 2**63}, "seed"),
        ({**CHAT, "top_logprobs": 21}, "top_logprobs"),
        ({**CHAT, "logprobs": "yes"}, "logprobs"),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**CHAT, "stop": 5}, "stop"),
        ({**CHAT, "tools": [1]}, "tools"),
        ({**CHAT, "tool_choice": 5}, "tool_choice"),
        ({**CHAT, "response_format": "json"}, "response_format"),
        ({**CHAT, "logit_bias": {"1": 101}}, "logit_bias"),
        ({**CHAT, "user": "u" * 257}, "user"),
    ],
)
def test_a_chat_body_out_of_type_or_bounds_is_refused_naming_the_param(
    body: dict[str, Any], param: str
) -> None:
    assert param_of(validate_chat, body) == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "demo-embed", "input": 5}, "input"),
        ({"model": "demo-embed", "input": ""}, "input"),
        ({"model": "demo-embed", "input": []}, "input"),
        ({"model": "demo-embed", "input": ["a", 1]}, "input"),
        ({"model": "demo-embed", "input": [1, "a"]}, "input"),
        ({"model": "demo-embed", "input": [-1]}, "input"),
        ({"model": "demo-embed", "input": [[1], []]}, "input"),
        ({"model": "demo-embed", "input": [{"text": "a"}]}, "input"),
        ({"model": "demo-embed", "input": ["a"] * 2049}, "input"),
        ({"model": "demo-embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "demo-embed", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_an_embeddings_body_out_of_type_is_refused_naming_the_param(
    body: dict[str, Any], param: str
) -> None:
    assert param_of(validate_embeddings, body) == param


def test_json_nested_deeper_than_the_limit_is_refused_before_anything_else() -> None:
    checked({"messages": nested(MAX_JSON_DEPTH - 2)})
    for depth in (MAX_JSON_DEPTH, 300, 500):
        raw = b'{"model": "m", "messages": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
        error = refused(check_json, raw, orjson.loads(raw))
        assert (error.metadata or {})["param"] == "messages"
        assert "deeper than 64" in error.message


def test_a_nul_anywhere_in_a_body_is_refused_naming_where() -> None:
    assert param_of(checked, {"name": "a\x00b"}) == "name"
    assert param_of(checked, {"allowed_models": ["ok", "a\x00"]}) == "allowed_models[1]"
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "\x00"}]}]}
    assert param_of(checked, body) == "messages[0].content[0].text"
    assert param_of(checked, {"metadata": {"k\x00": 1}}) == "metadata"


def test_an_integer_beyond_int64_is_refused_and_one_inside_passes() -> None:
    checked({"seed": 2**63 - 1, "other": -(2**63)})
    assert param_of(checked, {"max_tokens": 2**64 - 1}) == "max_tokens"
    assert param_of(checked, {"caps": [{"daily": 2**63}]}) == "caps[0].daily"


def test_amounts_are_bounded_exact_and_never_unicode_digits() -> None:
    assert parse_amount("1000000000") == MAX_AMOUNT_MICROS
    for text in ("1000000000.000001", "99999999999999999999999", "9" * 40, "²", "1.٣", "1e5"):
        with pytest.raises(MoneyError):
            parse_amount(text)


def test_run_budgets_and_estimates_are_bounded_before_anything_is_resolved() -> None:
    assert param_of(validate_run, {"model": "demo-chat", "budget": "9" * 40}) == "budget"
    assert param_of(validate_run, {"model": "demo-chat", "budget": 5}) == "budget"
    assert param_of(validate_run, {"bucket": "gold", "budget": "1"}) == "bucket"
    assert param_of(validate_run, {"model": ["x"], "budget": "1"}) == "model"
    huge = {"requests": 1, "prompt_tokens": 10**18, "max_tokens": 1}
    assert param_of(validate_run, {"model": "m", "estimate": huge}) == "estimate.prompt_tokens"
    assert parse_budget("2.5") == 2_500_000
    assert parse_estimate({"requests": 2, "prompt_tokens": 2**31 - 1, "max_tokens": 1})
