"""Run rules: slices never exceed the budget, charges never exceed slices, closing is
once, the aggregate receipt is the sum of its lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.usage.domain.receipts import Receipt, ReceiptStatus
from services.usage.domain.runs import Run, RunStatus, run_receipt, run_ttl
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def a_run(budget: int = 1000) -> Run:
    return Run(
        run_id="run_1",
        account_id="a",
        bucket=Bucket.CREDIT,
        budget_micros=budget,
        hold_id="h",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=10),
    )


def test_slices_are_taken_until_the_rest_of_the_budget_cannot_pay_the_next() -> None:
    run = a_run(1000)
    for _ in range(4):
        run = run.reserve(250, Bucket.CREDIT, NOW)
    with pytest.raises(DomainError) as refused:
        run.reserve(1, Bucket.CREDIT, NOW)
    assert refused.value.reason is Reason.INSUFFICIENT_BALANCE
    assert "run_1" in refused.value.message and refused.value.metadata["run_id"] == "run_1"


def test_a_commit_returns_the_slice_and_spends_only_the_charge() -> None:
    run = a_run(1000).reserve(400, Bucket.CREDIT, NOW).commit(400, 150)
    assert (run.reserved_micros, run.spent_micros, run.requests) == (0, 150, 1)
    assert run.remaining_micros == 850
    with pytest.raises(DomainError):
        a_run().reserve(100, Bucket.CREDIT, NOW).commit(100, 101)


def test_another_bucket_a_closed_run_and_an_expired_run_take_no_draws() -> None:
    with pytest.raises(DomainError) as other:
        a_run().reserve(1, Bucket.ROUTED, NOW)
    assert other.value.reason is Reason.PERMISSION_DENIED
    with pytest.raises(DomainError) as closed:
        a_run().close(NOW).reserve(1, Bucket.CREDIT, NOW)
    assert closed.value.reason is Reason.HOLD_NOT_OPEN
    with pytest.raises(DomainError):
        a_run().reserve(1, Bucket.CREDIT, NOW + timedelta(hours=1))


def test_close_then_finish_ends_once_and_an_expiring_run_ends_expired() -> None:
    closing = a_run().close(NOW)
    assert closing.status is RunStatus.CLOSING and closing.close(NOW) is closing
    closed = closing.finish("e1", 0, 0, NOW)
    assert closed.status is RunStatus.CLOSED
    assert closed.finish("e2", 5, 0, NOW) is closed
    assert a_run().close(NOW, expiring=True).finish("", 0, 0, NOW).status is RunStatus.EXPIRED
    with pytest.raises(DomainError):
        a_run().finish("e", 0, 0, NOW)


def test_sweep_picks_expired_open_runs_and_runs_left_closing() -> None:
    assert not a_run().due_for_sweep(NOW)
    assert a_run().due_for_sweep(NOW + timedelta(minutes=11))
    assert a_run().close(NOW).due_for_sweep(NOW + timedelta(minutes=2))


def test_the_aggregate_receipt_is_the_sum_of_its_lines_and_skips_refused_requests() -> None:
    def line(i: int, model: str, charge: int, status: ReceiptStatus) -> Receipt:
        return Receipt(
            request_id=f"r{i}",
            account_id="a",
            status=status,
            selected_model=model,
            prompt_tokens=10 * i,
            completion_tokens=i,
            charge_micros=charge,
            bucket=Bucket.CREDIT,
            started_at=NOW + timedelta(seconds=i),
            finished_at=NOW + timedelta(seconds=i + 1),
        )

    receipt = run_receipt(
        a_run(),
        [
            line(1, "demo-chat", 100, ReceiptStatus.SUCCEEDED),
            line(2, "other", 40, ReceiptStatus.PARTIAL),
            line(3, "demo-chat", 60, ReceiptStatus.SUCCEEDED),
            line(4, "demo-chat", 0, ReceiptStatus.REJECTED),
        ],
    )
    assert [r.request_id for r in receipt.lines] == ["r1", "r2", "r3"]
    assert receipt.total.charge_micros == 200 == sum(m.charge_micros for m in receipt.models)
    assert [(m.model, m.requests) for m in receipt.models] == [("demo-chat", 2), ("other", 1)]
    assert receipt.total.prompt_tokens == 60 and receipt.duration_ms == 3000


def test_a_run_lives_between_one_and_fifty_minutes() -> None:
    assert run_ttl(0) == timedelta(minutes=15)
    with pytest.raises(DomainError):
        run_ttl(30)
