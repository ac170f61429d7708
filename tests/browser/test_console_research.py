"""The console's Research page in headless Chromium against `tokenforge dev`: the plan
(the same sections and requests as `tokenforge research`), the estimate and balance
before, progress per section, and an aggregate receipt whose lines each match their
own ledger row and sum to the total."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import expect

from apps.research.plan import DISCLAIMER, SECTION_TITLES, plan_report
from tests.browser.conftest import shot


def api(dev: dict[str, Any]) -> httpx.Client:
    return httpx.Client(
        base_url=dev["gateway_url"],
        headers={"authorization": f"Bearer {dev['api_key']}"},
        timeout=10,
    )


def credit(dev: dict[str, Any]) -> dict[str, int]:
    with api(dev) as http:
        [b] = [b for b in http.get("/v1/wallet").json()["balances"] if b["bucket"] == "credit"]
    return {"posted": b["posted"]["micros"], "held": b["held"]["micros"]}


def test_the_console_plan_is_the_research_cli_plan(dev: dict[str, Any]) -> None:
    query = {"topic": "  Copper   supply ", "model": "demo-chat@routed", "sections": "5"}
    with api(dev) as http:
        served = http.get("/console/research/plan", params={**query, "max_tokens": "80"})
        empty = http.get("/console/research/plan", params={"topic": " "})
        too_many = http.get("/console/research/plan", params={"topic": "x", "sections": "9"})
    assert served.status_code == 200
    assert served.json() == plan_report("Copper supply", "demo-chat@routed", 5, 80).as_json()
    assert served.json()["disclaimer"] == DISCLAIMER
    assert empty.status_code == 400 and "topic is empty" in empty.json()["error"]["message"]
    assert too_many.status_code == 400 and "1 to 8 sections" in too_many.json()["error"]["message"]


def test_research_report_shows_plan_then_progress_then_a_receipt_whose_lines_are_ledger_rows(
    page: Any, dev: dict[str, Any]
) -> None:
    before = credit(dev)
    page.get_by_role("link", name="Research").click()
    research = page.locator("#page-research")
    expect(research.locator('[data-testid="research-disclaimer"]')).to_contain_text(
        "not financial advice"
    )
    research.get_by_label("Topic").fill("EUR/USD carry trade")
    research.get_by_label("Model", exact=True).select_option("demo-chat")
    research.get_by_label("Route", exact=True).select_option("official")
    research.get_by_label("Sections").fill("3")
    research.get_by_label("Max output tokens per section").fill("60")
    research.get_by_role("button", name="Show the plan").click()

    plan = page.locator("#research-plan")
    expect(plan.locator('[data-testid="research-sections"] li')).to_have_text(
        list(SECTION_TITLES[:3])
    )
    expect(plan.locator('[data-testid="research-route"]')).to_have_text("official")
    expect(plan.locator('[data-testid="research-bucket"]')).to_have_text("Credit")
    with api(dev) as http:
        preview = http.post(
            "/v1/routes/preview",
            json=plan_report("EUR/USD carry trade", "demo-chat@official", 3, 60).preview_request(),
        ).json()
    worst = preview["worst_case_cost"]["micros"]
    expect(plan.locator('[data-testid="research-worst"]')).to_contain_text(
        preview["worst_case_cost"]["display"]
    )
    expect(plan.locator('[data-testid="research-estimate"]')).to_contain_text(
        re.compile(rf"^{re.escape(_display(3 * worst))} CR for 3 sections")
    )
    expect(plan.locator('[data-testid="research-available"]')).to_have_text(
        preview["available"]["display"]
    )
    shot(page, "research-plan")
    assert credit(dev) == before  # nothing is held before the person confirms

    plan.get_by_role("button", name="Start the report").click()
    status = page.locator('[data-testid="research-status"]')
    expect(status).to_contain_text("Done: 3 sections written, run closed.", timeout=30_000)
    for index in (1, 2, 3):
        expect(page.locator(f'[data-testid="section-{index}"]')).to_contain_text(
            re.compile(r"^done: \d+ tokens, [0-9.]+ CR$")
        )
    report = page.locator("#research-report")
    expect(report).to_contain_text("3. Key drivers and indicators")
    expect(report.locator('[data-testid="research-report-disclaimer"]')).to_have_text(DISCLAIMER)
    for index in (1, 2, 3):
        assert page.locator(f'[data-section-text="{index}"]').inner_text().strip()

    receipt_panel = page.locator("#research-receipt")
    run_id = receipt_panel.locator('[data-testid="research-run"]').inner_text()
    expect(receipt_panel).to_contain_text(DISCLAIMER)
    shot(page, "research-receipt")
    with api(dev) as http:
        receipt = http.get(f"/v1/runs/{run_id}/receipt").json()
        ledger = http.get("/v1/wallet/ledger", params={"limit": 200}).json()["data"]
    charge = receipt["totals"]["charge"]["micros"]
    assert receipt["run"]["status"] == "closed" and receipt["totals"]["requests"] == 3
    assert sum(line["charge"]["micros"] for line in receipt["lines"]) == charge > 0
    assert charge <= 3 * worst
    # Each line's ledger row matches its receipt; the lines sum to the total.
    rows = {e["entry_id"]: e for e in ledger if e["kind"] == "request_charge"}
    for line in receipt["lines"]:
        row = rows[line["ledger_entry_id"]]
        assert row["request_id"] == line["request_id"]
        assert -row["amount"]["micros"] == line["charge"]["micros"]
    assert receipt["ledger_entry_id"] is None
    expect(receipt_panel.locator('[data-testid="research-charge"]')).to_have_text(
        receipt["totals"]["charge"]["display"]
    )
    expect(receipt_panel.locator('[data-testid="research-total"]')).to_have_text(
        receipt["totals"]["charge"]["display"]
    )
    expect(receipt_panel.locator('[data-testid="research-lines"] tbody tr')).to_have_count(3)
    # The hold is gone; only the report's charge left the balance.
    assert credit(dev) == {"posted": before["posted"] - charge, "held": before["held"]}

    expect(receipt_panel.locator('[data-testid="research-ledger-rows"]')).to_contain_text(
        "one per request"
    )
    first = receipt["lines"][0]
    receipt_panel.locator('[data-testid="research-line-ledger-link"]').first.click()
    highlighted = page.locator("#ledger tr.highlight")
    expect(highlighted).to_contain_text("Request charge")
    expect(highlighted).to_contain_text("-" + first["charge"]["display"])
    assert highlighted.get_attribute("data-entry") == first["ledger_entry_id"]


def test_research_that_cannot_be_planned_says_why_and_holds_nothing(
    page: Any, dev: dict[str, Any]
) -> None:
    before = credit(dev)
    page.get_by_role("link", name="Research").click()
    research = page.locator("#page-research")
    research.get_by_label("Topic").fill("   ")
    research.get_by_role("button", name="Show the plan").click()
    expect(page.locator("#flash")).to_contain_text("The topic is empty")
    expect(page.locator("#research-plan")).to_be_hidden()
    assert credit(dev) == before


def _display(micros: int) -> str:
    whole, frac = divmod(micros, 1_000_000)
    text = f"{frac:06d}".rstrip("0")
    return f"{whole}.{text}" if text else str(whole)
