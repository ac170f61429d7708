"""A Hold the wallet placed but never answered (issue 21: the wallet SIGKILLed, or its
database restarting, between its commit and its answer). The gateway answers that the
wallet is unavailable and nothing was charged, and makes that true: once the wallet
answers, it asks the same Hold again (same idempotency key, so the wallet names the
hold it placed) and releases it with a receipt that charges nothing. Nothing stays
held until the hold's TTL, and both reconciles pass.

Here the wallet commits after the caller gave up: the account's balance row is locked
by another transaction, so the wallet's Hold statement waits past the gateway's
deadline (three tries), and commits once the lock is let go.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from sqlalchemy import text

from services.wallet.client import WalletClient
from tests.e2e.harness import System
from tests.e2e.test_usage_reconcile import assert_reconciled
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.runtime.db import create_engine

CREDIT = 5_000_000
ASK = {"model": "demo-chat", "messages": [{"role": "user", "content": "is it held?"}]}


async def until_ended(
    http: httpx.AsyncClient, wallet: WalletClient, account: str, request_id: str, holds: int
) -> tuple[httpx.Response, list[wallet_pb2.Hold]]:
    """The request's receipt and its holds, once it has a receipt and `holds` holds,
    none open (or as they are after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        found = await http.get(f"/v1/usage/{request_id}")
        await http.get("/v1/wallet")  # delivers the account's queued finishes
        ours = [h for h in (await wallet.holds(account)).holds if h.request_id == request_id]
        ended = (
            found.status_code == 200
            and len(ours) >= holds
            and all(h.status != wallet_pb2.HOLD_STATUS_OPEN for h in ours)
        )
        if ended or time.monotonic() > deadline:
            return found, ours
        await asyncio.sleep(0.5)


async def test_a_hold_placed_but_never_answered_is_released_with_a_receipt(
    system: System, database_url: str, tmp_path: Path
) -> None:
    account, key = await system.new_account(credit=CREDIT, routed=0)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as lock:
            held_row = await lock.begin()
            await lock.execute(
                text("SELECT 1 FROM wallet.balances WHERE account_id = :a FOR UPDATE"),
                {"a": account},
            )
            async with system.http(key) as http:
                answer = await http.post("/v1/chat/completions", json=ASK)
            await held_row.rollback()  # the wallet's waiting Hold commits now
    finally:
        await engine.dispose()

    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "nothing was charged" in error["message"]
    request_id = answer.headers["x-request-id"]

    wallet = WalletClient.connect(system.services["wallet"], system.admin_token)
    try:
        async with system.http(key) as http:
            found, ours = await until_ended(http, wallet, account, request_id, holds=1)
            assert found.status_code == 200, found.text
            receipt = found.json()
            assert receipt["status"] == "failed" and receipt["charge"]["micros"] == 0, receipt
            assert receipt["settlement_rule"] == "not_answered"
            # The wallet did place it (after the caller gave up), once, and it is released.
            assert [wallet_pb2.HoldStatus.Name(h.status) for h in ours] == [
                "HOLD_STATUS_RELEASED"
            ], ours
            assert receipt["hold_id"] == ours[0].hold_id
            balances = (await http.get("/v1/wallet")).json()["balances"]
            credit = next(b for b in balances if b["bucket"] == "credit")
            assert credit["posted"]["micros"] == CREDIT and credit["held"]["micros"] == 0
            ledger = await http.get("/v1/wallet/ledger", params={"request_id": request_id})
            assert ledger.json()["data"] == []  # nothing was charged
    finally:
        await wallet.close()
    await assert_reconciled(system, tmp_path, account)


FALL_BACK = {
    "model": "test-route-fallback",
    "messages": [{"role": "user", "content": "is the second hold held?"}],
    "max_tokens": 20,
}


async def test_a_fallback_hold_placed_but_never_answered_is_released(
    system: System, database_url: str, tmp_path: Path
) -> None:
    """The official route fails before its first byte; the request's second Hold, on
    the routed bucket, waits on a locked balance row past the gateway's deadline and
    commits once the lock is let go. The request is answered "nothing was charged",
    its first hold ends with its receipt, and the second is released once the wallet
    names it (before, it stayed held until its TTL)."""
    account, key = await system.new_account(credit=CREDIT, routed=CREDIT, fallback_allowed=True)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as lock:
            held_row = await lock.begin()
            await lock.execute(
                text(
                    "SELECT 1 FROM wallet.balances WHERE account_id = :a AND bucket = 'routed'"
                    " FOR UPDATE"
                ),
                {"a": account},
            )
            async with system.http(key) as http:
                answer = await http.post("/v1/chat/completions", json=FALL_BACK)
            await held_row.rollback()  # the wallet's waiting second Hold commits now
    finally:
        await engine.dispose()

    assert answer.status_code == 503, answer.text
    assert "nothing was charged" in answer.json()["error"]["message"]
    request_id = answer.headers["x-request-id"]

    wallet = WalletClient.connect(system.services["wallet"], system.admin_token)
    try:
        async with system.http(key) as http:
            found, ours = await until_ended(http, wallet, account, request_id, holds=2)
            assert found.status_code == 200, found.text
            receipt = found.json()
            assert receipt["status"] == "failed" and receipt["charge"]["micros"] == 0, receipt
            # The receipt names the error the answer carried.
            assert receipt["error"] == answer.json()["error"]["code"] == "service_unavailable"
            # It ended on the official route; the routed one is listed as not answered.
            assert [
                (a["route"], a["outcome"], a["hold_id"]) for a in receipt["route_attempts"]
            ] == [
                ("routed", "hold_in_doubt", None),
                ("official", "final", receipt["hold_id"]),
            ], receipt["route_attempts"]
            # Both holds placed (the second after the caller gave up), both released.
            assert sorted(wallet_pb2.HoldStatus.Name(h.status) for h in ours) == [
                "HOLD_STATUS_RELEASED",
                "HOLD_STATUS_RELEASED",
            ], ours
            assert {h.bucket for h in ours} == {
                common_pb2.BUCKET_CREDIT,
                common_pb2.BUCKET_ROUTED,
            }
            assert all(h.captured_micros == 0 for h in ours)
            balances = (await http.get("/v1/wallet")).json()["balances"]
            for balance in balances:
                assert balance["posted"]["micros"] == CREDIT and balance["held"]["micros"] == 0
            ledger = await http.get("/v1/wallet/ledger", params={"request_id": request_id})
            assert ledger.json()["data"] == []  # nothing was charged
    finally:
        await wallet.close()
    await assert_reconciled(system, tmp_path, account)
