"""The user console in the glossary's words (issue 19), in headless Chromium against
`tokenforge dev`: nothing but sign-in while signed out; channel health as words; every
top-up with paging, a pending one continued and paid, and what a credited one paid
for; a distinct look for expired and failed; a ledger link that opens a row older than
the newest 50; keys with restrictions; the research page's text current."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import shot


def user_api(dev: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=dev["gateway_url"],
        headers={"authorization": f"Bearer {dev['api_key']}"},
        timeout=10,
    )


def operator_api(dev: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=dev["gateway_url"],
        headers={
            "authorization": f"Bearer {dev['admin_token']}",
            "x-tokenforge-operator": "browser test",
        },
        timeout=10,
    )


def test_signed_out_the_console_shows_nothing_but_sign_in(
    browser: Any, dev: dict[str, Any]
) -> None:
    tab = browser.new_page()
    tab.goto(dev["gateway_url"] + "/console#/wallet")
    expect(tab.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(tab.locator("#nav")).to_be_hidden()
    expect(tab.locator("#sign-out")).to_be_hidden()
    expect(tab.get_by_role("link", name="Wallet")).to_be_hidden()
    tab.close()


def test_models_show_each_channels_health_in_words(page: Any) -> None:
    page.get_by_role("link", name="Models").click()
    table = page.locator('[data-testid="health-official"]').first
    expect(table).to_contain_text("mock-primary")
    expect(table.locator("td.circuit").first).to_have_text("Healthy")
    expect(page.locator("#models")).not_to_contain_text("{")
    shot(page, "models-health")


def test_every_topup_pages_a_pending_one_continues_and_a_credited_one_shows_what_it_paid_for(
    page: Any, dev: dict[str, Any]
) -> None:
    with user_api(dev) as http:
        orders = [
            http.post(
                "/v1/topups", json={"bucket": "credit", "provider": "sandbox", "amount": "1.00"}
            ).json()
            for _ in range(11)
        ]
    pending = orders[-1]
    page.goto(dev["gateway_url"] + "/console#/topup")
    items = page.locator("#all-topups li[data-order]")
    expect(items).to_have_count(10)
    page.get_by_role("button", name="Older top-ups").click()
    expect(items).to_have_count(11)
    shot(page, "topups-all")

    item = page.locator(f'#all-topups li[data-order="{pending["order_id"]}"]')
    item.get_by_role("link", name="Continue paying").click()
    state = page.locator('[data-testid="order-state"]')
    expect(state).to_contain_text("Waiting for payment")
    page.get_by_role("button", name="Pay (sandbox)").click()
    expect(state).to_have_text("Credited: 1 CR added to Credit")

    chat = httpx.post(
        dev["gateway_url"] + "/v1/chat/completions",
        headers={"authorization": f"Bearer {dev['api_key']}"},
        json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert chat.status_code == 200
    page.goto(dev["gateway_url"] + "/console#/topup")
    link = page.locator(f'#all-topups li[data-order="{pending["order_id"]}"]').get_by_role(
        "link", name="What it paid for"
    )
    link.click()
    uses = page.locator("#topup-uses")
    expect(uses).to_contain_text(f"What top-up {pending['order_id']} paid for")
    expect(uses.locator('[data-testid="uses-left"]')).to_contain_text("CR")
    shot(page, "topup-uses")


def test_expired_and_failed_orders_look_different(page: Any, dev: dict[str, Any]) -> None:
    with user_api(dev) as http:
        ids = []
        for outcome in ("expire", "fail"):
            order = http.post(
                "/v1/topups", json={"bucket": "routed", "provider": "sandbox", "amount": "2.00"}
            ).json()
            http.post(f"/v1/topups/{order['order_id']}/sandbox", json={"outcome": outcome})
            ids.append(order["order_id"])
    page.goto(dev["gateway_url"] + "/console#/topup")
    looks = []
    for order_id, words in zip(ids, ("Expired before payment", "Payment failed"), strict=True):
        state = page.locator(f'#all-topups li[data-order="{order_id}"] .state')
        expect(state).to_contain_text(words)
        looks.append(state.evaluate("e => getComputedStyle(e).color"))
    assert looks[0] != looks[1]


def test_a_ledger_link_opens_a_row_older_than_the_newest_fifty(
    page: Any, dev: dict[str, Any]
) -> None:
    with operator_api(dev) as http:
        first = http.post(
            f"/v1/operator/accounts/{dev['account_id']}/adjust",
            json={"bucket": "routed", "amount": "0.01", "reason": "the row to find"},
        ).json()
        for n in range(55):
            http.post(
                f"/v1/operator/accounts/{dev['account_id']}/adjust",
                json={"bucket": "routed", "amount": "0.000001", "reason": f"filler {n}"},
            )
    page.goto(dev["gateway_url"] + f"/console#/wallet/entry/{first['entry_id']}")
    row = page.locator("#ledger tr.highlight")
    expect(row).to_have_attribute("data-entry", first["entry_id"])
    expect(row).to_contain_text("0.01 RB")
    expect(page.get_by_role("link", name="Back to the newest rows")).to_be_visible()
    page.get_by_role("link", name="Back to the newest rows").click()
    expect(page.locator("#ledger tbody tr")).to_have_count(50)
    page.get_by_role("button", name="Older rows").click()
    expect(page.locator("#ledger tbody tr").first).not_to_contain_text("filler 54")


def test_a_key_is_created_with_restrictions(page: Any) -> None:
    page.get_by_role("link", name="Keys").click()
    form = page.locator("#key-form")
    form.get_by_label("Name").fill("restricted key")
    form.get_by_label("Only these models").fill("demo-chat")
    form.get_by_label("routed (paid from the Routed balance)").check()
    form.get_by_label("Only from these IP addresses").fill("127.0.0.1")
    form.get_by_label("Daily spend cap on the Routed balance (RB)").fill("2.5")
    form.get_by_label("Expires").fill("2031-01-02T03:04")
    form.get_by_role("button", name="Create key").click()
    expect(page.locator('[data-testid="new-key"]')).to_be_visible()
    row = page.locator("#keys tr", has_text="restricted key")
    expect(row).to_contain_text("models: demo-chat")
    expect(row).to_contain_text("routes: routed")
    expect(row).to_contain_text("only from: 127.0.0.1")
    expect(row).to_contain_text("Routed balance per day: 2.5 RB")
    expect(row).to_contain_text("expires")
    shot(page, "keys-restricted")


def test_the_research_page_says_how_a_report_is_charged_today(page: Any) -> None:
    page.get_by_role("link", name="Research").click()
    expect(page.locator("#page-research")).to_contain_text(
        "with a ledger row and a receipt of its own"
    )


def test_a_receipt_names_what_paid_for_it(page: Any, dev: dict[str, Any]) -> None:
    chat = httpx.post(
        dev["gateway_url"] + "/v1/chat/completions",
        headers={"authorization": f"Bearer {dev['api_key']}"},
        json={"model": "demo-chat", "messages": [{"role": "user", "content": "who paid?"}]},
        timeout=10,
    )
    request_id = chat.headers["x-request-id"]
    with user_api(dev) as http:
        paid = http.get(f"/v1/usage/{request_id}/paid-from").json()
    page.goto(dev["gateway_url"] + f"/console#/usage/{request_id}")
    named = page.locator('[data-testid="receipt-paid-from"]')
    expect(named).to_contain_text(paid["data"][0]["used"]["display"])
    assert sum(p["used"]["micros"] for p in paid["data"]) == paid["charge"]["micros"] > 0
