"""The mock upstream's Anthropic Messages and OpenAI Responses endpoints over HTTP (the
ASGI app in process): native answers with their own usage, the key as x-api-key, and
Anthropic-shaped errors on /v1/messages."""

from __future__ import annotations

import httpx

from apps.mock_upstream.app import create_app

MESSAGE = {
    "model": "m",
    "max_tokens": 50,
    "system": "Answer briefly",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
}


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app()), base_url="http://mock"
    )


async def test_messages_answer_natively_with_cache_counts_and_the_key_as_x_api_key() -> None:
    async with client() as http:
        path = "/knobs/require-key=sk-1,cached-tokens=2,cache-write-tokens=1/v1/messages"
        refused = await http.post(path, json=MESSAGE)
        answer = await http.post(path, json=MESSAGE, headers={"x-api-key": "sk-1"})
    assert refused.status_code == 401
    assert refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "authentication_error"
    message = answer.json()
    assert message["type"] == "message" and message["stop_reason"] == "end_turn"
    assert message["content"][0]["text"].startswith("This is the mock answer to: Say hello")
    # 2 + 4 (system) + 2 + 4 (user) prompt tokens: 9 fresh, 2 read, 1 written.
    assert message["usage"] == {
        "input_tokens": 9,
        "cache_creation_input_tokens": 1,
        "cache_read_input_tokens": 2,
        "output_tokens": 16,
    }


async def test_messages_errors_come_in_anthropics_shape() -> None:
    async with client() as http:
        no_cap = await http.post("/v1/messages", json={**MESSAGE, "max_tokens": None})
        down = await http.post("/knobs/status=529/v1/messages", json=MESSAGE)
        busy = await http.post("/knobs/status=503/v1/messages", json=MESSAGE)
    assert no_cap.status_code == 400
    assert no_cap.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    assert down.status_code == 529 and down.json()["error"]["type"] == "api_error"
    assert busy.json()["error"]["type"] == "overloaded_error"


async def test_responses_answer_natively_with_a_schema_and_reasoning_counts() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = {
        "model": "m",
        "instructions": "Count",
        "input": [{"type": "message", "role": "user", "content": "one two"}],
        "max_output_tokens": 40,
        "text": {"format": {"type": "json_schema", "name": "N", "schema": schema}},
    }
    async with client() as http:
        answer = (await http.post("/knobs/reasoning-tokens=5/v1/responses", json=body)).json()
    assert answer["object"] == "response" and answer["status"] == "completed"
    [item] = answer["output"]
    assert item["content"][0]["text"] == '{"n": 1}'
    assert answer["usage"]["output_tokens_details"] == {"reasoning_tokens": 5}
    assert answer["usage"]["output_tokens"] == 2 + 5
