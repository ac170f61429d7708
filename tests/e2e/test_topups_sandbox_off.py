"""Test money only where it is turned on (S1, issue 17).

The session's system runs with the sandbox provider on (as `tokenforge dev` does);
here a payments service with the default settings (sandbox off) serves a gateway of
its own, on the same databases and services: the sandbox takes no order, pays no
order and has no webhook there, an order that names no provider is refused naming
the providers that are on, and a bank transfer still opens. Nothing is minted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.payments import app as payments_app
from tests.e2e.harness import ADMIN, INTERNAL, System
from tokenforge.config import Settings
from tokenforge.runtime.service import RunningService, load


@pytest.fixture(scope="module")
async def no_sandbox_gateway(system: System, database_url: str) -> AsyncIterator[str]:
    """The URL of a gateway whose payments service has the default settings."""
    payments = await payments_app.start(
        Settings(database_url=database_url, internal_token=INTERNAL, admin_token=ADMIN), port=0
    )
    gateway: RunningService = await load("gateway").start(
        Settings(
            database_url=database_url,
            internal_token=INTERNAL,
            admin_token=ADMIN,
            routing_addr=system.services["routing"],
            wallet_addr=system.services["wallet"],
            payments_addr=payments.address,
            usage_addr=system.services["usage"],
        ),
        port=0,
    )
    try:
        yield f"http://127.0.0.1:{gateway.http_port}"
    finally:
        await gateway.stop(grace=0.5)
        await payments.stop(grace=0.5)


async def posted(http: httpx.AsyncClient) -> dict[str, int]:
    wallet = (await http.get("/v1/wallet")).json()
    return {b["bucket"]: b["posted"]["micros"] for b in wallet["balances"]}


async def test_with_the_sandbox_off_no_request_mints_balance(
    system: System, no_sandbox_gateway: str
) -> None:
    account_id, key = await system.new_account(credit=0, routed=0)
    auth = {"authorization": f"Bearer {key}"}
    # A sandbox order opened where test money is on (the session's gateway)...
    async with system.http(key) as on:
        opened_on = await on.post(
            "/v1/topups", json={"bucket": "credit", "provider": "sandbox", "amount": "10.00"}
        )
    assert opened_on.status_code == 201
    order_id = opened_on.json()["order_id"]

    async with httpx.AsyncClient(base_url=no_sandbox_gateway, headers=auth, timeout=30) as off:
        named = await off.post(
            "/v1/topups", json={"bucket": "credit", "provider": "sandbox", "amount": "10.00"}
        )
        unnamed = await off.post("/v1/topups", json={"bucket": "routed", "amount": "10.00"})
        # ...cannot be paid where it is off.
        pay = await off.post(f"/v1/topups/{order_id}/sandbox", json={"outcome": "pay"})
        hook = await off.post(
            "/webhooks/payments/sandbox",
            json={"order_id": order_id, "status": "succeeded"},
            headers={"authorization": ""},
        )
        transfer = await off.post(
            "/v1/topups",
            json={"bucket": "credit", "provider": "manual_transfer", "amount": "10.00"},
        )
        balances = await posted(off)
        order = (await off.get(f"/v1/topups/{order_id}")).json()

    assert named.status_code == 400
    assert named.json()["error"]["code"] == "provider_not_allowed"
    assert "not offered on this deployment" in named.json()["error"]["message"]
    assert "`manual_transfer`" in named.json()["error"]["message"]
    assert "sandbox" not in named.json()["error"]["message"].split("one of", 1)[1]

    assert unnamed.status_code == 400
    assert unnamed.json()["error"]["param"] == "provider"
    assert "`manual_transfer`" in unnamed.json()["error"]["message"]

    assert pay.status_code == 404
    assert "off on this deployment" in pay.json()["error"]["message"]
    assert hook.status_code == 404

    assert transfer.status_code == 201
    assert transfer.json()["provider"] == "manual_transfer"
    assert transfer.json()["status"] == "pending"

    assert order["status"] == "pending"
    assert balances == {"credit": 0, "routed": 0}
    assert all(b.posted_micros == 0 for b in await system.operator.balances(account_id))


async def test_where_the_sandbox_is_on_an_order_naming_no_provider_takes_it(
    system: System,
) -> None:
    _, key = await system.new_account(credit=0, routed=0)
    async with system.http(key) as http:
        opened = await http.post("/v1/topups", json={"bucket": "credit", "amount": "1.00"})

    assert opened.status_code == 201
    assert opened.json()["provider"] == "sandbox"
