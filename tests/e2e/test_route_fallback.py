"""Falling back to another route: when every channel of the chosen route fails before
the first byte and the key allows it, the request moves to the next route with a new
hold on that route's bucket, pays there only, and says so on the receipt and in the
headers; a key without that permission gets 502 and nothing is charged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import System
from tests.e2e.test_usage_reconcile import assert_reconciled, balances
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc

MODEL = "test-route-fallback"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Fall back"}], "max_tokens": 20}


async def ledger(http: httpx.AsyncClient, request_id: str) -> list[dict[str, Any]]:
    rows = (await http.get("/v1/wallet/ledger", params={"request_id": request_id})).json()
    return [r for r in rows["data"] if r["kind"] == "request_charge"]


async def test_a_request_falls_back_to_the_routed_route_and_pays_only_there(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account(
        credit=1_000_000, routed=1_000_000, fallback_allowed=True
    )
    async with system.http(key) as http:
        preview = (await http.post("/v1/routes/preview", json=BODY)).json()
        answer = await http.post("/v1/chat/completions", json=BODY)
        request_id = answer.headers["x-request-id"]
        receipt = (await http.get(f"/v1/usage/{request_id}")).json()
        rows = await ledger(http, request_id)
        after = await balances(http)
        holds = await system.operator.wallet.call(
            wallet_pb2_grpc.WalletServiceStub(system.operator.wallet.channel).ListHolds,
            wallet_pb2.ListHoldsRequest(account_id=account),
        )

    assert answer.status_code == 200, answer.text
    body = answer.json()
    charge = body["usage"]["cost_micros"]
    # The route and bucket that paid, named in the headers and the body.
    assert answer.headers["x-tokenforge-route"] == "routed"
    assert answer.headers["x-tokenforge-bucket"] == "routed"
    assert answer.headers["x-tokenforge-fallback-route"] == "official->routed"
    assert body["usage"]["cost_bucket"] == "routed" and charge > 0
    assert body["receipt"]["route"] == "routed" and body["receipt"]["fallback_used"] is True

    # The receipt: final route, prices, hold and ledger row are the routed ones; both
    # routes are listed, the official one with its released hold.
    assert (receipt["route"], receipt["bucket"]) == ("routed", "routed")
    assert receipt["upstream_model"] == "mock-gpt-routed"
    assert receipt["prices"]["input_per_million"]["micros"] == 1_000_000
    assert receipt["fallback_used"] is True
    assert [a["channel"] for a in receipt["attempts"]] == ["mock-down-route", "mock-up-route"]
    assert [a["outcome"] for a in receipt["attempts"]] == ["http_503", "ok"]
    left, final = receipt["route_attempts"]
    assert (left["route"], left["bucket"], left["outcome"]) == ("official", "credit", "fell_back")
    assert left["upstream_model"] == "mock-gpt-official" and left["channel_attempts"] == 1
    assert (final["route"], final["bucket"], final["outcome"]) == ("routed", "routed", "final")
    assert final["hold_id"] == receipt["hold_id"] != left["hold_id"]
    assert final["channel_attempts"] == 1

    # Two holds for one request id: the official one released, the routed one settled.
    by_id = {h.hold_id: h for h in holds.holds}
    assert by_id[left["hold_id"]].request_id == by_id[final["hold_id"]].request_id == request_id
    assert by_id[left["hold_id"]].captured_micros == 0
    assert by_id[final["hold_id"]].captured_micros == charge

    # Only the routed balance paid, in one ledger row carrying the request id.
    assert [(r["bucket"], -r["amount"]["micros"]) for r in rows] == [("routed", charge)]
    assert rows[0]["entry_id"] == receipt["ledger_entry_id"]
    assert after["credit"] == {"posted": 1_000_000, "held": 0, "available": 1_000_000}
    assert after["routed"]["posted"] == 1_000_000 - charge and after["routed"]["held"] == 0
    # The preview named the official route first (the fallback is the key's permission).
    assert preview["route"] == "official"
    await assert_reconciled(system, tmp_path, account)


async def test_a_stream_falls_back_before_its_first_byte(system: System, tmp_path: Path) -> None:
    account, key = await system.new_account(
        credit=1_000_000, routed=1_000_000, fallback_allowed=True
    )
    async with system.http(key) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json={**BODY, "stream": True}
        ) as answer:
            chunks = await answer.aread()
            headers = answer.headers
        receipt = (await http.get(f"/v1/usage/{headers['x-request-id']}")).json()
        after = await balances(http)
    assert answer.status_code == 200 and b"[DONE]" in chunks
    assert (headers["x-tokenforge-route"], headers["x-tokenforge-bucket"]) == ("routed", "routed")
    assert headers["x-tokenforge-fallback-route"] == "official->routed"
    assert [a["outcome"] for a in receipt["route_attempts"]] == ["fell_back", "final"]
    assert receipt["charge"]["micros"] > 0 and receipt["bucket"] == "routed"
    assert after["credit"]["posted"] == 1_000_000 and after["credit"]["held"] == 0
    assert after["routed"]["posted"] == 1_000_000 - receipt["charge"]["micros"]
    await assert_reconciled(system, tmp_path, account)


async def test_a_key_without_fallback_gets_502_and_nothing_is_charged(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account(credit=1_000_000, routed=1_000_000)
    async with system.http(key) as http:
        answer = await http.post("/v1/chat/completions", json=BODY)
        request_id = answer.headers["x-request-id"]
        receipt = (await http.get(f"/v1/usage/{request_id}")).json()
        rows = await ledger(http, request_id)
        after = await balances(http)
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "upstream_failed"
    assert "x-tokenforge-fallback-route" not in answer.headers
    assert (receipt["route"], receipt["bucket"], receipt["status"]) == (
        "official",
        "credit",
        "failed",
    )
    assert receipt["route_attempts"] == [] and receipt["charge"]["micros"] == 0
    assert [a["channel"] for a in receipt["attempts"]] == ["mock-down-route"]
    assert rows == []
    for bucket in ("credit", "routed"):
        assert after[bucket] == {"posted": 1_000_000, "held": 0, "available": 1_000_000}
    await assert_reconciled(system, tmp_path, account)


async def test_a_fallback_route_whose_bucket_cannot_pay_is_listed_and_not_tried(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account(credit=1_000_000, routed=0, fallback_allowed=True)
    async with system.http(key) as http:
        answer = await http.post("/v1/chat/completions", json=BODY)
        receipt = (await http.get(f"/v1/usage/{answer.headers['x-request-id']}")).json()
        after = await balances(http)
    assert answer.status_code == 502, answer.text
    assert (receipt["route"], receipt["bucket"], receipt["charge"]["micros"]) == (
        "official",
        "credit",
        0,
    )
    skipped, final = receipt["route_attempts"]
    assert (skipped["route"], skipped["outcome"], skipped["hold_id"]) == (
        "routed",
        "insufficient_balance",
        None,
    )
    assert (final["route"], final["outcome"]) == ("official", "final")
    assert after["credit"] == {"posted": 1_000_000, "held": 0, "available": 1_000_000}
    await assert_reconciled(system, tmp_path, account)
