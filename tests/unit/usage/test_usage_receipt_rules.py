"""Receipt rules and use cases against an in-memory repository: validation, replays,
conflicts, privacy and cursors."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.usage import handlers
from services.usage.domain import commands
from services.usage.domain.receipts import (
    MAX_PAGE_SIZE,
    AggregateBy,
    AggregateRow,
    Attempt,
    Cursor,
    Receipt,
    ReceiptFilter,
    ReceiptStatus,
    RouteKind,
    page_size,
    validate,
)
from services.usage.storage.repository import ReceiptRepository
from services.usage.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket, Price

NOW = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)


def a_receipt(request_id: str = "req-1", **changes: object) -> Receipt:
    receipt = Receipt(
        request_id=request_id,
        account_id="acct-1",
        status=ReceiptStatus.SUCCEEDED,
        selected_model="demo-chat",
        upstream_model="mock-gpt-official",
        route_kind=RouteKind.OFFICIAL,
        bucket=Bucket.CREDIT,
        attempts=(Attempt("mock-primary", "ok", 40),),
        prompt_tokens=10,
        completion_tokens=20,
        prices=Price(Bucket.CREDIT, 2_500_000, 10_000_000, cached_input_per_million=2_500_000),
        charge_micros=225,
        finished_at=NOW,
    )
    receipt = replace(receipt, **changes)  # type: ignore[arg-type]
    # The prices are in the receipt's bucket (none without one).
    if receipt.bucket is None:
        return replace(receipt, prices=None)
    if receipt.prices is not None and receipt.prices.bucket is not receipt.bucket:
        return replace(receipt, prices=replace(receipt.prices, bucket=receipt.bucket))
    return receipt


class FakeReceiptRepository(ReceiptRepository):
    def __init__(self) -> None:
        self.rows: dict[str, Receipt] = {}
        # The size of each multi-row insert.
        self.batches: list[int] = []

    async def add(self, receipt: Receipt) -> Receipt | None:
        if receipt.request_id in self.rows:
            return None
        self.rows[receipt.request_id] = receipt
        return receipt

    async def add_many(self, batch: Sequence[Receipt]) -> dict[str, Receipt]:
        self.batches.append(len(batch))
        stored = {}
        for receipt in batch:
            if await self.add(receipt) is not None:
                stored[receipt.request_id] = receipt
        return stored

    async def get(self, request_id: str) -> Receipt | None:
        return self.rows.get(request_id)

    async def get_many(self, request_ids: Collection[str]) -> dict[str, Receipt]:
        return {i: self.rows[i] for i in request_ids if i in self.rows}

    async def list(self, where: ReceiptFilter, after: Cursor | None, limit: int) -> list[Receipt]:
        def key(r: Receipt) -> tuple[datetime, str]:
            assert r.finished_at is not None
            return r.finished_at, r.request_id

        mine = sorted(
            (r for r in self.rows.values() if r.account_id == where.account_id),
            key=key,
            reverse=True,
        )
        if after is not None:
            mine = [r for r in mine if key(r) < (after.finished_at, after.request_id)]
        return mine[:limit]

    async def aggregate(self, where: ReceiptFilter, by: AggregateBy) -> list[AggregateRow]:
        """The same grouping as the SQL repository: one row per group and bucket."""
        group_of = {
            AggregateBy.DAY: lambda r: r.finished_at.strftime("%Y-%m-%d"),
            AggregateBy.MODEL: lambda r: r.selected_model,
            AggregateBy.KEY: lambda r: r.key_id,
            AggregateBy.PROJECT: lambda r: r.project_id,
            AggregateBy.BUCKET: lambda r: r.bucket.value if r.bucket else "",
            AggregateBy.STATUS: lambda r: r.status.value,
        }[by]
        totals: dict[tuple[str, Bucket | None], list[int]] = {}
        for r in self.rows.values():
            if where.account_id and r.account_id != where.account_id:
                continue
            t = totals.setdefault((group_of(r), r.bucket), [0, 0, 0, 0, 0])
            for i, n in enumerate(
                (1, r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.charge_micros)
            ):
                t[i] += n
        return [
            AggregateRow(g, b, *t)
            for (g, b), t in sorted(totals.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
        ]


class FakeUnitOfWork(UnitOfWork):
    def __init__(self, repo: FakeReceiptRepository) -> None:
        super().__init__(lambda: NOW)
        self.receipts = repo

    async def commit(self) -> None:
        pass

    async def rollback(self) -> None:
        pass


@pytest.fixture
def repo() -> FakeReceiptRepository:
    return FakeReceiptRepository()


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"request_id": ""}, "request_id is required"),
        ({"account_id": ""}, "account_id is required"),
        ({"charge_micros": -1}, "charge_micros is never negative"),
        ({"completion_tokens": -5}, "token counts"),
        ({"bucket": None}, "names the bucket"),
    ],
)
def test_an_incomplete_receipt_is_refused_saying_what_is_missing(
    changes: dict[str, object], words: str
) -> None:
    with pytest.raises(DomainError) as caught:
        validate(a_receipt(**changes))  # type: ignore[arg-type]

    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert words in caught.value.message


def test_a_rejected_request_needs_no_bucket() -> None:
    validate(
        a_receipt(status=ReceiptStatus.REJECTED, bucket=None, route_kind=None, charge_micros=0)
    )


async def test_a_replay_answers_the_first_and_another_receipt_conflicts(
    repo: FakeReceiptRepository,
) -> None:
    first = await handlers.record_receipt(commands.RecordReceipt(a_receipt()), FakeUnitOfWork(repo))
    replay = await handlers.record_receipt(
        commands.RecordReceipt(a_receipt()), FakeUnitOfWork(repo)
    )

    with pytest.raises(DomainError) as caught:
        await handlers.record_receipt(
            commands.RecordReceipt(a_receipt(charge_micros=1)), FakeUnitOfWork(repo)
        )

    assert first == replay
    assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert repo.rows["req-1"].charge_micros == 225


async def test_a_receipt_without_finish_time_is_stamped_and_its_replay_still_matches(
    repo: FakeReceiptRepository,
) -> None:
    unstamped = a_receipt(finished_at=None)

    first = await handlers.record_receipt(commands.RecordReceipt(unstamped), FakeUnitOfWork(repo))
    replay = await handlers.record_receipt(commands.RecordReceipt(unstamped), FakeUnitOfWork(repo))

    assert first.finished_at == NOW
    assert replay == first


async def test_another_accounts_receipt_reads_as_not_found(repo: FakeReceiptRepository) -> None:
    await handlers.record_receipt(commands.RecordReceipt(a_receipt()), FakeUnitOfWork(repo))

    with pytest.raises(DomainError) as caught:
        await handlers.get_receipt(commands.GetReceipt("acct-2", "req-1"), FakeUnitOfWork(repo))
    with pytest.raises(DomainError) as missing:
        await handlers.get_receipt(commands.GetReceipt("acct-1", "req-404"), FakeUnitOfWork(repo))

    assert caught.value.reason is missing.value.reason is Reason.NOT_FOUND
    assert caught.value.message.replace("req-1", "X") == missing.value.message.replace(
        "req-404", "X"
    )


async def test_pages_follow_the_cursor_without_gaps_or_repeats(repo: FakeReceiptRepository) -> None:
    for n in range(7):
        receipt = a_receipt(f"req-{n}", finished_at=NOW + timedelta(seconds=n // 3))
        await handlers.record_receipt(commands.RecordReceipt(receipt), FakeUnitOfWork(repo))

    seen: list[str] = []
    token = ""
    while True:
        page = await handlers.list_receipts(
            commands.ListReceipts(ReceiptFilter("acct-1"), 3, token), FakeUnitOfWork(repo)
        )
        seen += [r.request_id for r in page.receipts]
        token = page.next_page_token
        if not token:
            break

    assert seen == ["req-6", "req-5", "req-4", "req-3", "req-2", "req-1", "req-0"]


def test_a_cursor_survives_its_round_trip_and_a_forged_one_is_refused() -> None:
    cursor = Cursor(NOW, "req-1")

    assert Cursor.decode(cursor.encode()) == cursor
    for forged in ("###", "bm90IGpzb24", "WyJub3QgYSBkYXRlIiwgInIiXQ"):
        with pytest.raises(DomainError) as caught:
            Cursor.decode(forged)
        assert caught.value.reason is Reason.INVALID_ARGUMENT


def test_page_size_defaults_to_50_and_is_capped_at_500() -> None:
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(10_000) == MAX_PAGE_SIZE == 500
    with pytest.raises(DomainError):
        page_size(-1)


async def test_aggregates_never_add_money_of_two_buckets(repo: FakeReceiptRepository) -> None:
    uow = FakeUnitOfWork(repo)
    for i, (bucket, charge) in enumerate(
        [(Bucket.CREDIT, 100), (Bucket.CREDIT, 50), (Bucket.ROUTED, 7)]
    ):
        await handlers.record_receipt(
            commands.RecordReceipt(a_receipt(f"req-{i}", bucket=bucket, charge_micros=charge)),
            uow,
        )
    rows = await handlers.aggregate_receipts(
        commands.AggregateReceipts(ReceiptFilter("acct-1"), AggregateBy.MODEL), uow
    )
    assert [(r.group, r.bucket, r.requests, r.charge_micros) for r in rows] == [
        ("demo-chat", Bucket.CREDIT, 2, 150),
        ("demo-chat", Bucket.ROUTED, 1, 7),
    ]


async def test_an_empty_time_window_is_refused_before_reading(repo: FakeReceiptRepository) -> None:
    with pytest.raises(DomainError) as refused:
        await handlers.aggregate_receipts(
            commands.AggregateReceipts(
                ReceiptFilter("acct-1", from_time=NOW, to_time=NOW), AggregateBy.DAY
            ),
            FakeUnitOfWork(repo),
        )
    assert refused.value.reason is Reason.INVALID_ARGUMENT


async def test_a_batch_answers_each_receipt_in_order_as_it_would_be_answered_alone(
    repo: FakeReceiptRepository,
) -> None:
    old = a_receipt("req-old")
    await handlers.record_receipt(commands.RecordReceipt(old), FakeUnitOfWork(repo))
    unreadable = DomainError(Reason.INVALID_ARGUMENT, "status is required")

    outcomes = await handlers.record_receipts(
        commands.RecordReceipts(
            [
                a_receipt("req-new"),
                a_receipt("req-bad", account_id=""),
                a_receipt("req-old"),
                a_receipt("req-old", charge_micros=1),
                unreadable,
                a_receipt("req-unstamped", finished_at=None),
            ]
        ),
        lambda: FakeUnitOfWork(repo),
    )

    assert outcomes[0] == a_receipt("req-new")
    assert isinstance(outcomes[1], DomainError)
    assert outcomes[1].reason is Reason.INVALID_ARGUMENT
    assert outcomes[2] == a_receipt("req-old")
    assert isinstance(outcomes[3], DomainError)
    assert outcomes[3].reason is Reason.IDEMPOTENCY_CONFLICT
    assert outcomes[4] is unreadable
    assert outcomes[5] == a_receipt("req-unstamped", finished_at=NOW)
    # One insert for the batch (req-old's second item went alone, as a single call).
    assert repo.batches == [3]
    assert repo.rows["req-old"].charge_micros == 225


async def test_a_request_id_twice_in_a_batch_is_stored_once_and_a_different_one_conflicts(
    repo: FakeReceiptRepository,
) -> None:
    outcomes = await handlers.record_receipts(
        commands.RecordReceipts(
            [a_receipt("req-1"), a_receipt("req-1"), a_receipt("req-1", charge_micros=1)]
        ),
        lambda: FakeUnitOfWork(repo),
    )

    assert outcomes[:2] == [a_receipt("req-1"), a_receipt("req-1")]
    assert isinstance(outcomes[2], DomainError)
    assert outcomes[2].reason is Reason.IDEMPOTENCY_CONFLICT
    assert list(repo.rows) == ["req-1"]


async def test_a_batch_above_256_receipts_is_refused_and_stores_nothing(
    repo: FakeReceiptRepository,
) -> None:
    with pytest.raises(DomainError) as refused:
        await handlers.record_receipts(
            commands.RecordReceipts([a_receipt(f"req-{n}") for n in range(257)]),
            lambda: FakeUnitOfWork(repo),
        )

    assert refused.value.reason is Reason.INVALID_ARGUMENT
    assert repo.rows == {}
