"""The UsageService gRPC servicer: translate wire types, call the use case."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from services.usage import handlers
from services.usage.domain.receipts import (
    Attempt,
    Prices,
    Receipt,
    ReceiptFilter,
    ReceiptStatus,
    RouteKind,
)
from services.usage.storage.unit_of_work import UnitOfWork
from tokenforge.common.v1 import common_pb2
from tokenforge.errors import DomainError, Reason
from tokenforge.usage.v1 import usage_pb2, usage_pb2_grpc
from tokenforge.wire import (
    bucket_from_proto,
    bucket_to_proto,
    from_timestamp,
    route_kind_from_proto,
    route_kind_to_proto,
    timestamp,
)

T = TypeVar("T")

STATUSES_TO_WIRE: dict[ReceiptStatus, usage_pb2.ReceiptStatus] = {
    ReceiptStatus.SUCCEEDED: usage_pb2.RECEIPT_STATUS_SUCCEEDED,
    ReceiptStatus.PARTIAL: usage_pb2.RECEIPT_STATUS_PARTIAL,
    ReceiptStatus.FAILED: usage_pb2.RECEIPT_STATUS_FAILED,
    ReceiptStatus.REJECTED: usage_pb2.RECEIPT_STATUS_REJECTED,
}
STATUSES_FROM_WIRE: dict[int, ReceiptStatus] = {w: s for s, w in STATUSES_TO_WIRE.items()}


def _route_kind(value: int) -> RouteKind:
    try:
        return RouteKind(route_kind_from_proto(value))
    except ValueError:
        raise DomainError(
            Reason.INVALID_ARGUMENT, f"Unknown route kind {value}: use official or routed."
        ) from None


def _optional_enum(value: int, convert: Callable[[int], T]) -> T | None:
    return convert(value) if value else None


def receipt_from_wire(wire: usage_pb2.Receipt) -> Receipt:
    status = STATUSES_FROM_WIRE.get(wire.status)
    if status is None:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "The receipt cannot be recorded: status is required "
            "(succeeded, partial, failed or rejected).",
            {"request_id": wire.request_id},
        )
    return Receipt(
        request_id=wire.request_id,
        account_id=wire.account_id,
        status=status,
        project_id=wire.project_id,
        key_id=wire.key_id,
        selected_model=wire.selected_model,
        upstream_model=wire.upstream_model,
        route_kind=_optional_enum(wire.route_kind, _route_kind),
        bucket=_optional_enum(wire.bucket, bucket_from_proto),
        attempts=tuple(Attempt(a.channel_id, a.outcome, a.latency_ms) for a in wire.attempts),
        prompt_tokens=wire.prompt_tokens,
        cached_tokens=wire.cached_tokens,
        completion_tokens=wire.completion_tokens,
        tokens_reported=wire.tokens_reported,
        prices=Prices(
            input_per_million=wire.prices.input_per_million_micros,
            cached_input_per_million=wire.prices.cached_input_per_million_micros,
            output_per_million=wire.prices.output_per_million_micros,
            request_fee=wire.prices.request_fee_micros,
        ),
        charge_micros=wire.charge_micros,
        hold_id=wire.hold_id,
        entry_id=wire.entry_id,
        trace_id=wire.trace_id,
        catalog_version=wire.catalog_version,
        run_id=wire.run_id,
        endpoint=wire.endpoint,
        fallback_used=wire.fallback_used,
        started_at=from_timestamp(wire.started_at),
        finished_at=from_timestamp(wire.finished_at),
        error_code=wire.error_code,
        settlement_rule=wire.settlement_rule,
    )


def receipt_to_wire(receipt: Receipt) -> usage_pb2.Receipt:
    return usage_pb2.Receipt(
        request_id=receipt.request_id,
        account_id=receipt.account_id,
        project_id=receipt.project_id,
        key_id=receipt.key_id,
        selected_model=receipt.selected_model,
        upstream_model=receipt.upstream_model,
        route_kind=route_kind_to_proto(receipt.route_kind) if receipt.route_kind else None,
        bucket=bucket_to_proto(receipt.bucket) if receipt.bucket else None,
        attempts=[
            usage_pb2.Attempt(channel_id=a.channel_id, outcome=a.outcome, latency_ms=a.latency_ms)
            for a in receipt.attempts
        ],
        prompt_tokens=receipt.prompt_tokens,
        cached_tokens=receipt.cached_tokens,
        completion_tokens=receipt.completion_tokens,
        tokens_reported=receipt.tokens_reported,
        prices=common_pb2.Prices(
            input_per_million_micros=receipt.prices.input_per_million,
            cached_input_per_million_micros=receipt.prices.cached_input_per_million,
            output_per_million_micros=receipt.prices.output_per_million,
            request_fee_micros=receipt.prices.request_fee,
        ),
        charge_micros=receipt.charge_micros,
        status=STATUSES_TO_WIRE[receipt.status],
        hold_id=receipt.hold_id,
        entry_id=receipt.entry_id,
        trace_id=receipt.trace_id,
        catalog_version=receipt.catalog_version,
        run_id=receipt.run_id,
        endpoint=receipt.endpoint,
        fallback_used=receipt.fallback_used,
        started_at=timestamp(receipt.started_at),
        finished_at=timestamp(receipt.finished_at),
        error_code=receipt.error_code,
        settlement_rule=receipt.settlement_rule,
    )


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):  # type: ignore[misc]
    def __init__(self, uow_factory: Callable[[], UnitOfWork]) -> None:
        self._uow = uow_factory

    async def RecordReceipt(  # noqa: N802
        self, request: usage_pb2.RecordReceiptRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RecordReceiptResponse:
        receipt = await handlers.record_receipt(
            handlers.RecordReceipt(receipt_from_wire(request.receipt)), self._uow()
        )
        return usage_pb2.RecordReceiptResponse(receipt=receipt_to_wire(receipt))

    async def GetReceipt(  # noqa: N802
        self, request: usage_pb2.GetReceiptRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.GetReceiptResponse:
        receipt = await handlers.get_receipt(
            handlers.GetReceipt(request.account_id, request.request_id), self._uow()
        )
        return usage_pb2.GetReceiptResponse(receipt=receipt_to_wire(receipt))

    async def ListReceipts(  # noqa: N802
        self, request: usage_pb2.ListReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ListReceiptsResponse:
        where = ReceiptFilter(
            account_id=request.account_id,
            model=request.model,
            bucket=_optional_enum(request.bucket, bucket_from_proto),
            status=STATUSES_FROM_WIRE.get(request.status),
        )
        page = await handlers.list_receipts(
            handlers.ListReceipts(where, request.page_size, request.page_token), self._uow()
        )
        return usage_pb2.ListReceiptsResponse(
            receipts=[receipt_to_wire(r) for r in page.receipts],
            next_page_token=page.next_page_token,
        )
