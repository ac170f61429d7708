"""Top-ups through the gateway's user API on the whole system: one order per
Idempotency-Key, fields clients cannot set, bank transfers reviewed by an operator,
cancellation, and no spendable balance from expired or failed orders."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ADMIN, System
from tokenforge.generated.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.runtime.grpc_client import Peer


@pytest.fixture
async def user(system: System) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    account_id, key = await system.new_account(credit=0, routed=0)
    async with system.http(key) as http:
        yield account_id, http


async def balances(http: httpx.AsyncClient) -> dict[str, int]:
    wallet = (await http.get("/v1/wallet")).json()
    return {b["bucket"]: b["available"]["micros"] for b in wallet["balances"]}


async def test_a_retried_click_returns_the_same_order_and_another_body_is_a_conflict(
    user: tuple[str, httpx.AsyncClient],
) -> None:
    _, http = user
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"bucket": "credit", "provider": "sandbox", "amount": "10.00"}

    first = await http.post("/v1/topups", json=body, headers=key)
    retry = await http.post("/v1/topups", json=body, headers=key)
    other = await http.post("/v1/topups", json={**body, "amount": "11.00"}, headers=key)
    listed = (await http.get("/v1/topups")).json()["data"]

    assert (first.status_code, retry.status_code, other.status_code) == (201, 200, 409)
    assert retry.json()["order_id"] == first.json()["order_id"]
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert [t["order_id"] for t in listed] == [first.json()["order_id"]]


@pytest.mark.parametrize("field", ["status", "rate", "received_balance", "received_micros"])
async def test_clients_cannot_set_status_rates_or_received_amounts(
    user: tuple[str, httpx.AsyncClient], field: str
) -> None:
    _, http = user
    answer = await http.post(
        "/v1/topups",
        json={"bucket": "credit", "provider": "sandbox", "amount": "10.00", field: "999"},
    )

    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field
    assert field in answer.json()["error"]["message"]
    assert (await http.get("/v1/topups")).json()["data"] == []


async def test_a_bank_transfer_is_credited_only_after_an_operator_approves_it(
    system: System, user: tuple[str, httpx.AsyncClient]
) -> None:
    _, http = user
    order = (
        await http.post(
            "/v1/topups",
            json={
                "bucket": "credit",
                "provider": "manual_transfer",
                "amount": "20.00",
                "currency": "EUR",
            },
        )
    ).json()
    proved = await http.post(
        f"/v1/topups/{order['order_id']}/proof", json={"transfer_reference": "SEPA-42"}
    )
    await asyncio.sleep(0.3)
    before_review = await balances(http)

    operator = Peer("payments", system.services["payments"], ADMIN)
    try:
        await operator.call(
            payments_pb2_grpc.PaymentsServiceStub(operator.channel).ReviewTopUp,
            payments_pb2.ReviewTopUpRequest(
                order_id=order["order_id"],
                decision=payments_pb2.REVIEW_DECISION_APPROVE,
                reason="on the statement",
                operator="alice",
            ),
        )
    finally:
        await operator.close()
    shown: dict[str, Any] = {}
    for _ in range(100):
        shown = (await http.get(f"/v1/topups/{order['order_id']}")).json()
        if shown["ledger_entry_id"]:
            break
        await asyncio.sleep(0.05)

    assert proved.json()["status"] == "awaiting_review"
    assert proved.json()["status_text"].startswith("Waiting for review")
    assert before_review["credit"] == 0
    listed = (await http.get("/v1/topups")).json()["data"]
    assert [t["ledger_entry_id"] for t in listed if t["order_id"] == order["order_id"]] == [
        shown["ledger_entry_id"]
    ]
    assert shown["status"] == "succeeded"
    assert shown["status_text"] == "Credited: 21.6 CR added to Credit"
    assert (shown["state"], shown["state_text"]) == ("credited", shown["status_text"])
    assert shown["topup_amount"]["display"] == "20.00 EUR"
    assert (await balances(http))["credit"] == 21_600_000


async def test_expired_failed_and_canceled_orders_create_no_spendable_balance(
    user: tuple[str, httpx.AsyncClient],
) -> None:
    _, http = user
    ids = []
    for outcome in ("expire", "fail", None):
        order = (
            await http.post(
                "/v1/topups", json={"bucket": "routed", "provider": "sandbox", "amount": "3.00"}
            )
        ).json()
        ids.append(order["order_id"])
        if outcome:
            await http.post(f"/v1/topups/{order['order_id']}/sandbox", json={"outcome": outcome})
        else:
            await http.post(f"/v1/topups/{order['order_id']}/cancel")
    late_payment = await http.post(f"/v1/topups/{ids[0]}/sandbox", json={"outcome": "pay"})
    paying_failed = await http.post(f"/v1/topups/{ids[1]}/sandbox", json={"outcome": "pay"})
    await asyncio.sleep(0.5)

    shown = [(await http.get(f"/v1/topups/{i}")).json() for i in ids]
    ledger = (await http.get("/v1/wallet/ledger")).json()["data"]
    assert [s["status"] for s in shown] == ["awaiting_review", "failed", "canceled"]
    assert late_payment.json()["status"] == "awaiting_review"
    assert paying_failed.status_code == 409
    assert shown[0]["state"] == "awaiting_review" and shown[0]["late"]
    assert shown[0]["state_text"] == (
        "Waiting for review: your payment arrived after the order expired; we are "
        "checking it before adding 3 RB to Routed balance"
    )
    assert shown[1]["status_text"] == "Payment failed: no balance was added"
    assert shown[2]["status_text"] == "Canceled: no balance was added"
    assert all(s["ledger_entry_id"] is None for s in shown)
    assert await balances(http) == {"credit": 0, "routed": 0}
    assert ledger == []
