"""The web console at /console, driven in headless Chromium against `tokenforge dev`:
sign in, both balances, a sandbox top-up followed live until paid, a streamed playground
request whose receipt leads to its ledger row, usage, models, and API keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in


def api(dev: dict[str, Any], key: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=dev["gateway_url"],
        headers={"authorization": f"Bearer {key or dev['api_key']}"},
        timeout=10,
    )


def posted(dev: dict[str, Any]) -> dict[str, int]:
    with api(dev) as http:
        return {
            b["bucket"]: b["posted"]["micros"] for b in http.get("/v1/wallet").json()["balances"]
        }


def test_console_is_served_without_the_openapi_schema_and_keeps_the_key_out_of_urls(
    browser: Any, dev: dict[str, Any]
) -> None:
    answer = httpx.get(dev["gateway_url"] + "/console")
    assert answer.status_code == 200 and "<title>tokenforge console</title>" in answer.text
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert not any(
        p.startswith("/console")
        for p in httpx.get(dev["gateway_url"] + "/openapi.json").json()["paths"]
    )

    context = browser.new_context()
    tab = context.new_page()
    seen: list[str] = []
    tab.on("request", lambda request: seen.append(request.url))
    tab.goto(dev["gateway_url"] + "/console")
    shot(tab, "signin")
    tab.get_by_label("API key", exact=True).fill("tf_not_a_real_key")
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.locator("#signin-error")).to_contain_text("This key cannot sign in")

    sign_in(tab, dev)
    stored = tab.evaluate(
        "() => [sessionStorage.getItem('tokenforge.apiKey'), localStorage.length]"
    )
    assert stored == [dev["api_key"], 0]
    assert seen and not any(dev["api_key"] in url for url in seen)
    assert dev["api_key"] not in tab.url
    context.close()


def top(card: Any) -> float:
    """Where the card's box starts, once it is laid out: the page may render the
    wallet again meanwhile (a box is None while its element is being replaced)."""
    for _ in range(100):
        expect(card).to_be_visible()
        box = card.bounding_box()
        if box is not None:
            return float(box["y"])
        card.page.wait_for_timeout(20)
    raise AssertionError("the card never got a box")


def test_wallet_shows_both_buckets_side_by_side_with_their_words(
    page: Any, dev: dict[str, Any]
) -> None:
    credit = page.locator('[data-bucket="credit"]')
    routed = page.locator('[data-bucket="routed"]')
    expect(credit.get_by_role("heading")).to_have_text("Credit (CR)")
    expect(routed.get_by_role("heading")).to_have_text("Routed balance (RB)")
    for card in (credit, routed):
        expect(card).to_contain_text("Held for your requests in progress")
        expect(card).to_contain_text("Set aside for fast serving")
        expect(card).to_contain_text("Available to spend")
        expect(card).to_contain_text("Pays for")
    expect(page.locator('[data-testid="posted-credit"]')).to_contain_text(" CR")
    expect(page.get_by_role("heading", name="Latest top-ups")).to_be_visible()
    expect(page.locator("#ledger tbody tr").first).to_contain_text("Adjustment")
    # Side by side on a laptop: both cards on one row.
    assert top(credit) == top(routed)
    shot(page, "wallet")

    page.set_viewport_size({"width": 390, "height": 844})
    assert top(routed) > top(credit)  # stacked on a phone
    shot(page, "wallet-phone")


def test_sandbox_topup_is_followed_live_until_paid_and_grows_the_chosen_bucket(
    page: Any, dev: dict[str, Any]
) -> None:
    before = posted(dev)
    page.get_by_role("link", name="Top up").first.click()
    page.get_by_role("radio", name=re.compile("^Routed balance")).check()
    page.get_by_label("Top-up amount (USD)").fill("7.00")
    page.get_by_role("button", name="Create order").click()
    state = page.locator('[data-testid="order-state"]')
    expect(state).to_contain_text(re.compile(r"Waiting for payment \(expires in \d+ min\)"))
    expect(page.locator("#topup-order")).to_contain_text("7 RB to Routed balance")
    shot(page, "topup-pending")

    page.get_by_role("button", name="Pay (sandbox)").click()
    expect(state).to_have_text("Credited: 7 RB added to Routed balance")
    expect(
        page.locator("#topup-order").get_by_role("link", name=re.compile("^\\+?7 RB"))
    ).to_be_visible()
    shot(page, "topup-paid")

    after = posted(dev)
    assert after["routed"] == before["routed"] + 7_000_000
    assert after["credit"] == before["credit"]

    page.locator("#topup-order").get_by_role("link").click()
    expect(page.locator("#ledger tr.highlight")).to_contain_text("Top-up credit")
    expect(page.locator("#ledger tr.highlight")).to_contain_text("7 RB")
    expect(page.locator("#latest-topups li").first).to_contain_text(
        "Credited: 7 RB added to Routed balance"
    )


def test_a_sandbox_topup_left_to_expire_says_nothing_was_charged(page: Any) -> None:
    page.get_by_role("link", name="Top up").first.click()
    page.get_by_role("button", name="Create order").click()
    page.get_by_role("button", name="Let it expire (sandbox)").click()
    expect(page.locator('[data-testid="order-state"]')).to_have_text(
        "Expired before payment: nothing was charged, no balance added"
    )
    expect(page.get_by_role("button", name="Pay (sandbox)")).to_have_count(0)


def test_a_bank_transfer_waits_for_review_after_its_reference_is_sent(page: Any) -> None:
    page.get_by_role("link", name="Top up").first.click()
    page.get_by_label("Payment provider").select_option("manual_transfer")
    page.get_by_role("button", name="Create order").click()
    state = page.locator('[data-testid="order-state"]')
    expect(state).to_contain_text("Waiting for payment")
    expect(page.get_by_role("button", name="Pay (sandbox)")).to_have_count(0)
    page.get_by_label("Your bank transfer's reference").fill("BANK-REF-42")
    page.get_by_role("button", name="I have sent the transfer").click()
    expect(state).to_have_text("Waiting for review: we received your transfer details")
    shot(page, "topup-review")


def test_a_pending_order_can_be_canceled_and_adds_nothing(page: Any) -> None:
    page.get_by_role("link", name="Top up").first.click()
    page.get_by_role("button", name="Create order").click()
    page.get_by_role("button", name="Cancel order").click()
    expect(page.locator('[data-testid="order-state"]')).to_have_text(
        "Canceled: no balance was added"
    )


def test_models_page_is_a_marketplace_of_routes_and_the_bucket_that_pays(page: Any) -> None:
    page.get_by_role("link", name="Models").click()
    card = page.locator("article", has=page.get_by_role("heading", name="Demo chat"))
    expect(card).to_contain_text("demo-chat@official")
    expect(card).to_contain_text("demo-chat@routed")
    expect(card.locator(".route").first).to_contain_text("paid from Credit")
    expect(card).to_contain_text("2.5 CR / 1M tokens")
    expect(card).to_contain_text("4 RB / 1M tokens")
    shot(page, "models")


def test_playground_streams_an_answer_then_shows_its_receipt_and_ledger_row(
    page: Any, dev: dict[str, Any]
) -> None:
    page.get_by_role("link", name="Playground").click()
    playground = page.locator("#page-playground")
    playground.get_by_label("Model", exact=True).select_option("demo-chat")
    playground.get_by_label("Route", exact=True).select_option("routed")
    expect(page.locator('[data-testid="preview-bucket"]')).to_have_text("Routed balance")
    expect(page.locator('[data-testid="preview-route"]')).to_have_text("routed")
    expect(page.locator('[data-testid="preview-worst"]')).to_contain_text("RB")
    expect(page.locator("#chat-preview")).to_contain_text("Available")

    page.get_by_role("button", name="Send").click()
    receipt = page.locator("#chat-receipt")
    expect(receipt.locator('[data-testid="receipt-charge"]')).to_contain_text("RB")
    assert page.locator("#chat-answer").inner_text().strip()
    expect(receipt).to_contain_text("mock-gpt-routed")
    expect(receipt.locator('[data-testid="receipt-bucket"]')).to_have_text("Routed balance")
    expect(receipt).to_contain_text("Fallback used")
    shot(page, "playground")

    request_id = receipt.locator("[data-request]").get_attribute("data-request")
    with api(dev) as http:
        full = http.get(f"/v1/usage/{request_id}").json()
    charge = receipt.locator('[data-testid="receipt-charge"]').inner_text()
    assert charge == full["charge"]["display"]

    receipt.locator('[data-testid="receipt-ledger-link"]').click()
    row = page.locator("#ledger tr.highlight")
    expect(row).to_contain_text("Request charge")
    assert row.get_attribute("data-entry") == full["ledger_entry_id"]
    expect(row).to_contain_text("-" + full["charge"]["display"])

    row.get_by_role("link", name="Receipt").click()
    detail = page.locator("#receipt-detail")
    expect(detail).to_contain_text(request_id)
    expect(page.locator(f'#receipts tr[data-request="{request_id}"]')).to_be_visible()
    expect(page.locator("#usage-charts svg").first).to_be_visible()
    shot(page, "usage")

    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    assert request_id in Path(download.value.path()).read_text()

    filters = page.locator("#usage-filters")
    filters.get_by_label("Route", exact=True).select_option("official")
    filters.get_by_role("button", name="Apply").click()
    expect(page.locator(f'#receipts tr[data-request="{request_id}"]')).to_have_count(0)
    filters.get_by_label("Route", exact=True).select_option("")
    filters.get_by_label("Balance", exact=True).select_option("routed")
    filters.get_by_role("button", name="Apply").click()
    expect(page.locator(f'#receipts tr[data-request="{request_id}"]')).to_be_visible()


def test_a_key_created_in_the_console_works_until_it_is_revoked(
    page: Any, dev: dict[str, Any]
) -> None:
    page.get_by_role("link", name="Keys").click()
    page.locator("#key-form").get_by_label("Name", exact=True).fill("browser test key")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator('[data-testid="new-key"]').input_value()
    assert secret.startswith("tf_")
    expect(page.locator("#key-created")).to_contain_text("shown only once")
    with api(dev, secret) as http:
        assert http.get("/v1/models").status_code == 200
    row = page.locator("#keys tr", has_text="browser test key")
    expect(row).to_contain_text("inference, wallet_read")
    expect(row).to_contain_text("Active")
    shot(page, "keys")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke browser test key").click()
    expect(row).to_contain_text("Revoked")
    with api(dev, secret) as http:
        assert http.get("/v1/models").status_code == 401
