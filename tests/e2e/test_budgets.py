"""Budgets: a busy account's requests are drawn from one wallet hold and their finishes
queued; every answer's charge still becomes its own ledger row and receipt, reads see
them at once, the budget is given back when the account goes quiet, and a balance too
small for a budget is served hold by hold with exact refusals."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import text

from services.gateway import metrics
from services.gateway.storage.finish_queue import FinishQueue
from services.wallet.client import WalletClient
from tests.e2e.harness import ADMIN, INTERNAL, System
from tests.e2e.test_usage_reconcile import assert_reconciled, balances
from tokenforge.config import Settings
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.holds import is_budget, new_budget_request_id, part_entry_id
from tokenforge.money import Bucket
from tokenforge.runtime.db import create_engine
from tokenforge.runtime.embedded import free_port
from tokenforge.runtime.service import load


def chat(model: str = "demo-chat", stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "count the money"}],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def one_request(http: httpx.AsyncClient, n: int) -> tuple[int, dict[str, Any]]:
    """Every third request streams, every seventh fails upstream (nothing charged)."""
    if n % 7 == 6:
        answer = await http.post("/v1/chat/completions", json=chat("test-down-budgets"))
        return answer.status_code, {}
    if n % 3 == 2:
        async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as s:
            text = (await s.aread()).decode()
        final = [line for line in text.splitlines() if '"receipt"' in line][-1]
        return s.status_code, orjson.loads(final.removeprefix("data: "))["receipt"]
    answer = await http.post("/v1/chat/completions", json=chat())
    return answer.status_code, answer.json()["receipt"]


def draws(how: str) -> float:
    return metrics.BUDGET_DRAWS.labels(how)._value.get()  # type: ignore[attr-defined,no-any-return]


async def open_holds(system: System, account_id: str) -> list[wallet_pb2.Hold]:
    wallet = WalletClient.connect(system.services["wallet"], ADMIN)
    try:
        return list((await wallet.holds(account_id, status=wallet_pb2.HOLD_STATUS_OPEN)).holds)
    finally:
        await wallet.close()


async def until_nothing_held(system: System, account_id: str) -> None:
    """The account quiet: its budgets are given back within a second or so of idling."""
    deadline = time.monotonic() + 10
    while await open_holds(system, account_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert await open_holds(system, account_id) == []


async def test_a_busy_accounts_requests_draw_from_a_budget_and_reconcile(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account()
    drawn_before = draws("budget")
    async with system.http(key) as http:
        gate = asyncio.Semaphore(8)

        async def limited(n: int) -> tuple[int, dict[str, Any]]:
            async with gate:
                return await one_request(http, n)

        answers = await asyncio.gather(*(limited(n) for n in range(42)))
        # At once after the answers: every receipt, and its ledger row, is there.
        listing = (await http.get("/v1/usage", params={"limit": 100})).json()["data"]
        ledger = (await http.get("/v1/wallet/ledger", params={"limit": 100})).json()["data"]

    assert draws("budget") - drawn_before >= 30  # most requests came from a budget
    assert sorted(status for status, _ in answers) == [200] * 36 + [502] * 6
    receipts = {r["request_id"]: r for r in listing}
    rows = {e["request_id"]: e for e in ledger if e.get("kind") == "request_charge"}
    budget_holds = set()
    for status, answered in answers:
        if status != 200:
            continue
        recorded = receipts[answered["request_id"]]
        assert recorded["charge"]["micros"] == answered["charge"]["micros"] > 0
        assert recorded["ledger_entry_id"] == answered["ledger_entry_id"]
        row = rows[answered["request_id"]]
        assert row["entry_id"] == answered["ledger_entry_id"]
        assert -row["amount"]["micros"] == answered["charge"]["micros"]
        hold_id = recorded.get("hold_id", "")
        if answered["ledger_entry_id"] == str(part_entry_id(hold_id, answered["request_id"])):
            budget_holds.add(hold_id)
    assert budget_holds, "no answer named a part of a budget"
    assert sorted(r["status"] for r in listing).count("failed") == 6

    # Quiet now: the budgets are given back, nothing stays held, and both reconciles pass.
    await until_nothing_held(system, account)
    async with system.http(key) as http:
        after = await balances(http)
    spent = sum(r["charge"]["micros"] for r in listing)
    assert after["credit"]["posted"] == 10_000_000 - spent
    assert after["credit"]["held"] == 0
    await assert_reconciled(system, tmp_path, account)
    wallet = WalletClient.connect(system.services["wallet"], ADMIN)
    try:
        ended = [h for h in (await wallet.holds(account)).holds if is_budget(h.request_id)]
    finally:
        await wallet.close()
    assert ended and all(h.status == wallet_pb2.HOLD_STATUS_RELEASED for h in ended)


async def test_a_balance_too_small_for_a_budget_goes_hold_by_hold_and_never_below_zero(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account(credit=60_000, routed=0)
    refused_before = metrics.BUDGETS.labels("refused")._value.get()  # type: ignore[attr-defined]
    async with system.http(key) as http:
        answers = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=chat()) for _ in range(24))
        )
        after = await balances(http)
        listing = (await http.get("/v1/usage", params={"limit": 100})).json()["data"]
    assert metrics.BUDGETS.labels("refused")._value.get() > refused_before  # type: ignore[attr-defined]
    statuses = {a.status_code for a in answers}
    assert statuses <= {200, 402}
    for refused in (a for a in answers if a.status_code == 402):
        assert refused.json()["error"]["code"] == "insufficient_balance"
    spent = sum(r["charge"]["micros"] for r in listing)
    assert after["credit"]["posted"] == 60_000 - spent >= 0
    assert after["credit"]["available"] >= 0
    await assert_reconciled(system, tmp_path, account)


async def test_a_finish_queued_by_a_replica_that_is_gone_is_delivered_on_the_next_read(
    system: System, database_url: str
) -> None:
    """A replica answered (the answer named the part's entry id), queued the finish,
    and stopped before its relay ran: a read through any gateway delivers it."""
    account, key = await system.new_account()
    wallet = WalletClient.connect(system.services["wallet"], ADMIN)
    engine = create_engine(database_url, pool_size=1)
    try:
        budget = await wallet.hold(account, Bucket.CREDIT, 50_000, new_budget_request_id())
        request_id = "req-gone-" + budget.hold_id[:8]
        receipt = usage_pb2.Receipt(
            request_id=request_id,
            account_id=account,
            bucket=budget.bucket,
            hold_id=budget.hold_id,
            charge_micros=1_234,
            entry_id=str(part_entry_id(budget.hold_id, request_id)),
            status=usage_pb2.RECEIPT_STATUS_SUCCEEDED,
            settlement_rule="finished_with_usage",
            endpoint="chat.completions",
            selected_model="demo-chat",
        )
        gone = FinishQueue(engine, owner="replica-that-is-gone")
        await gone.put(
            request_id,
            receipt.SerializeToString(),
            account_id=account,
            hold_id=budget.hold_id,
            finish="part",
        )
        async with system.http(key) as http:
            recorded = (await http.get(f"/v1/usage/{request_id}")).json()
        assert recorded["ledger_entry_id"] == receipt.entry_id
        assert recorded["charge"]["micros"] == 1_234
        rows = (await wallet.ledger(account)).entries
        assert [(e.entry_id, e.amount_micros) for e in rows if e.request_id == request_id] == [
            (receipt.entry_id, -1_234)
        ]
        await wallet.release(budget.hold_id, reason="test done")
    finally:
        await wallet.close()
        await engine.dispose()


async def test_a_request_drawn_from_a_budget_falls_back_and_pays_on_the_other_route_only(
    system: System, tmp_path: Path
) -> None:
    """The official route is down: the second request in a row takes its worst case
    from the account's Credit budget, falls back to the routed route (a hold of its
    own there) and gives the budget its worst case back; nothing is taken from Credit."""
    account, key = await system.new_account(
        credit=1_000_000, routed=1_000_000, fallback_allowed=True
    )
    body = {"model": "test-route-fallback", "messages": [{"role": "user", "content": "Go"}]}
    drawn_before = draws("budget")
    async with system.http(key) as http:
        answers = [await http.post("/v1/chat/completions", json=body) for _ in range(3)]
        receipts = [
            (await http.get(f"/v1/usage/{a.headers['x-request-id']}")).json() for a in answers
        ]
        after = await balances(http)
    assert draws("budget") - drawn_before >= 2  # the 2nd and 3rd came from a budget
    for answer, receipt in zip(answers, receipts, strict=True):
        assert answer.status_code == 200, answer.text
        assert (receipt["route"], receipt["bucket"]) == ("routed", "routed")
        official, routed = receipt["route_attempts"]
        assert official["outcome"] == "fell_back" and official["hold_id"]
        assert receipt["charge"]["micros"] > 0
    assert after["credit"] == {"posted": 1_000_000, "held": 0, "available": 1_000_000}
    spent = sum(r["charge"]["micros"] for r in receipts)
    assert after["routed"]["posted"] == 1_000_000 - spent
    await assert_reconciled(system, tmp_path, account)


async def test_two_gateway_replicas_draw_one_account_from_their_own_budgets(
    system: System, database_url: str, tmp_path: Path
) -> None:
    """Each replica holds its own budget for the account; the sum of what they hold and
    take never exceeds the balance (the wallet's holds bound it), and every answer of
    both is a receipt and a ledger row once the account is quiet."""
    account, key = await system.new_account(credit=2_000_000, routed=0)
    other = await system.another_gateway(database_url)
    opened_before = metrics.BUDGETS.labels("opened")._value.get()  # type: ignore[attr-defined]
    try:
        urls = [system.gateway_url, f"http://127.0.0.1:{other.http_port}"]
        clients = [
            httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30)
            for url in urls
        ]
        gate = asyncio.Semaphore(8)

        async def limited(n: int) -> tuple[int, dict[str, Any]]:
            async with gate:
                return await one_request(clients[n % 2], n)

        answers = await asyncio.gather(*(limited(n) for n in range(48)))
        # A read through the second replica delivers the first one's finishes too.
        listing = (await clients[1].get("/v1/usage", params={"limit": 100})).json()["data"]
        for client in clients:
            await client.aclose()
    finally:
        await other.stop(grace=0.5)
    # Both replicas opened budgets of their own (both run in this process).
    assert metrics.BUDGETS.labels("opened")._value.get() - opened_before >= 2  # type: ignore[attr-defined]
    answered = {a["request_id"]: a for status, a in answers if status == 200}
    assert len(answered) == 42  # 6 of 48 went to the failing model
    recorded = {r["request_id"]: r for r in listing if r["status"] == "succeeded"}
    assert recorded.keys() == answered.keys()
    assert all(
        recorded[rid]["ledger_entry_id"] == a["ledger_entry_id"] for rid, a in answered.items()
    )
    await until_nothing_held(system, account)
    async with system.http(key) as http:
        after = await balances(http)
    spent = sum(r["charge"]["micros"] for r in listing)
    assert after["credit"] == {
        "posted": 2_000_000 - spent,
        "held": 0,
        "available": 2_000_000 - spent,
    }
    await assert_reconciled(system, tmp_path, account)


async def waiting_for(engine: Any, account_id: str) -> int:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT count(*) FROM gateway.finish_queue WHERE account_id = :a"),
            {"a": account_id},
        )
        return int(rows.scalar_one())


async def test_while_the_wallet_is_down_a_busy_account_is_served_from_its_budget(
    system: System, database_url: str, tmp_path: Path
) -> None:
    """The budget's money is already held: requests keep being answered while the
    wallet is away, their finishes wait in the queue, and their parts are captured
    once a wallet answers again."""
    account, key = await system.new_account()
    wallet_port = free_port()
    settings = Settings(database_url=database_url, internal_token=INTERNAL, admin_token=ADMIN)
    wallet = await load("wallet").start(settings, port=wallet_port)
    gateway = await system.another_gateway(database_url, wallet_addr=f"127.0.0.1:{wallet_port}")
    engine = create_engine(database_url, pool_size=1)
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    try:
        answers = [await http.post("/v1/chat/completions", json=chat()) for _ in range(3)]
        await wallet.stop(grace=0.5)  # the budget is open (requests 2 and 3 drew from it)
        answers += [await http.post("/v1/chat/completions", json=chat()) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 8
        assert await waiting_for(engine, account) >= 5  # their parts wait for a wallet
        wallet = await load("wallet").start(settings, port=wallet_port)
        deadline = time.monotonic() + 20
        while await waiting_for(engine, account) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await waiting_for(engine, account) == 0
        ledger = (await http.get("/v1/wallet/ledger", params={"limit": 100})).json()["data"]
        rows = {e["request_id"]: e["entry_id"] for e in ledger if e.get("request_id")}
        for answer in answers:
            receipt = answer.json()["receipt"]
            assert rows[receipt["request_id"]] == receipt["ledger_entry_id"]
    finally:
        await http.aclose()
        await gateway.stop(grace=0.5)  # gives its budgets back
        await wallet.stop(grace=0.5)
        await engine.dispose()
    await assert_reconciled(system, tmp_path, account)
