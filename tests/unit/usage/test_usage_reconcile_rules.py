"""The receipt <-> ledger comparison, on made-up data with each kind of mismatch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.usage.domain.receipts import Receipt, ReceiptStatus
from services.usage.domain.reconcile import (
    EntryView,
    HoldState,
    HoldView,
    Problem,
    reconcile,
)
from services.usage.domain.runs import Run, RunStatus
from tokenforge.money import Bucket

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
CR = Bucket.CREDIT


def hold(hid: str, captured: int, status: HoldState = HoldState.SETTLED, **kw: object) -> HoldView:
    values: dict[str, object] = {
        "hold_id": hid,
        "account_id": "a",
        "bucket": CR,
        "amount_micros": 1000,
        "captured_micros": captured,
        "status": status,
        "request_id": f"req-{hid}",
        "entry_id": f"e-{hid}" if captured else "",
    }
    values.update(kw)
    return HoldView(**values)  # type: ignore[arg-type]


def receipt(hid: str, charge: int, **kw: object) -> Receipt:
    values: dict[str, object] = {
        "request_id": f"req-{hid}",
        "account_id": "a",
        "status": ReceiptStatus.SUCCEEDED,
        "bucket": CR,
        "charge_micros": charge,
        "hold_id": hid,
        "entry_id": f"e-{hid}" if charge else "",
        "finished_at": NOW,
    }
    values.update(kw)
    return Receipt(**values)  # type: ignore[arg-type]


def entry(hid: str, amount: int, **kw: object) -> EntryView:
    values: dict[str, object] = {
        "entry_id": f"e-{hid}",
        "account_id": "a",
        "bucket": CR,
        "amount_micros": -amount,
        "request_id": f"req-{hid}",
        "hold_id": hid,
    }
    values.update(kw)
    return EntryView(**values)  # type: ignore[arg-type]


def problems(report: object) -> list[tuple[Problem, str]]:
    return [(m.problem, m.subject) for m in report.mismatches]  # type: ignore[attr-defined]


def test_matching_holds_receipts_and_ledger_rows_reconcile() -> None:
    report = reconcile(
        [hold("h1", 300), hold("h2", 0, HoldState.RELEASED), hold("h3", 0, HoldState.OPEN)],
        [receipt("h1", 300), receipt("h2", 0, status=ReceiptStatus.FAILED)],
        [entry("h1", 300)],
    )
    assert report.ok, report.mismatches
    assert (report.holds_checked, report.receipts_checked, report.entries_checked) == (2, 2, 1)


def test_an_ended_hold_without_a_receipt_is_reported() -> None:
    report = reconcile([hold("h1", 0, HoldState.RELEASED)], [], [])
    assert problems(report) == [(Problem.HOLD_WITHOUT_RECEIPT, "h1")]


def test_a_hold_with_two_receipts_is_reported() -> None:
    report = reconcile(
        [hold("h1", 0, HoldState.RELEASED)],
        [receipt("h1", 0), receipt("h1", 0, request_id="req-other")],
        [],
    )
    assert problems(report) == [(Problem.HOLD_WITH_SEVERAL_RECEIPTS, "h1")]


def test_a_receipt_charging_other_than_the_hold_captured_is_reported() -> None:
    report = reconcile([hold("h1", 300)], [receipt("h1", 250)], [entry("h1", 300)])
    assert (Problem.CHARGE_DIFFERS_FROM_HOLD, "h1") in problems(report)


def test_a_captured_hold_without_its_ledger_row_is_reported() -> None:
    report = reconcile([hold("h1", 300)], [receipt("h1", 300)], [])
    assert problems(report) == [
        (Problem.HOLD_WITHOUT_LEDGER_ENTRY, "h1"),
        (Problem.RECEIPT_WITHOUT_LEDGER_ENTRY, "req-h1"),
    ]


def test_a_ledger_row_of_another_amount_is_reported() -> None:
    report = reconcile([hold("h1", 300)], [receipt("h1", 300)], [entry("h1", 301)])
    assert [p for p, _ in problems(report)] == [Problem.LEDGER_AMOUNT_DIFFERS] * 2


def test_a_ledger_row_in_another_bucket_is_reported() -> None:
    report = reconcile(
        [hold("h1", 300)], [receipt("h1", 300)], [entry("h1", 300, bucket=Bucket.ROUTED)]
    )
    assert {p for p, _ in problems(report)} == {Problem.LEDGER_AMOUNT_DIFFERS}


def test_a_ledger_row_no_receipt_names_is_reported() -> None:
    report = reconcile([], [], [entry("h9", 50)])
    assert problems(report) == [(Problem.LEDGER_ENTRY_WITHOUT_RECEIPT, "e-h9")]


def test_a_charged_receipt_on_an_expired_hold_is_reported() -> None:
    report = reconcile([hold("h1", 0, HoldState.EXPIRED)], [receipt("h1", 40, entry_id="")], [])
    assert (Problem.CHARGED_ON_EXPIRED_HOLD, "h1") in problems(report)
    assert (Problem.RECEIPT_WITHOUT_LEDGER_ENTRY, "req-h1") in problems(report)


def a_run(status: RunStatus, captured: int) -> Run:
    return Run(
        run_id="run_1",
        account_id="a",
        bucket=CR,
        budget_micros=1000,
        hold_id="hr",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
        spent_micros=captured,
        status=status,
        entry_id="e-hr" if captured else "",
        captured_micros=captured,
    )


def lines(*charges: int) -> list[Receipt]:
    return [
        receipt("hr", c, request_id=f"req-line-{i}", run_id="run_1", entry_id="")
        for i, c in enumerate(charges)
    ]


def test_a_closed_run_whose_lines_sum_to_its_one_ledger_row_reconciles() -> None:
    report = reconcile(
        [hold("hr", 500, request_id="run_1")],
        lines(200, 300),
        [entry("hr", 500, request_id="run_1")],
        [a_run(RunStatus.CLOSED, 500)],
    )
    assert report.ok, report.mismatches


def test_a_run_whose_lines_differ_from_its_settle_is_reported() -> None:
    report = reconcile(
        [hold("hr", 500, request_id="run_1")],
        lines(200, 200),
        [entry("hr", 500, request_id="run_1")],
        [a_run(RunStatus.CLOSED, 500)],
    )
    assert problems(report) == [(Problem.CHARGE_DIFFERS_FROM_HOLD, "hr")]


def test_an_open_runs_lines_wait_for_its_close() -> None:
    report = reconcile(
        [hold("hr", 0, HoldState.OPEN, request_id="run_1")],
        lines(200),
        [],
        [a_run(RunStatus.OPEN, 0)],
    )
    assert report.ok
