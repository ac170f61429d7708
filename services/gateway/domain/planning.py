"""Planning one request before it runs: the prompt estimate, the output cap and the
worst case the hold must cover; and the charge once it ran.

Plain Python, no I/O.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from tokenforge.errors import DomainError, Reason
from tokenforge.money import Money, Price

# Per-message framing tokens most chat tokenizers add (role, separators).
MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 16


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """An upper bound of the prompt's tokens: one per UTF-8 byte of the text.

    Byte-level BPE tokenizers never produce more tokens than bytes, so the hold
    built on this estimate covers whatever the upstream reports. It is pessimistic
    (about 4x for English); the charge is always the upstream's real count.
    """
    total = REQUEST_OVERHEAD_TOKENS
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += MESSAGE_OVERHEAD_TOKENS
            if isinstance(message, dict):
                total += _text_bytes(message.get("content"))
                for key in ("name", "tool_calls", "tool_call_id"):
                    if key in message:
                        total += len(orjson.dumps(message[key]))
    for key in ("tools", "functions", "response_format"):
        if key in body:
            total += len(orjson.dumps(body[key]))
    inputs = body.get("input")
    if inputs is not None:
        total += _text_bytes(inputs)
    return total


def _text_bytes(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        return sum(_text_bytes(part) for part in content)
    if isinstance(content, dict):
        return _text_bytes(content.get("text")) if "text" in content else len(orjson.dumps(content))
    return len(str(content).encode())


def requested_output_cap(body: dict[str, Any]) -> int | None:
    """The client's output cap (`max_completion_tokens` wins over `max_tokens`)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"`{key}` must be a positive integer.",
                {"param": key},
            )
        return value
    return None


@dataclass(frozen=True)
class Plan:
    """What the hold covers: the prompt estimate, the output cap, the worst case."""

    prompt_estimate: int
    max_output_tokens: int
    output_cap_set_by_gateway: bool
    worst_case: Money
    choices: int


def plan_chat(body: dict[str, Any], price: Price, model_max_output: int) -> Plan:
    """Worst case = prompt estimate + the output cap for every choice asked (`n`)."""
    prompt = estimate_prompt_tokens(body)
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > 16:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "`n` must be an integer from 1 to 16.", {"param": "n"}
        )
    cap = requested_output_cap(body)
    set_by_gateway = cap is None
    if cap is None:
        cap = model_max_output
    elif model_max_output and cap > model_max_output:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"`max_tokens` is {cap} but this model answers at most {model_max_output} tokens.",
            {"param": "max_tokens"},
        )
    worst = price.worst_case(prompt, cap * n)
    return Plan(prompt, cap, set_by_gateway, worst, n)


def shrink_to_budget(plan: Plan, price: Price, available: Money, least: int = 1) -> Plan | None:
    """The same plan with the largest output cap the available balance pays for.

    Only when the gateway chose the cap (the client gave none); None if not even
    `least` output tokens fit (the smallest cap the route's channels take: one, or
    16 for an OpenAI Responses channel).
    """
    if not plan.output_cap_set_by_gateway:
        return None
    per_choice = price.max_output_for(available, plan.prompt_estimate) // plan.choices
    cap = min(per_choice, plan.max_output_tokens)
    if cap < max(least, 1):
        return None
    worst = price.worst_case(plan.prompt_estimate, cap * plan.choices)
    return Plan(plan.prompt_estimate, cap, True, worst, plan.choices)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reported: bool
    # Prompt tokens written to the upstream's cache (part of prompt_tokens).
    cache_write_tokens: int = 0
    # Reasoning tokens (part of completion_tokens: charged as output, shown apart).
    reasoning_tokens: int = 0


def _detail(usage: dict[str, Any], details: str, key: str) -> int:
    part = usage.get(details)
    value = part.get(key, 0) if isinstance(part, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_response(payload: dict[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(
        prompt,
        completion or 0,
        _detail(usage, "prompt_tokens_details", "cached_tokens"),
        True,
        _detail(usage, "prompt_tokens_details", "cache_write_tokens"),
        _detail(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def charge_for(price: Price, usage: Usage, hold: Money) -> tuple[Money, bool]:
    """The charge, never above the hold (the second value says it was capped)."""
    charge = price.charge(
        usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens
    )
    if charge.micros > hold.micros:
        return Money(hold.micros, hold.bucket), True
    return charge, False


def plan_embeddings(body: dict[str, Any], price: Price) -> Plan:
    """Embeddings produce no output tokens: the worst case is the input estimate."""
    inputs = body.get("input")
    if inputs is None or inputs == "" or inputs == []:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "`input` is required: a string or a list of strings to embed.",
            {"param": "input"},
        )
    prompt = estimate_prompt_tokens({"input": inputs})
    return Plan(prompt, 0, False, price.worst_case(prompt, 0), 1)


def counted_usage(body: dict[str, Any], completion_chunks: int) -> Usage:
    """Token counts when the upstream reported none: the prompt at about four bytes
    per token (not the hold's one-per-byte bound) and one token per streamed content
    chunk. The receipt says they were counted, not reported."""
    prompt_bytes = estimate_prompt_tokens(body)
    return Usage(-(-prompt_bytes // 4), completion_chunks, 0, False)


def request_shape(body: dict[str, Any]) -> tuple[int, int]:
    """(prompt estimate, client's output cap or 0); a malformed cap is left to the
    planner to refuse with its own message."""
    try:
        cap = requested_output_cap(body) or 0
    except DomainError:
        cap = 0
    return estimate_prompt_tokens(body), cap
