"""The operator console at /console/operator, in headless Chromium against `tokenforge
dev`: only sign-in while signed out; the review queue (a bank transfer approved from the
console grows the user's balance once); account lookup with an adjustment and its
reversal; the catalog's versions, a diff and an apply; channel health; reconciliation;
finishes waiting; and the audit log naming who did each action and why. Screenshots of
every page land in tests/browser/screenshots/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot

OPERATOR = "Ada Operator"


def user_api(dev: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=dev["gateway_url"],
        headers={"authorization": f"Bearer {dev['api_key']}"},
        timeout=10,
    )


def posted(dev: dict[str, Any]) -> dict[str, int]:
    with user_api(dev) as http:
        return {
            b["bucket"]: b["posted"]["micros"] for b in http.get("/v1/wallet").json()["balances"]
        }


@pytest.fixture
def op(browser: Any, dev: dict[str, Any]) -> Iterator[Any]:
    """A fresh tab signed in to the operator console."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(dev["gateway_url"] + "/console/operator")
    tab.get_by_label("Your name").fill(OPERATOR)
    tab.get_by_label("Operator credential").fill(dev["admin_token"])
    tab.get_by_role("button", name="Sign in").click()
    tab.get_by_role("heading", name="Review queue", level=1).wait_for()
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"JavaScript errors in the operator console: {errors}"


def test_signed_out_shows_only_sign_in_and_an_api_key_is_not_the_operator_credential(
    browser: Any, dev: dict[str, Any]
) -> None:
    tab = browser.new_page()
    tab.goto(dev["gateway_url"] + "/console/operator")
    expect(tab.get_by_role("heading", name="Operator sign in")).to_be_visible()
    expect(tab.locator("#nav")).to_be_hidden()
    expect(tab.locator("#sign-out")).to_be_hidden()
    shot(tab, "operator-signin")
    tab.get_by_label("Your name").fill(OPERATOR)
    tab.get_by_label("Operator credential").fill(dev["api_key"])
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.locator("#signin-error")).to_contain_text("operator credential")
    expect(tab.locator("#nav")).to_be_hidden()
    tab.close()


def test_a_bank_transfer_approved_from_the_console_grows_the_balance_once(
    op: Any, dev: dict[str, Any]
) -> None:
    with user_api(dev) as http:
        order = http.post(
            "/v1/topups",
            json={"bucket": "credit", "provider": "manual_transfer", "amount": "4.00"},
        ).json()
        http.post(
            f"/v1/topups/{order['order_id']}/proof", json={"transfer_reference": "BANK-REF-42"}
        )
    before = posted(dev)
    op.reload()
    item = op.locator(f'li[data-order="{order["order_id"]}"]')
    expect(item).to_contain_text("BANK-REF-42")
    expect(item).to_contain_text("Waiting for review")
    shot(op, "operator-reviews")

    item.get_by_label("Reason").first.fill("transfer seen on the bank statement")
    item.get_by_role("button", name="Approve").click()
    expect(op.locator("#flash")).to_contain_text(f"Approved order {order['order_id']}")
    expect(item).to_have_count(0)

    received = order["received_balance"]["micros"]
    deadline = time.monotonic() + 10
    while posted(dev)["credit"] == before["credit"] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # a second credit, were there one, would have landed by now
    after = posted(dev)
    assert after["credit"] == before["credit"] + received
    with user_api(dev) as http:
        shown = http.get(f"/v1/topups/{order['order_id']}").json()
        credits = http.get("/v1/wallet/ledger", params={"order_id": order["order_id"]}).json()
    assert shown["state"] == "credited"
    assert len(credits["data"]) == 1

    op.get_by_role("link", name="Audit log").click()
    row = op.locator("#audit tr", has_text="review.approve")
    expect(row).to_contain_text(OPERATOR)
    expect(row).to_contain_text("transfer seen on the bank statement")
    expect(row).to_contain_text("done")
    shot(op, "operator-audit")


def test_account_lookup_adjusts_and_reverses_with_reasons_in_the_audit_log(
    op: Any, dev: dict[str, Any]
) -> None:
    before = posted(dev)
    op.get_by_role("link", name="Accounts").click()
    op.get_by_label("Account id").fill(dev["account_id"])
    op.get_by_role("button", name="Look up").click()
    expect(op.get_by_role("heading", name=f"Account {dev['account_id']}")).to_be_visible()
    for words in ("Held for requests in progress", "Set aside for fast serving", "Ledger"):
        expect(op.locator("#account")).to_contain_text(words)

    adjust = op.locator('[data-testid="adjust"]')
    adjust.get_by_label("Balance").select_option("routed")
    adjust.get_by_label("Amount").fill("1.5")
    adjust.get_by_label("Reason").fill("goodwill credit for an outage")
    adjust.get_by_role("button", name="Adjust").click()
    expect(op.locator("#flash")).to_contain_text("Adjustment written")
    assert posted(dev)["routed"] == before["routed"] + 1_500_000
    newest = op.locator("#account tr[data-entry]").first
    expect(newest).to_contain_text("Adjustment")
    expect(newest).to_contain_text("1.5 RB")
    shot(op, "operator-account")

    newest.get_by_label("Reason").fill("entered twice by mistake")
    newest.get_by_role("button", name="Reverse").click()
    expect(op.locator("#flash")).to_contain_text("Reversed ledger row")
    assert posted(dev)["routed"] == before["routed"]
    expect(op.locator("#account tr[data-entry]").first).to_contain_text("Reversal")

    op.get_by_role("link", name="Audit log").click()
    expect(op.locator("#audit tr", has_text="wallet.adjust")).to_contain_text(
        "goodwill credit for an outage"
    )
    expect(op.locator("#audit tr", has_text="wallet.reverse")).to_contain_text(
        "entered twice by mistake"
    )


def test_catalog_versions_diff_and_apply(op: Any) -> None:
    op.get_by_role("link", name="Catalog").click()
    expect(op.locator("#catalog-versions")).to_contain_text("Running version")
    yaml = op.locator("#catalog-yaml")
    expect(yaml).not_to_have_value("")
    op.get_by_role("button", name="Show the difference").click()
    expect(op.locator("#catalog-diff-out")).to_have_text("No difference from the running catalog.")

    yaml.fill(yaml.input_value() + "# reviewed by the operator console test\n")
    op.get_by_role("button", name="Show the difference").click()
    expect(op.locator("#catalog-diff-out")).to_contain_text(
        "+# reviewed by the operator console test"
    )
    shot(op, "operator-catalog-diff")
    op.get_by_label("Reason").fill("note who reviewed it")
    op.get_by_role("button", name="Apply").click()
    expect(op.locator("#flash")).to_contain_text("applied")
    expect(op.locator("#catalog-versions tbody tr").first).to_contain_text(OPERATOR)
    shot(op, "operator-catalog")


def test_health_reconciliation_and_finishes_read_as_words(op: Any) -> None:
    op.get_by_role("link", name="Channel health").click()
    expect(op.locator("#health")).to_contain_text("demo-chat · official")
    expect(op.locator("#health")).to_contain_text("mock-primary")
    expect(op.locator("#health td.circuit").first).to_contain_text("(closed)")
    shot(op, "operator-health")

    op.get_by_role("link", name="Reconciliation").click()
    op.get_by_role("button", name="Run the reconciliations").click()
    expect(op.locator('[data-testid="reconcile-result"]')).to_have_text(
        "OK: every money rule holds"
    )
    expect(op.locator('[data-testid="reconcile-usage"]')).to_contain_text("receipts")
    shot(op, "operator-reconcile")

    op.get_by_role("link", name="Finishes waiting").click()
    expect(op.locator('[data-testid="finishes-waiting"]')).to_contain_text("finishes waiting")
    expect(op.locator('[data-testid="charges-not-collected"]')).to_contain_text(
        "Charges not collected"
    )
    shot(op, "operator-finishes")
