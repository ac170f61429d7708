"""History filters, aggregates and runs against the real database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2

BASE = datetime(2026, 2, 1, 12, tzinfo=UTC)


def receipt(account: str, **changes: Any) -> usage_pb2.Receipt:
    r = usage_pb2.Receipt(
        request_id=f"req-{uuid.uuid4()}",
        account_id=account,
        project_id="prj_1",
        key_id="key_1",
        selected_model="demo-chat",
        bucket=common_pb2.BUCKET_CREDIT,
        prompt_tokens=10,
        completion_tokens=20,
        charge_micros=100,
        status=usage_pb2.RECEIPT_STATUS_SUCCEEDED,
    )
    r.finished_at.FromDatetime(BASE)
    for name, value in changes.items():
        if isinstance(value, datetime):
            getattr(r, name).FromDatetime(value)
        else:
            setattr(r, name, value)
    return r


async def record_all(usage: Any, receipts: list[usage_pb2.Receipt]) -> None:
    for r in receipts:
        await usage.call("RecordReceipt", usage_pb2.RecordReceiptRequest(receipt=r))


async def test_filters_narrow_by_window_key_project_and_status(usage: Any) -> None:
    account = f"acct-{uuid.uuid4()}"
    await record_all(
        usage,
        [
            receipt(account),
            receipt(account, key_id="key_2", finished_at=BASE + timedelta(days=1)),
            receipt(
                account, project_id="prj_2", status=usage_pb2.RECEIPT_STATUS_FAILED, charge_micros=0
            ),
        ],
    )

    async def ids(**fields: Any) -> int:
        where = usage_pb2.ReceiptFilter(account_id=account, **fields)
        answer = await usage.call("ListReceipts", usage_pb2.ListReceiptsRequest(filter=where))
        return len(answer.receipts)

    later = usage_pb2.ReceiptFilter(account_id=account)
    later.from_time.FromDatetime(BASE + timedelta(hours=1))
    answer = await usage.call("ListReceipts", usage_pb2.ListReceiptsRequest(filter=later))
    assert [r.key_id for r in answer.receipts] == ["key_2"]
    assert await ids(key_id="key_2") == 1
    assert await ids(project_id="prj_2") == 1
    assert await ids(status=usage_pb2.RECEIPT_STATUS_FAILED) == 1
    assert await ids() == 3


async def test_aggregates_sum_per_group_and_never_across_buckets(usage: Any) -> None:
    account = f"acct-{uuid.uuid4()}"
    await record_all(
        usage,
        [
            receipt(account),
            receipt(account, charge_micros=50, finished_at=BASE + timedelta(days=1)),
            receipt(
                account,
                selected_model="demo-chat@routed",
                bucket=common_pb2.BUCKET_ROUTED,
                charge_micros=7,
            ),
        ],
    )
    by_day = await usage.call(
        "AggregateReceipts",
        usage_pb2.AggregateReceiptsRequest(
            filter=usage_pb2.ReceiptFilter(account_id=account), by=usage_pb2.AGGREGATE_BY_DAY
        ),
    )
    rows = {(r.group, r.bucket): (r.requests, r.charge_micros) for r in by_day.rows}
    assert rows == {
        ("2026-02-01", common_pb2.BUCKET_CREDIT): (1, 100),
        ("2026-02-01", common_pb2.BUCKET_ROUTED): (1, 7),
        ("2026-02-02", common_pb2.BUCKET_CREDIT): (1, 50),
    }
    with pytest.raises(DomainError) as refused:
        await usage.call(
            "AggregateReceipts",
            usage_pb2.AggregateReceiptsRequest(filter=usage_pb2.ReceiptFilter(account_id=account)),
        )
    assert refused.value.reason is Reason.INVALID_ARGUMENT


async def open_run(usage: Any, account: str, budget: int, expires_in: timedelta) -> str:
    run = usage_pb2.Run(
        run_id=f"run_{uuid.uuid4().hex}",
        account_id=account,
        bucket=common_pb2.BUCKET_CREDIT,
        budget_micros=budget,
        hold_id=f"hold-{uuid.uuid4()}",
    )
    now = datetime.now(UTC)
    run.created_at.FromDatetime(now - timedelta(minutes=1))
    run.expires_at.FromDatetime(now + expires_in)
    await usage.call("OpenRun", usage_pb2.OpenRunRequest(run=run))
    return run.run_id


async def test_twenty_racing_reservations_on_a_budget_for_five_let_five_through(
    usage: Any,
) -> None:
    account = f"acct-{uuid.uuid4()}"
    run_id = await open_run(usage, account, 500, timedelta(minutes=10))

    async def reserve(i: int) -> bool:
        try:
            await usage.call(
                "ReserveFromRun",
                usage_pb2.ReserveFromRunRequest(
                    account_id=account,
                    run_id=run_id,
                    request_id=f"{run_id}-{i}",
                    amount_micros=100,
                ),
            )
            return True
        except DomainError as error:
            assert error.reason is Reason.INSUFFICIENT_BALANCE
            return False

    granted = await asyncio.gather(*(reserve(i) for i in range(20)))
    run = (await usage.call("GetRun", usage_pb2.GetRunRequest(run_id=run_id))).run
    assert sum(granted) == 5 and run.reserved_micros == 500

    winner = next(i for i, ok in enumerate(granted) if ok)
    line = receipt(account, request_id=f"{run_id}-{winner}", run_id=run_id, charge_micros=60)
    await record_all(usage, [line])
    run = (await usage.call("GetRun", usage_pb2.GetRunRequest(run_id=run_id))).run
    assert (run.reserved_micros, run.spent_micros, run.requests) == (400, 60, 1)


async def test_finishing_a_run_abandons_draws_in_flight_and_answers_its_receipt(
    usage: Any,
) -> None:
    account = f"acct-{uuid.uuid4()}"
    run_id = await open_run(usage, account, 500, timedelta(minutes=10))
    for i in range(2):
        await usage.call(
            "ReserveFromRun",
            usage_pb2.ReserveFromRunRequest(
                account_id=account, run_id=run_id, request_id=f"{run_id}-{i}", amount_micros=100
            ),
        )
    await record_all(
        usage, [receipt(account, request_id=f"{run_id}-0", run_id=run_id, charge_micros=30)]
    )
    await usage.call("CloseRun", usage_pb2.CloseRunRequest(account_id=account, run_id=run_id))
    finished = await usage.call(
        "FinishRun", usage_pb2.FinishRunRequest(run_id=run_id, entry_id="e1", captured_micros=30)
    )
    late = receipt(account, request_id=f"{run_id}-1", run_id=run_id, charge_micros=30)
    with pytest.raises(DomainError) as refused:
        await record_all(usage, [late])

    assert finished.receipt.run.status == usage_pb2.RUN_STATUS_CLOSED
    assert finished.receipt.charge_micros == 30 and len(finished.receipt.lines) == 1
    assert finished.receipt.run.reserved_micros == 0
    assert refused.value.reason is Reason.HOLD_NOT_OPEN


async def test_a_late_line_whose_part_the_wallet_took_still_counts_on_the_finished_run(
    usage: Any,
) -> None:
    account = f"acct-{uuid.uuid4()}"
    run_id = await open_run(usage, account, 500, timedelta(minutes=10))
    await usage.call(
        "ReserveFromRun",
        usage_pb2.ReserveFromRunRequest(
            account_id=account, run_id=run_id, request_id=f"{run_id}-0", amount_micros=100
        ),
    )
    await usage.call("CloseRun", usage_pb2.CloseRunRequest(account_id=account, run_id=run_id))
    # The wallet took the request's part (40) before the run's hold was released.
    await usage.call("FinishRun", usage_pb2.FinishRunRequest(run_id=run_id, captured_micros=40))
    late = receipt(
        account, request_id=f"{run_id}-0", run_id=run_id, charge_micros=40, entry_id="e-part"
    )
    await record_all(usage, [late])
    run = (await usage.call("GetRun", usage_pb2.GetRunRequest(run_id=run_id))).run
    assert (run.status, run.reserved_micros) == (usage_pb2.RUN_STATUS_CLOSED, 0)
    assert (run.spent_micros, run.captured_micros, run.requests) == (40, 40, 1)


async def test_expire_runs_answers_open_runs_past_their_expiry(usage: Any) -> None:
    account = f"acct-{uuid.uuid4()}"
    stale = await open_run(usage, account, 500, timedelta(seconds=-1))
    fresh = await open_run(usage, account, 500, timedelta(minutes=10))
    answer = await usage.call("ExpireRuns", usage_pb2.ExpireRunsRequest(limit=100))
    ids = {r.run_id: r for r in answer.runs}
    assert stale in ids and fresh not in ids
    assert ids[stale].status == usage_pb2.RUN_STATUS_CLOSING and ids[stale].expiring
