"""The receipt <-> ledger comparison, on made-up data with each kind of mismatch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.usage.domain.receipts import Receipt, ReceiptStatus, RouteAttempt
from services.usage.domain.reconcile import (
    EntryView,
    HoldState,
    HoldView,
    Problem,
    reconcile,
)
from services.usage.domain.runs import Run, RunStatus
from tokenforge.holds import HOLD_IN_DOUBT
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


def a_run(status: RunStatus, captured: int, entry_id: str = "") -> Run:
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
        entry_id=entry_id,
        captured_micros=captured,
    )


def lines(*charges: int) -> list[Receipt]:
    """A run's lines, each with its own part row `e-line-<i>` of the run's hold."""
    return [
        receipt("hr", c, request_id=f"req-line-{i}", run_id="run_1", entry_id=f"e-line-{i}")
        for i, c in enumerate(charges)
    ]


def parts(*charges: int) -> list[EntryView]:
    return [
        entry("hr", c, entry_id=f"e-line-{i}", request_id=f"req-line-{i}")
        for i, c in enumerate(charges)
    ]


def test_a_closed_run_whose_lines_each_match_their_part_row_reconciles() -> None:
    report = reconcile(
        [hold("hr", 500, HoldState.RELEASED, request_id="run_1", entry_id="")],
        lines(200, 300),
        parts(200, 300),
        [a_run(RunStatus.CLOSED, 500)],
    )
    assert report.ok, report.mismatches
    assert report.entries_checked == 2


def test_a_run_line_whose_part_row_differs_is_reported() -> None:
    report = reconcile(
        [hold("hr", 500, HoldState.RELEASED, request_id="run_1", entry_id="")],
        lines(200, 300),
        parts(300, 200),
        [a_run(RunStatus.CLOSED, 500)],
    )
    assert problems(report) == [
        (Problem.LEDGER_AMOUNT_DIFFERS, "e-line-0"),
        (Problem.LEDGER_AMOUNT_DIFFERS, "e-line-1"),
    ]


def test_a_charged_run_line_without_its_part_row_is_reported() -> None:
    report = reconcile(
        [hold("hr", 200, HoldState.RELEASED, request_id="run_1", entry_id="")],
        [*lines(200), receipt("hr", 100, request_id="req-x", run_id="run_1", entry_id="")],
        parts(200),
        [a_run(RunStatus.CLOSED, 200)],
    )
    assert (Problem.RECEIPT_WITHOUT_LEDGER_ENTRY, "req-x") in problems(report)
    assert (Problem.CHARGE_DIFFERS_FROM_HOLD, "hr") in problems(report)


def test_a_part_row_named_by_two_lines_is_reported() -> None:
    twice = [
        *lines(200),
        receipt("hr", 200, request_id="req-y", run_id="run_1", entry_id="e-line-0"),
    ]
    report = reconcile(
        [hold("hr", 400, HoldState.RELEASED, request_id="run_1", entry_id="")],
        twice,
        parts(200),
        [a_run(RunStatus.CLOSED, 400)],
    )
    assert (Problem.LEDGER_ENTRY_WITH_SEVERAL_RECEIPTS, "e-line-0") in problems(report)
    # The hold captured 400 but its one row took 200.
    assert (Problem.LEDGER_AMOUNT_DIFFERS, "e-line-0") in problems(report)


def test_a_run_whose_lines_differ_from_what_its_hold_captured_is_reported() -> None:
    report = reconcile(
        [hold("hr", 500, HoldState.RELEASED, request_id="run_1", entry_id="")],
        lines(200, 200),
        [*parts(200, 200), entry("hr", 100, entry_id="e-stray", request_id="req-stray")],
        [a_run(RunStatus.CLOSED, 500)],
    )
    assert problems(report) == [
        (Problem.CHARGE_DIFFERS_FROM_HOLD, "hr"),
        (Problem.LEDGER_ENTRY_WITHOUT_RECEIPT, "e-stray"),
    ]


def test_an_open_runs_lines_have_their_parts_already() -> None:
    report = reconcile(
        [hold("hr", 200, HoldState.OPEN, request_id="run_1", entry_id="")],
        lines(200),
        parts(200),
        [a_run(RunStatus.OPEN, 0)],
    )
    assert report.ok, report.mismatches


def test_a_run_closed_with_one_aggregate_row_before_parts_still_reconciles() -> None:
    legacy = [receipt("hr", c, request_id=f"req-l{c}", run_id="run_1", entry_id="") for c in (2, 3)]
    report = reconcile(
        [hold("hr", 5, request_id="run_1", entry_id="e-hr")],
        legacy,
        [entry("hr", 5, request_id="run_1")],
        [a_run(RunStatus.CLOSED, 5, entry_id="e-hr")],
    )
    assert report.ok, report.mismatches


def fell_back(paying: str, left: str, charge: int) -> Receipt:
    """A request that left the route of hold `left` and paid with hold `paying`."""
    return receipt(
        paying,
        charge,
        request_id="req-fb",
        bucket=Bucket.ROUTED,
        route_attempts=(
            RouteAttempt(None, CR, hold_id=left, outcome="fell_back", channel_attempts=1),
            RouteAttempt(None, Bucket.ROUTED, hold_id=paying, outcome="final"),
        ),
    )


def test_a_request_with_a_released_hold_on_the_route_it_left_reconciles() -> None:
    report = reconcile(
        [
            hold("h-left", 0, HoldState.RELEASED, request_id="req-fb"),
            hold("h-paid", 300, request_id="req-fb", bucket=Bucket.ROUTED),
        ],
        [fell_back("h-paid", "h-left", 300)],
        [entry("h-paid", 300, request_id="req-fb", bucket=Bucket.ROUTED)],
    )
    assert report.ok, report.mismatches
    assert report.holds_checked == 2


def test_a_released_hold_no_receipt_lists_is_reported() -> None:
    report = reconcile(
        [
            hold("h-left", 0, HoldState.RELEASED, request_id="req-fb"),
            hold("h-paid", 300, request_id="req-fb", bucket=Bucket.ROUTED),
        ],
        [receipt("h-paid", 300, request_id="req-fb")],
        [entry("h-paid", 300, request_id="req-fb", bucket=Bucket.ROUTED)],
    )
    assert (Problem.HOLD_WITHOUT_RECEIPT, "h-left") in problems(report)


def test_a_hold_of_a_route_left_behind_that_took_money_is_reported() -> None:
    report = reconcile(
        [
            hold("h-left", 100, request_id="req-fb"),
            hold("h-paid", 300, request_id="req-fb", bucket=Bucket.ROUTED),
        ],
        [fell_back("h-paid", "h-left", 300)],
        [
            entry("h-left", 100, request_id="req-fb"),
            entry("h-paid", 300, request_id="req-fb", bucket=Bucket.ROUTED),
        ],
    )
    assert (Problem.CHARGE_DIFFERS_FROM_HOLD, "h-left") in problems(report)
    assert (Problem.LEDGER_ENTRY_WITHOUT_RECEIPT, "e-h-left") in problems(report)


def in_doubt(ended_on: str) -> Receipt:
    """A request whose fallback Hold, on the routed bucket, the wallet never answered:
    it ended, failed and charging nothing, on the route of hold `ended_on`."""
    return receipt(
        ended_on,
        0,
        request_id="req-fb",
        status=ReceiptStatus.FAILED,
        route_attempts=(
            RouteAttempt(None, Bucket.ROUTED, outcome=HOLD_IN_DOUBT),
            RouteAttempt(None, CR, hold_id=ended_on, outcome="final", channel_attempts=1),
        ),
    )


def test_a_released_fallback_hold_the_wallet_never_answered_reconciles() -> None:
    report = reconcile(
        [
            hold("h-first", 0, HoldState.RELEASED, request_id="req-fb"),
            hold("h-doubt", 0, HoldState.RELEASED, request_id="req-fb", bucket=Bucket.ROUTED),
        ],
        [in_doubt("h-first")],
        [],
    )
    assert report.ok, report.mismatches
    assert report.holds_checked == 2


def test_a_hold_in_doubt_on_another_bucket_or_that_took_money_is_reported() -> None:
    other_bucket = reconcile(
        [
            hold("h-first", 0, HoldState.RELEASED, request_id="req-fb"),
            hold("h-doubt", 0, HoldState.RELEASED, request_id="req-fb"),  # credit, not routed
        ],
        [in_doubt("h-first")],
        [],
    )
    assert (Problem.HOLD_WITHOUT_RECEIPT, "h-doubt") in problems(other_bucket)
    took_money = reconcile(
        [
            hold("h-first", 0, HoldState.RELEASED, request_id="req-fb"),
            hold("h-doubt", 100, request_id="req-fb", bucket=Bucket.ROUTED),
        ],
        [in_doubt("h-first")],
        [entry("h-doubt", 100, request_id="req-fb", bucket=Bucket.ROUTED)],
    )
    assert (Problem.CHARGE_DIFFERS_FROM_HOLD, "h-doubt") in problems(took_money)


def budget_lines(charges: list[int]) -> tuple[list[Receipt], list[EntryView]]:
    """Receipts drawn from budget hold "b" and their part rows."""
    receipts = [
        receipt("b", c, request_id=f"req-{n}", entry_id=f"p-{n}" if c else "")
        for n, c in enumerate(charges)
    ]
    rows = [
        entry("b", c, entry_id=f"p-{n}", request_id=f"req-{n}") for n, c in enumerate(charges) if c
    ]
    return receipts, rows


def test_a_budget_hold_pays_for_many_receipts_each_with_its_own_part() -> None:
    receipts, rows = budget_lines([300, 0, 200])
    for status in (HoldState.RELEASED, HoldState.EXPIRED):
        budget = hold("b", 500, status, request_id="budget-1", entry_id="")
        report = reconcile([budget], receipts, rows)
        assert report.ok, (status, report.mismatches)


def test_a_budget_hold_whose_receipts_charge_other_than_it_captured_is_reported() -> None:
    receipts, rows = budget_lines([300, 200])
    budget = hold("b", 600, HoldState.RELEASED, request_id="budget-1", entry_id="")
    report = reconcile([budget], receipts, [*rows, entry("b", 100, entry_id="p-x")])
    assert (Problem.CHARGE_DIFFERS_FROM_HOLD, "b") in problems(report)
    assert (Problem.LEDGER_ENTRY_WITHOUT_RECEIPT, "p-x") in problems(report)


def test_a_request_hold_with_many_receipts_is_still_reported() -> None:
    receipts, rows = budget_lines([300, 200])
    report = reconcile([hold("b", 500, HoldState.RELEASED, entry_id="")], receipts, rows)
    assert (Problem.HOLD_WITH_SEVERAL_RECEIPTS, "b") in problems(report)
