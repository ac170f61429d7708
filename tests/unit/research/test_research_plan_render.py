"""The research assistant's pure parts: the plan, the requests, the text it shows."""

from __future__ import annotations

import pytest

from apps.research import render
from apps.research.plan import DISCLAIMER, plan_report
from services.gateway.domain.runs import Estimate, parse_budget, parse_estimate
from tokenforge.errors import DomainError
from tokenforge.money import Bucket, Price


def test_a_plan_has_the_sections_asked_for_each_a_capped_chat_request() -> None:
    plan = plan_report("  Gold   miners ", "demo-chat@routed", sections=3, max_tokens=80)
    assert plan.topic == "Gold miners"
    assert [s.title for s in plan.sections][:2] == ["Overview", "Market structure and participants"]
    body = plan.request(plan.sections[1])
    assert body["model"] == "demo-chat@routed" and body["max_tokens"] == 80
    assert "Gold miners" in body["messages"][1]["content"]
    with pytest.raises(ValueError):
        plan_report("", sections=2)
    with pytest.raises(ValueError):
        plan_report("x", sections=99)


def test_the_report_says_it_is_not_financial_advice_and_keeps_section_order() -> None:
    plan = plan_report("Rates", sections=2)
    text = render.report(plan, ["first", "second"])
    assert text.count(DISCLAIMER) == 2
    assert text.index("## 1. Overview") < text.index("first") < text.index("## 2.")


def test_the_receipt_text_shows_lines_totals_and_the_ledger_row() -> None:
    money = {"micros": 1, "display": "0.000001 CR"}
    text = render.receipt(
        {
            "run": {"id": "run_1", "status": "closed", "bucket_label": "Credit", "budget": money},
            "lines": [
                {
                    "request_id": "r1",
                    "model": "demo-chat",
                    "status": "succeeded",
                    "prompt_tokens": 5,
                    "completion_tokens": 7,
                    "charge": money,
                    "ledger_entry_id": "e1",
                }
            ],
            "models": [{"model": "demo-chat", "requests": 1, "charge": money}],
            "totals": {
                "requests": 1,
                "prompt_tokens": 5,
                "completion_tokens": 7,
                "charge": money,
                "duration_ms": 1500,
            },
            "ledger_entry_id": None,
        }
    )
    assert "r1" in text and "Total: 1 requests" in text
    assert "Ledger rows: 1, one per request: e1" in text


def test_a_run_budget_is_an_exact_decimal_or_an_estimate_of_worst_cases() -> None:
    assert parse_budget("2.5", Bucket.CREDIT) == 2_500_000
    for bad in (2.5, "-1", "0", "1.0000001"):
        with pytest.raises(DomainError):
            parse_budget(bad, Bucket.CREDIT)
    price = Price(Bucket.CREDIT, 2_500_000, 10_000_000)
    estimate = parse_estimate({"requests": 3, "prompt_tokens": 100, "max_tokens": 200})
    assert estimate == Estimate(3, 100, 200)
    assert estimate.per_request(price) == 2250 and estimate.budget(price) == 6750
    with pytest.raises(DomainError):
        parse_estimate({"requests": 0, "prompt_tokens": 1, "max_tokens": 1})
