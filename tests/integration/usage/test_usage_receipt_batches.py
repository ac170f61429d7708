"""RecordReceipts and the batching UsageClient against the real database: every item
of a batch is answered exactly as RecordReceipt would answer it alone."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.usage.client import UsageClient
from tests.integration.usage.conftest import INTERNAL
from tests.integration.usage.test_usage_receipts_service import a_receipt
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.runtime.service import RunningService
from tokenforge.wire import item_error_from_proto

Outcome = usage_pb2.Receipt | DomainError


@pytest.fixture
async def client(usage_app: RunningService) -> AsyncIterator[UsageClient]:
    found = UsageClient.connect(usage_app.address, INTERNAL)
    yield found
    await found.close()


async def record_batch(usage: Any, receipts: list[usage_pb2.Receipt]) -> list[Outcome]:
    answer = await usage.call(
        "RecordReceipts",
        usage_pb2.RecordReceiptsRequest(
            receipts=[usage_pb2.RecordReceiptRequest(receipt=r) for r in receipts]
        ),
    )
    assert len(answer.outcomes) == len(receipts)
    return [
        item_error_from_proto(o.error) if o.HasField("error") else o.answer.receipt
        for o in answer.outcomes
    ]


async def record_alone(usage: Any, receipt: usage_pb2.Receipt) -> Outcome:
    try:
        answer = await usage.call("RecordReceipt", usage_pb2.RecordReceiptRequest(receipt=receipt))
    except DomainError as error:
        return error
    found: usage_pb2.Receipt = answer.receipt
    return found


def same_outcome(batched: Outcome, alone: Outcome) -> bool:
    if isinstance(batched, DomainError) and isinstance(alone, DomainError):
        return (batched.reason, batched.message, batched.metadata) == (
            alone.reason,
            alone.message,
            alone.metadata,
        )
    return batched == alone


async def requests_recorded(usage: Any, account: str) -> int:
    answer = await usage.call(
        "AggregateReceipts",
        usage_pb2.AggregateReceiptsRequest(
            filter=usage_pb2.ReceiptFilter(account_id=account), by=usage_pb2.AGGREGATE_BY_BUCKET
        ),
    )
    return sum(row.requests for row in answer.rows)


async def open_run_with_draws(usage: Any, account: str, request_ids: list[str]) -> str:
    run = usage_pb2.Run(
        run_id=f"run_{uuid.uuid4().hex}",
        account_id=account,
        bucket=common_pb2.BUCKET_CREDIT,
        budget_micros=1_000_000,
        hold_id=f"hold-{uuid.uuid4()}",
    )
    now = datetime.now(UTC)
    run.created_at.FromDatetime(now - timedelta(minutes=1))
    run.expires_at.FromDatetime(now + timedelta(minutes=10))
    await usage.call("OpenRun", usage_pb2.OpenRunRequest(run=run))
    for request_id in request_ids:
        await usage.call(
            "ReserveFromRun",
            usage_pb2.ReserveFromRunRequest(
                account_id=account, run_id=run.run_id, request_id=request_id, amount_micros=10_000
            ),
        )
    return run.run_id


async def test_concurrent_receipts_through_one_client_go_in_batches_and_are_stored_once(
    client: UsageClient, usage: Any
) -> None:
    account = f"acct-{uuid.uuid4()}"
    sent = [a_receipt(account) for _ in range(300)]

    answers = await asyncio.gather(*(client.record_receipt(r) for r in sent))

    assert client.receipts.batched_items > 0
    assert client.receipts.calls < len(sent)
    assert [a.receipt for a in answers] == sent
    assert await requests_recorded(usage, account) == 300


async def test_a_replay_in_a_batch_answers_the_first_and_a_different_receipt_conflicts(
    usage: Any,
) -> None:
    account = f"acct-{uuid.uuid4()}"
    earlier = a_receipt(account)
    await record_alone(usage, earlier)
    twice = a_receipt(account)
    racing = a_receipt(account)
    racing_other = a_receipt(account, racing.request_id, charge_micros=9_999)

    outcomes = await record_batch(
        usage,
        [
            earlier,
            a_receipt(account, earlier.request_id, charge_micros=9_999),
            twice,
            twice,
            racing,
            racing_other,
        ],
    )

    assert outcomes[0] == earlier
    assert isinstance(outcomes[1], DomainError)
    assert outcomes[1].reason is Reason.IDEMPOTENCY_CONFLICT
    assert outcomes[2] == outcomes[3] == twice
    # Like two single calls at once: one of them is stored, the other conflicts.
    refused = [o for o in outcomes[4:] if isinstance(o, DomainError)]
    stored = [o for o in outcomes[4:] if not isinstance(o, DomainError)]
    assert [e.reason for e in refused] == [Reason.IDEMPOTENCY_CONFLICT]
    assert len(stored) == 1 and stored[0] in (racing, racing_other)
    read = await usage.call(
        "GetReceipt", usage_pb2.GetReceiptRequest(account_id=account, request_id=racing.request_id)
    )
    assert read.receipt == stored[0]
    assert await requests_recorded(usage, account) == 3


async def test_each_item_of_a_mixed_batch_is_answered_as_the_single_call_would(
    usage: Any,
) -> None:
    account = f"acct-{uuid.uuid4()}"
    drawn = f"req-{uuid.uuid4()}"
    run_id = await open_run_with_draws(usage, account, [drawn])
    unstamped = a_receipt(account)
    unstamped.ClearField("finished_at")
    nameless = a_receipt(account)
    nameless.request_id = ""
    batch = [
        a_receipt(account),
        nameless,
        a_receipt(account, account_id=""),
        a_receipt(account, charge_micros=-1),
        a_receipt(account, status=usage_pb2.RECEIPT_STATUS_UNSPECIFIED),
        a_receipt(account, route_kind=99),
        a_receipt(account, bucket=common_pb2.BUCKET_UNSPECIFIED),
        unstamped,
        # A run's line ends its draw; a charged line that drew nothing is refused.
        a_receipt(account, drawn, run_id=run_id, charge_micros=4_000),
        a_receipt(account, run_id=run_id, charge_micros=4_000),
        a_receipt(account),
    ]

    batched = await record_batch(usage, batch)
    # Alone afterwards: the recorded ones replay, the refused ones are refused again.
    alone = [await record_alone(usage, r) for r in batch]

    assert [isinstance(o, DomainError) for o in batched] == [
        False,
        True,
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        True,
        False,
    ]
    for index, (b, a) in enumerate(zip(batched, alone, strict=True)):
        assert same_outcome(b, a), f"item {index}: {b!r} alone was {a!r}"
    assert batched[7].HasField("finished_at")  # type: ignore[union-attr]
    run = (await usage.call("GetRun", usage_pb2.GetRunRequest(run_id=run_id))).run
    assert (run.reserved_micros, run.spent_micros, run.requests) == (0, 4_000, 1)
    assert await requests_recorded(usage, account) == 4


async def test_every_field_reads_back_the_same_from_a_batch_and_from_a_single_call(
    usage: Any,
) -> None:
    account = f"acct-{uuid.uuid4()}"
    fell_back = a_receipt(
        account,
        route_kind=common_pb2.ROUTE_KIND_ROUTED,
        bucket=common_pb2.BUCKET_ROUTED,
        fallback_used=True,
        settlement_rule="finished_with_usage",
        error_code="",
    )
    fell_back.route_attempts.extend(
        [
            usage_pb2.RouteAttempt(
                route_kind=common_pb2.ROUTE_KIND_OFFICIAL,
                bucket=common_pb2.BUCKET_CREDIT,
                upstream_model="mock-gpt-official",
                prices=common_pb2.Prices(input_per_million_micros=2_500_000),
                hold_id="hold-official",
                outcome="fell_back",
                channel_attempts=2,
            ),
            usage_pb2.RouteAttempt(
                route_kind=common_pb2.ROUTE_KIND_ROUTED,
                bucket=common_pb2.BUCKET_ROUTED,
                upstream_model="mock-gpt-routed",
                prices=common_pb2.Prices(output_per_million_micros=4_000_000),
                hold_id="hold_1",
                outcome="final",
                channel_attempts=1,
            ),
        ]
    )
    rejected = a_receipt(
        account,
        status=usage_pb2.RECEIPT_STATUS_REJECTED,
        route_kind=common_pb2.ROUTE_KIND_UNSPECIFIED,
        bucket=common_pb2.BUCKET_UNSPECIFIED,
        charge_micros=0,
        error_code="insufficient_balance",
    )
    rejected.ClearField("started_at")
    rejected.ClearField("prices")  # no bucket paid: no prices (refused otherwise)
    del rejected.attempts[:]
    twins = [fell_back, rejected]
    alone = [a_receipt(account) for _ in twins]
    for mine, twin in zip(alone, twins, strict=True):
        request_id = mine.request_id
        mine.CopyFrom(twin)
        mine.request_id = request_id

    batched = await record_batch(usage, twins)
    singles = [await record_alone(usage, r) for r in alone]
    read = [
        (
            await usage.call(
                "GetReceipt", usage_pb2.GetReceiptRequest(account_id=account, request_id=r)
            )
        ).receipt
        for r in [t.request_id for t in twins]
    ]

    assert batched == twins == read
    assert singles == alone


async def test_prices_without_the_bucket_they_are_in_are_refused(usage: Any) -> None:
    """A receipt's prices are a tokenforge.money.Price: in its bucket, or none at all."""
    account = f"acct-{uuid.uuid4()}"
    loose = a_receipt(
        account,
        status=usage_pb2.RECEIPT_STATUS_REJECTED,
        route_kind=common_pb2.ROUTE_KIND_UNSPECIFIED,
        bucket=common_pb2.BUCKET_UNSPECIFIED,
        charge_micros=0,
    )
    assert loose.prices.input_per_million_micros > 0
    alone = await record_alone(usage, loose)
    assert isinstance(alone, DomainError) and alone.reason is Reason.INVALID_ARGUMENT
    assert "bucket" in alone.message
    [batched] = await record_batch(usage, [loose])
    assert same_outcome(batched, alone)


async def test_a_receipt_with_a_nul_fails_alone_in_its_batch_as_its_own_call_would(
    usage: Any,
) -> None:
    account = f"acct-{uuid.uuid4()}"
    # PostgreSQL text holds no NUL character: the service refuses this one receipt
    # before the database sees it (its own call is refused the same way).
    batch = [a_receipt(account), a_receipt(account, endpoint="chat\x00"), a_receipt(account)]

    batched = await record_batch(usage, batch)
    alone = await record_alone(usage, batch[1])

    assert batched[0] == batch[0] and batched[2] == batch[2]
    assert isinstance(batched[1], DomainError) and isinstance(alone, DomainError)
    assert batched[1].reason is alone.reason is Reason.INVALID_ARGUMENT
    assert batched[1].metadata == alone.metadata == {"field": "receipt.endpoint"}
    assert await requests_recorded(usage, account) == 2


async def test_recording_a_batch_is_closed_to_the_operator_credential(
    usage_operator: Any, usage: Any
) -> None:
    account = f"acct-{uuid.uuid4()}"

    with pytest.raises(DomainError) as caught:
        await record_batch(usage_operator, [a_receipt(account), a_receipt(account)])

    assert caught.value.reason is Reason.PERMISSION_DENIED
    assert await requests_recorded(usage, account) == 0


async def test_a_batch_above_256_receipts_is_refused_whole(usage: Any) -> None:
    account = f"acct-{uuid.uuid4()}"

    with pytest.raises(DomainError) as caught:
        await record_batch(usage, [a_receipt(account) for _ in range(257)])
    full = await record_batch(usage, [a_receipt(account) for _ in range(256)])

    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert "256" in caught.value.message
    assert not any(isinstance(o, DomainError) for o in full)
    assert await requests_recorded(usage, account) == 256


@pytest.mark.parametrize("batching", [True, False])
async def test_the_client_answers_a_replay_and_raises_a_conflict_as_domain_error(
    usage_app: RunningService, batching: bool
) -> None:
    client = UsageClient.connect(usage_app.address, INTERNAL, batching=batching)
    account = f"acct-{uuid.uuid4()}"
    sent = [a_receipt(account) for _ in range(20)]
    try:
        await asyncio.gather(*(client.record_receipt(r) for r in sent))
        replays = await asyncio.gather(*(client.record_receipt(r) for r in sent))
        conflicts = await asyncio.gather(
            *(
                client.record_receipt(a_receipt(account, r.request_id, charge_micros=1))
                for r in sent
            ),
            return_exceptions=True,
        )
    finally:
        await client.close()

    assert [r.receipt for r in replays] == sent
    assert all(
        isinstance(c, DomainError) and c.reason is Reason.IDEMPOTENCY_CONFLICT for c in conflicts
    )
    assert client.receipts.batching is batching


@pytest.mark.parametrize("batching", [True, False])
async def test_the_client_retries_an_unavailable_service_then_gives_up(batching: bool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    client = UsageClient.connect(address, INTERNAL, attempts=3, sleep=sleep, batching=batching)
    account = f"acct-{uuid.uuid4()}"
    try:
        failures = await asyncio.gather(
            *(client.record_receipt(a_receipt(account)) for _ in range(5)),
            return_exceptions=True,
        )
    finally:
        await client.close()

    assert all(
        isinstance(f, DomainError) and f.reason is Reason.SERVICE_UNAVAILABLE for f in failures
    )
    # Each caller tried three times, pausing twice.
    assert len(pauses) == 2 * 5
