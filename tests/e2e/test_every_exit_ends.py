"""Every charge an answer names lands, however the client behaves (G1): the issue's
scenario (a busy account, streams the client closes right after the `finish_reason`
chunk) and the other exits: a stream closed before its first chunk, a request cut
short client-side, a failure inside the gateway. Nothing stays held. (Replays and the
one receipt shape: tests/e2e/test_answer_receipts.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.gateway import metrics
from tests.e2e.harness import System
from tests.e2e.test_budgets import until_nothing_held
from tests.e2e.test_usage_reconcile import assert_reconciled, balances

BODY = {"model": "demo-chat@routed", "messages": [{"role": "user", "content": "count the money"}]}


def not_collected() -> float:
    return metrics.CHARGES_NOT_COLLECTED._value.get()  # type: ignore[attr-defined,no-any-return]


async def plain(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.post("/v1/chat/completions", json=BODY)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert answer.headers["x-request-id"] == body["receipt"]["request_id"]
    return {
        "request_id": answer.headers["x-request-id"],
        "charge": body["usage"]["cost_micros"],
        "entry": body["receipt"]["ledger_entry_id"],
    }


async def closed_after_finish_reason(http: httpx.AsyncClient) -> str:
    """Read until the chunk with `finish_reason`, then close the stream."""
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/v1/chat/completions", json=body) as s:
        assert s.status_code == 200
        async for line in s.aiter_lines():
            if line.startswith("data: {"):
                chunk = orjson.loads(line.removeprefix("data: "))
                if any(c.get("finish_reason") for c in chunk.get("choices") or []):
                    break
        return s.headers["x-request-id"]


async def closed_before_first_chunk(http: httpx.AsyncClient) -> str:
    body = {**BODY, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as s:
        return s.headers["x-request-id"]


async def settled_story(
    system: System, account: str, key: str, named: list[dict[str, Any]], others: list[str]
) -> None:
    """Every named charge has its receipt and its ledger row; every other request has a
    receipt that agrees with the ledger; balances are credits minus receipts."""
    await until_nothing_held(system, account)
    async with system.http(key) as http:
        ledger = (await http.get("/v1/wallet/ledger", params={"limit": 500})).json()["data"]
        rows = {e["request_id"]: e for e in ledger if e.get("kind") == "request_charge"}
        for answer in named:
            receipt = (await http.get(f"/v1/usage/{answer['request_id']}")).json()
            assert receipt["charge"]["micros"] == answer["charge"] > 0, receipt
            assert receipt["ledger_entry_id"] == answer["entry"]
            row = rows[answer["request_id"]]
            assert row["entry_id"] == answer["entry"]
            assert -row["amount"]["micros"] == answer["charge"]
        for request_id in others:
            receipt = (await http.get(f"/v1/usage/{request_id}")).json()
            assert receipt["error"] != "charge_not_collected", receipt
            charged = receipt["charge"]["micros"]
            if charged:
                assert -rows[request_id]["amount"]["micros"] == charged
                assert rows[request_id]["entry_id"] == receipt["ledger_entry_id"]
            else:
                assert request_id not in rows
        listing = (await http.get("/v1/usage", params={"limit": 500})).json()["data"]
        after = await balances(http)
    assert after["routed"]["posted"] == 10_000_000 - sum(r["charge"]["micros"] for r in listing)
    assert after["routed"]["held"] == 0


async def test_streams_closed_after_finish_reason_on_a_busy_account_lose_no_charge(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account()
    before = not_collected()
    async with system.http(key) as http:
        work = [plain(http) if n % 3 else closed_after_finish_reason(http) for n in range(30)]
        answers = await asyncio.gather(*work)
    named = [a for a in answers if isinstance(a, dict)]
    streams = [a for a in answers if isinstance(a, str)]
    assert len(streams) == 10
    await settled_story(system, account, key, named, streams)
    assert not_collected() == before
    await assert_reconciled(system, tmp_path, account)


async def test_streams_closed_before_the_first_chunk_and_cancelled_requests_hold_nothing(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account()
    async with system.http(key) as http:
        early = await asyncio.gather(*(closed_before_first_chunk(http) for _ in range(6)))
        cut = [asyncio.create_task(plain(http)) for _ in range(6)]
        await asyncio.sleep(0.01)
        for task in cut:
            task.cancel()
        await asyncio.gather(*cut, return_exceptions=True)
        named = [await plain(http) for _ in range(2)]
    await settled_story(system, account, key, named, list(early))
    await assert_reconciled(system, tmp_path, account)


async def test_a_failure_inside_the_gateway_ends_the_hold_and_answers_with_the_request_id(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error after the upstream answered (forced here): the request's
    hold is released at once (not at its TTL), its receipt says nothing was charged,
    and the 500 names the request id and nothing else of ours."""
    from services.gateway.flow import complete

    def broken(payload: dict[str, Any]) -> int:
        raise RuntimeError("SELECT secret FROM wallet.balances")

    account, key = await system.new_account()
    monkeypatch.setattr(complete, "answer_text_tokens", broken)
    async with system.http(key) as http:
        answer = await http.post("/v1/chat/completions", json=BODY)
    monkeypatch.undo()
    assert answer.status_code == 500
    request_id = answer.headers["x-request-id"]
    error = answer.json()["error"]
    assert error["code"] == "internal_error" and request_id in error["message"]
    assert "SELECT" not in answer.text and "wallet." not in answer.text
    await until_nothing_held(system, account)
    async with system.http(key) as http:
        receipt = (await http.get(f"/v1/usage/{request_id}")).json()
        after = await balances(http)
    assert receipt["status"] == "failed" and receipt["charge"]["micros"] == 0
    assert receipt["settlement_rule"] == "not_answered"
    assert receipt["error"] == "internal_error"  # the code the answer carried
    assert after["routed"] == {"posted": 10_000_000, "held": 0, "available": 10_000_000}
