"""The research assistant writes a report on the mock upstream, on a run, and its
final receipt matches the ledger: one row per section's request."""

from __future__ import annotations

from pathlib import Path

from apps.research.plan import DISCLAIMER, plan_report
from apps.research.run import write_report
from tests.e2e.harness import System
from tests.e2e.test_usage_reconcile import assert_reconciled, balances, run_cli


async def test_research_report_completes_on_a_run_and_its_receipt_matches_the_ledger(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account(credit=2_000_000)
    shown: list[str] = []
    plan = plan_report("EUR/USD carry trade", "demo-chat", sections=3, max_tokens=60)
    async with system.http(key) as http:
        outcome = await write_report(http, plan, shown.append)
        ledger = (await http.get("/v1/wallet/ledger", params={"limit": 100})).json()
        after = await balances(http)

    charge = outcome.receipt["totals"]["charge"]["micros"]
    assert len(outcome.texts) == 3 and all(outcome.texts)
    assert DISCLAIMER in outcome.report and "## 3. Key drivers and indicators" in outcome.report
    assert "Sections:" in shown[0] and "Worst case" in shown[0] and "Available" in shown[0]
    assert [line.startswith(f"[{i}/3]") for i, line in enumerate(shown[1:4], 1)] == [True] * 3
    assert outcome.receipt["totals"]["requests"] == 3 and charge > 0
    # Each section's request has its own ledger row; the rows sum to the run's total.
    rows = {e["entry_id"]: e for e in ledger["data"] if e["kind"] == "request_charge"}
    lines = outcome.receipt["lines"]
    assert sorted(rows) == sorted(line["ledger_entry_id"] for line in lines)
    for line in lines:
        assert rows[line["ledger_entry_id"]]["request_id"] == line["request_id"]
        assert -rows[line["ledger_entry_id"]]["amount"]["micros"] == line["charge"]["micros"]
    assert sum(-e["amount"]["micros"] for e in rows.values()) == charge
    assert after["credit"]["posted"] == 2_000_000 - charge and after["credit"]["held"] == 0
    await assert_reconciled(system, tmp_path, account)


async def test_research_command_prints_plan_progress_report_and_receipt(
    system: System, tmp_path: Path
) -> None:
    _, key = await system.new_account(credit=2_000_000)
    code, text = await run_cli(
        [
            "research",
            "Copper supply outlook",
            "--sections",
            "2",
            "--max-tokens",
            "40",
            "--gateway-url",
            system.gateway_url,
            "--api-key",
            key,
            "--state-dir",
            str(tmp_path),
        ]
    )
    assert code == 0, text
    assert "[2/2]" in text and "Total: 2 requests" in text and DISCLAIMER in text
