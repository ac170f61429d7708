"""What a top-up paid for, on the whole system: two top-ups pay for a series of
requests, first in, first out; each lists exactly the requests it paid for (with their
receipts), what is used and what is left; each request names the top-ups that paid it
(GET /v1/usage/{id}/paid-from);
and the wallet's reconciliation checks the attribution."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai

from tests.e2e.harness import System
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc


async def paid_topup(http: httpx.AsyncClient, amount: str) -> dict[str, Any]:
    order = (
        await http.post(
            "/v1/topups", json={"bucket": "credit", "provider": "sandbox", "amount": amount}
        )
    ).json()
    await http.post(f"/v1/topups/{order['order_id']}/sandbox", json={"outcome": "pay"})
    shown: dict[str, Any] = {}
    for _ in range(200):
        shown = (await http.get(f"/v1/topups/{order['order_id']}")).json()
        if shown["state"] == "credited":
            break
        await asyncio.sleep(0.05)
    assert shown["state"] == "credited", shown
    return shown


async def every_use(http: httpx.AsyncClient, order_id: str) -> tuple[dict[str, Any], list[Any]]:
    """Every page of the top-up's uses (ten rows a page, to walk the cursor)."""
    rows: list[Any] = []
    cursor = ""
    while True:
        page = (
            await http.get(f"/v1/topups/{order_id}/uses", params={"limit": 10, "cursor": cursor})
        ).json()
        rows += page["data"]
        if not page["next_cursor"]:
            return page, rows
        cursor = page["next_cursor"]


async def test_two_topups_each_list_exactly_the_requests_they_paid_for(system: System) -> None:
    account_id, key = await system.new_account(credit=0, routed=0)
    sdk = openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)
    async with system.http(key) as http:
        first = await paid_topup(http, "0.01")
        second = await paid_topup(http, "0.01")
        request_ids = []
        for n in range(64):  # 0.01 CR pays about 54 of them
            raw = await sdk.chat.completions.with_raw_response.create(
                model="demo-chat",
                messages=[{"role": "user", "content": f"Count to {n} for the ledger"}],
                max_tokens=64,
            )
            request_ids.append(raw.headers["x-request-id"])
        charges: list[dict[str, Any]] = []
        for _ in range(200):  # a budget's charges reach the ledger a moment later
            ledger = (await http.get("/v1/wallet/ledger", params={"limit": 500})).json()["data"]
            charges = [r for r in ledger if r["kind"] == "request_charge"]
            if len(charges) == len(request_ids):
                break
            await asyncio.sleep(0.05)
        charges.reverse()  # oldest first: the order the credits paid them
        first_page, first_uses = await every_use(http, first["order_id"])
        second_page, second_uses = await every_use(http, second["order_id"])
        receipts = {r: (await http.get(f"/v1/usage/{r}")).json() for r in request_ids}
        paid_from = {r: (await http.get(f"/v1/usage/{r}/paid-from")).json() for r in request_ids}

    assert sorted(c["request_id"] for c in charges) == sorted(request_ids)
    # First in, first out, computed here from the ledger rows alone.
    left = {first["order_id"]: first["received_balance"]["micros"]}
    left[second["order_id"]] = second["received_balance"]["micros"]
    expected: dict[str, list[tuple[str, int]]] = {o: [] for o in left}
    for row in charges:
        due = row["charge"]["micros"]
        for order_id in left:
            part = min(due, left[order_id])
            if part:
                expected[order_id].append((row["request_id"], part))
                left[order_id] -= part
                due -= part
        assert due == 0
    assert expected[first["order_id"]] and expected[second["order_id"]]
    assert [(u["request_id"], u["used"]["micros"]) for u in first_uses] == expected[
        first["order_id"]
    ]
    assert [(u["request_id"], u["used"]["micros"]) for u in second_uses] == expected[
        second["order_id"]
    ]
    for page, order in ((first_page, first), (second_page, second)):
        used = sum(part for _, part in expected[order["order_id"]])
        assert page["used"]["micros"] == used
        assert page["left"]["micros"] == order["received_balance"]["micros"] - used
        assert page["total"] == len(expected[order["order_id"]])
    assert first_page["left"]["micros"] == 0  # the first top-up was used up first
    assert all(u["receipt_url"] == f"/v1/usage/{u['request_id']}" for u in first_uses)
    # Each receipt names the top-ups that paid it, with the same parts.
    for request_id, receipt in receipts.items():
        assert paid_from[request_id]["charge"] == receipt["charge"]
        named = [(p["order_id"], p["used"]["micros"]) for p in paid_from[request_id]["data"]]
        assert named == [
            (order_id, part)
            for order_id in (first["order_id"], second["order_id"])
            for r, part in expected[order_id]
            if r == request_id
        ]
        assert sum(part for _, part in named) == receipt["charge"]["micros"]
    wallet = system.operator.wallet
    report = await wallet.call(
        wallet_pb2_grpc.WalletServiceStub(wallet.channel).Reconcile, wallet_pb2.ReconcileRequest()
    )
    assert not [v for v in report.violations if account_id in v.subject], report.violations
