"""Bad input gets a 4xx naming the param, never a 500, and no answer carries internals
(DESIGN S2; issue 17, item 5), on the whole system through its HTTP front: each case
that once answered 500 (or 502, or 200 without a stream), now refused with nothing
charged, held or recorded; and a failure of ours answers the request id alone."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.e2e.harness import System
from tokenforge.runtime.grpc_server import create_server

# What no answer may carry: SQL, a driver, a schema-qualified name, a traceback, a digest.
INTERNALS = re.compile(
    r"SELECT |INSERT |UPDATE |sqlalchemy|psycopg|asyncpg|\[SQL|Traceback|"
    r"\b(wallet|routing|usage|payments|gateway)\.[a-z_]+|\b[0-9a-f]{64}\b"
)
DEEP = 300


def assert_no_internals(answer: httpx.Response) -> None:
    assert answer.headers.get("x-request-id", "").startswith("req_"), answer.headers
    found = INTERNALS.search(answer.text)
    assert found is None, f"{found.group(0)!r} in {answer.text[:2000]}"


@pytest.fixture
async def user(system: System) -> AsyncIterator[httpx.AsyncClient]:
    _, key = await system.new_account(credit=5_000_000, routed=5_000_000)
    async with system.http(key) as http:
        yield http


async def money_story(http: httpx.AsyncClient) -> tuple[Any, ...]:
    """Balances (posted, held) of both buckets, the receipts, the top-ups, the keys."""
    wallet = (await http.get("/v1/wallet")).json()["balances"]
    receipts = (await http.get("/v1/usage")).json()["data"]
    topups = (await http.get("/v1/topups")).json()["data"]
    keys = (await http.get("/v1/keys")).json()["data"]
    return (
        sorted((b["bucket"], b["posted"]["micros"], b["held"]["micros"]) for b in wallet),
        len(receipts),
        len(topups),
        len(keys),
    )


def deep_chat(depth: int) -> bytes:
    nested = b"[" * depth + b"1" + b"]" * depth
    return b'{"model": "demo-chat", "messages": ' + nested + b"}"


SEEN: list[tuple[str, str, dict[str, Any], str]] = [
    # (method, path, request kwargs, the param the refusal names)
    ("POST", "/v1/topups", {"json": {"bucket": "credit", "amount": "9" * 23}}, "amount"),
    ("POST", "/v1/chat/completions", {"content": deep_chat(DEEP)}, "messages"),
    ("POST", "/v1/chat/completions", {"content": deep_chat(500)}, "messages"),
    ("POST", "/v1/keys", {"json": {"name": "a\x00b"}}, "name"),
    ("POST", "/v1/keys", {"json": {"allowed_models": ["demo\x00"]}}, "allowed_models[0]"),
    ("GET", "/v1/usage/%00", {}, "receipt_request_id"),
    ("GET", "/v1/runs/%00", {}, "run_id"),
    ("GET", "/v1/wallet/ledger?request_id=%00", {}, "request_id"),
    ("GET", "/v1/usage?model=%00", {}, "model"),
    ("GET", "/v1/usage/" + "r" * 10_000, {}, "receipt_request_id"),
    ("POST", "/v1/runs", {"json": {"model": "demo-chat", "budget": "9" * 40}}, "budget"),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "demo-chat", "messages": [1, 2]}},
        "messages[0]",
    ),
    ("POST", "/v1/embeddings", {"json": {"model": "demo-embed", "input": 5}}, "input"),
    (
        "POST",
        "/v1/chat/completions",
        {
            "json": {
                "model": "demo-chat",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": "yes",
            }
        },
        "stream",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {
            "json": {
                "model": "demo-chat",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2**64 - 1,
            }
        },
        "max_tokens",
    ),
    (
        "POST",
        "/v1/routes/preview",
        {"json": {"model": "demo-chat", "messages": [{"role": "user"}], "n": 10**6}},
        "n",
    ),
    ("GET", "/v1/usage?from=0001-01-01T00:00:00%2B14:00", {}, "from"),
    ("GET", "/v1/topups/%ff", {}, "order_id"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "param"), SEEN, ids=[f"{m} {p[:40]}" for m, p, _, _ in SEEN]
)
async def test_each_seen_case_is_refused_naming_the_param_and_changes_nothing(
    user: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], param: str
) -> None:
    before = await money_story(user)
    answer = await user.request(method, path, **kwargs)
    assert 400 <= answer.status_code < 500, answer.text[:2000]
    assert answer.json()["error"]["param"] == param, answer.text[:2000]
    assert_no_internals(answer)
    assert await money_story(user) == before


async def test_a_transfer_reference_with_a_nul_is_refused_and_the_order_stays_pending(
    user: httpx.AsyncClient,
) -> None:
    order = await user.post(
        "/v1/topups", json={"bucket": "credit", "provider": "manual_transfer", "amount": "5.00"}
    )
    assert order.status_code == 201, order.text
    order_id = order.json()["order_id"]
    answer = await user.post(
        f"/v1/topups/{order_id}/proof", json={"transfer_reference": "TR-1\x00; DROP"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "transfer_reference"
    assert_no_internals(answer)
    assert (await user.get(f"/v1/topups/{order_id}")).json()["status"] == "pending"


async def test_a_streamed_request_still_streams_and_an_honest_body_still_runs(
    user: httpx.AsyncClient,
) -> None:
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]}
    answer = await user.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    async with user.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        assert b"[DONE]" in b"".join([chunk async for chunk in s.aiter_bytes()])


async def test_a_failure_of_ours_answers_internal_error_with_the_request_id_alone(
    system: System, database_url: str
) -> None:
    """A usage service that does not offer the call (an older version) makes GET
    /v1/usage/{id} fail in a way no refusal covers: 500, the request id alone."""
    _, key = await system.new_account()
    older_usage = create_server([], port=0)  # health and reflection only
    await older_usage.server.start()
    gateway = await system.another_gateway(database_url, usage_addr=f"127.0.0.1:{older_usage.port}")
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway.http_port}",
            headers={"authorization": f"Bearer {key}"},
        ) as http:
            answer = await http.get("/v1/usage/req_0123456789abcdef01234567")
        assert answer.status_code == 500
        request_id = answer.headers["x-request-id"]
        error = answer.json()["error"]
        assert error["code"] == "internal_error"
        assert error["details"] == {"request_id": request_id}
        assert request_id in error["message"]
        assert "usage" not in error["message"] and "UNIMPLEMENTED" not in answer.text
        assert_no_internals(answer)
    finally:
        await gateway.stop(grace=0.5)
        await older_usage.stop(grace=0.1)
