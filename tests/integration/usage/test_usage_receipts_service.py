"""UsageService through gRPC against the real database: idempotency, privacy, paging."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2

BASE_TIME = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def a_receipt(account: str, request_id: str = "", **changes: Any) -> usage_pb2.Receipt:
    receipt = usage_pb2.Receipt(
        request_id=request_id or f"req-{uuid.uuid4()}",
        account_id=account,
        project_id="prj_1",
        key_id="key_1",
        selected_model="demo-chat",
        upstream_model="mock-gpt-official",
        route_kind=common_pb2.ROUTE_KIND_OFFICIAL,
        bucket=common_pb2.BUCKET_CREDIT,
        attempts=[
            usage_pb2.Attempt(channel_id="mock-primary", outcome="http_502", latency_ms=12),
            usage_pb2.Attempt(channel_id="mock-backup", outcome="ok", latency_ms=80),
        ],
        prompt_tokens=120,
        cached_tokens=20,
        completion_tokens=300,
        tokens_reported=True,
        prices=common_pb2.Prices(
            input_per_million_micros=2_500_000,
            cached_input_per_million_micros=1_250_000,
            output_per_million_micros=10_000_000,
        ),
        charge_micros=3_275,
        status=usage_pb2.RECEIPT_STATUS_SUCCEEDED,
        hold_id="hold_1",
        entry_id="entry_1",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        catalog_version="0123456789ab",
        endpoint="chat",
    )
    receipt.started_at.FromDatetime(BASE_TIME - timedelta(seconds=2))
    receipt.finished_at.FromDatetime(BASE_TIME)
    for name, value in changes.items():
        if isinstance(value, datetime):
            getattr(receipt, name).FromDatetime(value)
        else:
            setattr(receipt, name, value)
    return receipt


async def record(usage: Any, receipt: usage_pb2.Receipt) -> usage_pb2.Receipt:
    answer = await usage.call("RecordReceipt", usage_pb2.RecordReceiptRequest(receipt=receipt))
    return answer.receipt


async def test_a_recorded_receipt_reads_back_field_for_field(usage) -> None:
    sent = a_receipt(f"acct-{uuid.uuid4()}")

    recorded = await record(usage, sent)
    read = await usage.call(
        "GetReceipt",
        usage_pb2.GetReceiptRequest(account_id=sent.account_id, request_id=sent.request_id),
    )

    assert recorded == sent
    assert read.receipt == sent


async def test_recording_the_same_receipt_again_answers_the_first(usage) -> None:
    sent = a_receipt(f"acct-{uuid.uuid4()}")

    first = await record(usage, sent)
    again = await record(usage, sent)

    assert first == again == sent


async def test_a_different_receipt_for_the_same_request_is_a_conflict(usage) -> None:
    account = f"acct-{uuid.uuid4()}"
    sent = a_receipt(account)
    await record(usage, sent)

    with pytest.raises(DomainError) as caught:
        await record(usage, a_receipt(account, sent.request_id, charge_micros=9_999))

    assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    read = await usage.call(
        "GetReceipt", usage_pb2.GetReceiptRequest(account_id=account, request_id=sent.request_id)
    )
    assert read.receipt.charge_micros == 3_275


async def test_another_accounts_receipt_is_not_found(usage) -> None:
    sent = a_receipt(f"acct-{uuid.uuid4()}")
    await record(usage, sent)

    with pytest.raises(DomainError) as caught:
        await usage.call(
            "GetReceipt",
            usage_pb2.GetReceiptRequest(
                account_id=f"acct-{uuid.uuid4()}", request_id=sent.request_id
            ),
        )

    assert caught.value.reason is Reason.NOT_FOUND
    assert sent.account_id not in caught.value.message


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"request_id": ""}, "request_id"),
        ({"account_id": ""}, "account_id"),
        ({"charge_micros": -1}, "charge_micros"),
        ({"status": usage_pb2.RECEIPT_STATUS_UNSPECIFIED}, "status"),
    ],
)
async def test_an_incomplete_receipt_is_refused(usage, changes: dict[str, Any], words: str) -> None:
    receipt = a_receipt(f"acct-{uuid.uuid4()}")
    for name, value in changes.items():
        setattr(receipt, name, value)

    with pytest.raises(DomainError) as caught:
        await record(usage, receipt)

    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert words in caught.value.message


async def test_recording_is_closed_to_the_operator_credential(usage_operator) -> None:
    with pytest.raises(DomainError) as caught:
        await record(usage_operator, a_receipt(f"acct-{uuid.uuid4()}"))

    assert caught.value.reason is Reason.PERMISSION_DENIED


async def test_pages_cover_every_receipt_once_newest_first(usage, usage_operator) -> None:
    account = f"acct-{uuid.uuid4()}"
    sent = []
    for n in range(23):
        # Pairs share a finished_at, so the request id must break the tie.
        finished = BASE_TIME + timedelta(seconds=n // 2)
        sent.append(
            await record(
                usage, a_receipt(account, f"req-{n:03d}-{uuid.uuid4()}", finished_at=finished)
            )
        )
    await record(usage, a_receipt(f"acct-{uuid.uuid4()}"))  # another account's, never listed

    seen: list[usage_pb2.Receipt] = []
    token = ""
    pages = 0
    while True:
        answer = await usage_operator.call(
            "ListReceipts",
            usage_pb2.ListReceiptsRequest(account_id=account, page_size=5, page_token=token),
        )
        pages += 1
        seen.extend(answer.receipts)
        token = answer.next_page_token
        if not token:
            break

    assert pages == 5
    assert sorted(r.request_id for r in seen) == sorted(r.request_id for r in sent)
    assert len({r.request_id for r in seen}) == len(seen) == 23
    order = [(r.finished_at.ToDatetime(), r.request_id) for r in seen]
    assert order == sorted(order, reverse=True)


async def test_list_filters_by_model_bucket_and_status(usage) -> None:
    account = f"acct-{uuid.uuid4()}"
    official = await record(usage, a_receipt(account))
    routed = await record(
        usage,
        a_receipt(
            account,
            selected_model="demo-chat@routed",
            route_kind=common_pb2.ROUTE_KIND_ROUTED,
            bucket=common_pb2.BUCKET_ROUTED,
        ),
    )
    failed = await record(
        usage,
        a_receipt(
            account,
            selected_model="demo-embed",
            status=usage_pb2.RECEIPT_STATUS_FAILED,
            charge_micros=0,
        ),
    )

    async def ids(**filters: Any) -> set[str]:
        answer = await usage.call(
            "ListReceipts", usage_pb2.ListReceiptsRequest(account_id=account, **filters)
        )
        return {r.request_id for r in answer.receipts}

    assert await ids(model="demo-chat") == {official.request_id, routed.request_id}
    assert await ids(bucket=common_pb2.BUCKET_ROUTED) == {routed.request_id}
    assert await ids(status=usage_pb2.RECEIPT_STATUS_FAILED) == {failed.request_id}
    assert await ids() == {official.request_id, routed.request_id, failed.request_id}


async def test_a_page_token_that_was_not_given_is_refused(usage) -> None:
    with pytest.raises(DomainError) as caught:
        await usage.call(
            "ListReceipts",
            usage_pb2.ListReceiptsRequest(account_id="acct-x", page_token="not-a-token"),
        )

    assert caught.value.reason is Reason.INVALID_ARGUMENT


async def test_a_receipt_sent_without_finish_time_is_stamped_and_replays_cleanly(usage) -> None:
    sent = a_receipt(f"acct-{uuid.uuid4()}")
    sent.ClearField("finished_at")

    first = await record(usage, sent)
    again = await record(usage, sent)

    assert first.HasField("finished_at")
    assert abs(first.finished_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    assert again == first
