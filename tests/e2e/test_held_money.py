"""Held money the user can understand (docs/GLOSSARY.md, "Held money"): the wallet
splits `held` into what the user's requests in flight hold and what the gateway set
aside for fast serving (a budget's hold), the two always sum to `held`, and
`available` is what a new request can spend."""

from __future__ import annotations

import uuid

from services.wallet.client import WalletClient
from tests.e2e.harness import ADMIN, System
from tokenforge.holds import new_budget_request_id
from tokenforge.money import Bucket


async def test_the_wallet_splits_held_money_into_requests_in_flight_and_set_aside(
    system: System,
) -> None:
    account, key = await system.new_account(credit=10_000_000, routed=0)
    wallet = WalletClient.connect(system.services["wallet"], ADMIN)
    try:
        # A request in flight, and a budget of a gateway replica (as budgets.py places it).
        request = await wallet.hold(account, Bucket.CREDIT, 1_250_000, f"req_{uuid.uuid4().hex}")
        budget = await wallet.hold(account, Bucket.CREDIT, 2_500_000, new_budget_request_id())
        async with system.http(key) as http:
            shown = (await http.get("/v1/wallet")).json()
        await wallet.release(request.hold_id, reason="test done")
        await wallet.release(budget.hold_id, reason="test done")
    finally:
        await wallet.close()

    [credit] = [b for b in shown["balances"] if b["bucket"] == "credit"]
    assert credit["held_for_requests"] == {"micros": 1_250_000, "display": "1.25 CR"}
    assert credit["set_aside"] == {"micros": 2_500_000, "display": "2.5 CR"}
    assert credit["held"]["micros"] == 3_750_000
    assert credit["available"] == {"micros": 6_250_000, "display": "6.25 CR"}
    assert credit["posted"]["micros"] == 10_000_000
