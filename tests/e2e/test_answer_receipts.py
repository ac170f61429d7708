"""Every answer leads to its receipt (issue 16): the deeply nested body that once
reached a 500 names its request and holds nothing, an idempotent replay names the
original request, and the answer's `receipt` object is the receipt GET /v1/usage/{id}
shows, in one shape (an unexpected failure: tests/e2e/test_every_exit_ends.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.harness import System
from tests.e2e.test_budgets import open_holds


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": "demo-chat",
        "messages": [{"role": "user", "content": "what did that cost?"}],
        "max_tokens": 20,
        **extra,
    }


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


async def nothing_held_within(system: System, account_id: str, seconds: float) -> list[str]:
    """The account's open holds once they are all ended, or after `seconds` (then the
    ones still open, described)."""
    deadline = time.monotonic() + seconds
    while True:
        holds = await open_holds(system, account_id)
        if not holds or time.monotonic() > deadline:
            return [f"{h.hold_id} of {h.request_id}: {h.amount_micros} micros" for h in holds]
        await asyncio.sleep(0.2)


def differences(answered: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    lines = [f"only in the answer: {k}={answered[k]!r}" for k in answered.keys() - recorded]
    lines += [f"only in GET /v1/usage: {k}={recorded[k]!r}" for k in recorded.keys() - answered]
    lines += [
        f"{k}: answer {answered[k]!r} != GET /v1/usage {recorded[k]!r}"
        for k in answered.keys() & recorded.keys()
        if answered[k] != recorded[k]
    ]
    return sorted(lines)


async def test_a_body_nested_500_deep_names_its_request_and_holds_nothing_after(
    system: System,
) -> None:
    """The issue's case: such a body reached a 500 that left its hold open until the
    hold's TTL and carried no x-request-id. Whatever it answers, the answer names its
    request in an OpenAI-shaped error and no money stays held."""
    account, key = await system.new_account()
    body = json.dumps(chat(metadata={"deep": nested(500)}))
    async with system.http(key) as http:
        answer = await http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert answer.status_code >= 400, answer.text
    assert set(answer.json()["error"]) >= {"message", "type", "code"}
    still = await nothing_held_within(system, account, 5)
    wrong = [f"HTTP {answer.status_code}, hold not ended: {h}" for h in still]
    if not answer.headers.get("x-request-id"):
        wrong.append(f"HTTP {answer.status_code} without x-request-id: {dict(answer.headers)}")
    assert wrong == [], "\n".join(wrong)


async def test_an_idempotent_replay_names_the_original_request_and_its_receipt(
    system: System,
) -> None:
    _, key = await system.new_account()
    headers = {"idempotency-key": "replay-" + uuid.uuid4().hex}
    async with system.http(key) as http:
        first = await http.post("/v1/chat/completions", json=chat(), headers=headers)
        again = await http.post("/v1/chat/completions", json=chat(), headers=headers)
        assert first.status_code == again.status_code == 200, again.text
        original = first.headers["x-request-id"]
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json() == first.json()
        assert again.headers["x-request-id"] == original, (
            f"the replay answers x-request-id {again.headers['x-request-id']}, "
            f"the original request is {original}"
        )
        found = await http.get(f"/v1/usage/{again.headers['x-request-id']}")
    assert found.status_code == 200, found.text
    assert found.json()["charge"]["micros"] == again.json()["usage"]["cost_micros"] > 0


async def final_chunk(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    async with http.stream("POST", "/v1/chat/completions", json=body) as s:
        text = (await s.aread()).decode()
    assert s.status_code == 200, text
    lines = [line for line in text.splitlines() if line.startswith("data: {")]
    chunk: dict[str, Any] = orjson.loads(lines[-1].removeprefix("data: "))
    return chunk


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_answers_receipt_is_the_receipt_get_usage_shows(
    system: System, stream: bool
) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        if stream:
            body = chat(stream=True, stream_options={"include_usage": True})
            answered = await final_chunk(http, body)
        else:
            answer = await http.post("/v1/chat/completions", json=chat())
            assert answer.status_code == 200, answer.text
            answered = answer.json()
        receipt = answered["receipt"]
        found = await http.get(f"/v1/usage/{receipt['request_id']}")
    assert found.status_code == 200, found.text
    recorded = found.json()
    differ = differences(receipt, recorded)
    assert differ == [], "the answer's receipt is not GET /v1/usage's:\n" + "\n".join(differ)
    assert answered["usage"]["cost_micros"] == recorded["charge"]["micros"] > 0
