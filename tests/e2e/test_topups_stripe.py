"""Card top-ups end to end: the gateway's webhook endpoint, the payments service talking
to a local fake of the Stripe API, the outbox, NATS and the wallet's credit.

This module runs its own payments service (Stripe configured, card orders living five
seconds, a sweeper every 50 ms) and its own gateway in front of it, next to the shared
system's routing, wallet and usage.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.payments import app as payments_app
from services.payments.adapters.stripe_checkout import StripeSettings
from services.payments.domain.orders import OrderTtls
from tests.e2e.harness import ADMIN, INTERNAL, System
from tests.integration.payments.fake_stripe import FakeStripe, sign
from tokenforge.config import Settings
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tokenforge.runtime.service import RunningService, load

SECRET = "whsec_e2e_current"
ORDER_TTL = timedelta(seconds=5)


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
async def card_gateway(
    system: System, fake_stripe: FakeStripe, database_url: str, nats_urls: dict[str, str]
) -> AsyncIterator[str]:
    """The URL of a gateway whose payments service takes Stripe (on the system's
    payments database, so the system's wallet sees its orders confirmed)."""
    base = Settings(
        database_url=database_url,
        nats_url=nats_urls["payments"],
        internal_token=INTERNAL,
        admin_token=ADMIN,
    )
    payments = await payments_app.start(
        base,
        port=0,
        order_ttl=OrderTtls(per_provider={"stripe": ORDER_TTL}),
        sweep_interval_s=0.05,
        stripe=StripeSettings(
            api_key="sk_test_e2e", webhook_secrets=(SECRET,), api_base=fake_stripe.url
        ),
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


async def credits_of(system: System, account_id: str) -> dict[str, int]:
    """order id -> number of ledger credits the wallet wrote for it."""
    stub = wallet_pb2_grpc.WalletServiceStub(system.operator.wallet.channel)
    found: dict[str, int] = {}
    token = ""
    while True:
        page = await system.operator.wallet.call(
            stub.ListLedger,
            wallet_pb2.ListLedgerRequest(account_id=account_id, page_size=100, page_token=token),
        )
        for entry in page.entries:
            if entry.order_id:
                found[entry.order_id] = found.get(entry.order_id, 0) + 1
        token = page.next_page_token
        if not token:
            return found


async def webhook(http: httpx.AsyncClient, body: bytes, signature: str) -> httpx.Response:
    return await http.post(
        "/webhooks/payments/stripe",
        content=body,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )


async def test_a_paid_card_order_is_credited_once_and_shows_its_ledger_entry(
    system: System, card_gateway: str, fake_stripe: FakeStripe
) -> None:
    account_id, key = await system.new_account(credit=0, routed=0)
    async with httpx.AsyncClient(base_url=card_gateway, timeout=30) as anonymous:
        user = httpx.AsyncClient(
            base_url=card_gateway, headers={"authorization": f"Bearer {key}"}, timeout=30
        )
        async with user:
            created = await user.post(
                "/v1/topups", json={"bucket": "routed", "provider": "stripe", "amount": "12.00"}
            )
            order = created.json()
            session_id = order["checkout_url"].rsplit("/", 1)[-1]
            fake_stripe.pay(session_id)
            body = fake_stripe.event(session_id)

            first = await webhook(anonymous, body, sign(body, SECRET))
            again = await webhook(anonymous, body, sign(body, SECRET))
            for _ in range(100):
                shown = (await user.get(f"/v1/topups/{order['order_id']}")).json()
                if shown["ledger_entry_id"]:
                    break
                await asyncio.sleep(0.05)

    assert created.status_code == 201
    assert (first.status_code, first.json()["outcome"]) == (200, "accepted")
    assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
    assert shown["status"] == "succeeded"
    assert shown["status_text"] == "Credited: 12 RB added to Routed balance"
    assert shown["ledger_entry_id"]
    assert await credits_of(system, account_id) == {order["order_id"]: 1}


async def test_forged_stale_and_future_webhooks_get_400_and_unknown_providers_404(
    system: System, card_gateway: str, fake_stripe: FakeStripe
) -> None:
    account_id, key = await system.new_account(credit=0, routed=0)
    async with httpx.AsyncClient(
        base_url=card_gateway, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as http:
        order = (
            await http.post(
                "/v1/topups", json={"bucket": "credit", "provider": "stripe", "amount": "5.00"}
            )
        ).json()
        session_id = order["checkout_url"].rsplit("/", 1)[-1]
        fake_stripe.pay(session_id)
        body = fake_stripe.event(session_id)
        now = int(time.time())
        answers = [
            await webhook(http, body, sign(body, "whsec_forged")),
            await webhook(http, body, sign(body, SECRET, now - 600)),
            await webhook(http, body, sign(body, SECRET, now + 600)),
            await webhook(http, body + b" ", sign(body, SECRET)),
        ]
        unknown = await http.post("/webhooks/payments/paypal", content=b"{}")
        after = (await http.get(f"/v1/topups/{order['order_id']}")).json()

    assert [a.status_code for a in answers] == [400, 400, 400, 400]
    assert all(a.json()["error"]["message"].startswith("Stripe webhook refused") for a in answers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert after["status"] == "pending"
    await asyncio.sleep(0.3)
    assert await credits_of(system, account_id) == {}


async def test_a_hundred_paid_webhooks_racing_the_sweeper_leave_one_final_state_each(
    system: System, card_gateway: str, fake_stripe: FakeStripe
) -> None:
    """Each order ends succeeded (credited exactly once) or, when the sweeper won,
    expired and then waiting for review (never credited)."""
    account_id, key = await system.new_account(credit=0, routed=0)
    async with httpx.AsyncClient(
        base_url=card_gateway,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        # Idle connections are dropped before uvicorn closes them (its keep-alive: 5 s).
        limits=httpx.Limits(max_connections=50, keepalive_expiry=1.0),
    ) as http:
        created = await asyncio.gather(
            *(
                http.post(
                    "/v1/topups",
                    json={"bucket": "credit", "provider": "stripe", "amount": "1.00"},
                    headers={"Idempotency-Key": f"race-{account_id}-{i}"},
                )
                for i in range(100)
            )
        )
        orders = [c.json() for c in created]
        assert all(c.status_code == 201 for c in created)
        rng = random.Random(4)

        # A third well before the expiry, a third right at it (the race), a third after.
        offsets = [(-2.5, rng.uniform(-0.1, 0.1), 0.5)[i % 3] for i in range(len(orders))]

        async def pay_near_expiry(order: dict[str, Any], offset: float) -> httpx.Response:
            session_id = order["checkout_url"].rsplit("/", 1)[-1]
            fake_stripe.pay(session_id)
            body = fake_stripe.event(session_id)
            expires = datetime.fromisoformat(order["expires_at"].replace("Z", "+00:00"))
            at = expires + timedelta(seconds=offset)
            await asyncio.sleep(max((at - datetime.now(UTC)).total_seconds(), 0))
            return await webhook(http, body, sign(body, SECRET))

        answers = await asyncio.gather(
            *(pay_near_expiry(o, d) for o, d in zip(orders, offsets, strict=True))
        )
        assert [a.status_code for a in answers] == [200] * len(answers), [
            a.text for a in answers if a.status_code != 200
        ][:3]
        final = {
            o["order_id"]: (await http.get(f"/v1/topups/{o['order_id']}")).json() for o in orders
        }

    paid = {i for i, o in final.items() if o["status"] == "succeeded"}
    reviewed = {i for i, o in final.items() if o["status"] == "awaiting_review"}
    assert paid | reviewed == set(final)
    assert paid and reviewed, f"{len(paid)} paid, {len(reviewed)} reviewed: no race happened"
    for order in final.values():
        trail = [t["to"] for t in order["transitions"]]
        assert trail in (["succeeded"], ["expired", "awaiting_review"], ["awaiting_review"])
    credits: dict[str, int] = {}
    for _ in range(100):
        credits = await credits_of(system, account_id)
        if len(credits) >= len(paid):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # anything extra would have arrived by now
    credits = await credits_of(system, account_id)
    assert credits == dict.fromkeys(paid, 1)
