"""The UsageService gRPC servicer: translate wire types, call the use case."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from services.usage import handlers
from services.usage.domain import commands
from services.usage.domain.receipts import (
    AggregateBy,
    Attempt,
    Receipt,
    ReceiptFilter,
    ReceiptStatus,
    RouteAttempt,
    RouteKind,
)
from services.usage.domain.runs import ModelTotal, Run, RunReceipt, RunStatus
from services.usage.storage.unit_of_work import UnitOfWork
from services.usage.transport.wallet_records import WalletRecords
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2, usage_pb2_grpc
from tokenforge.money import Bucket, Price
from tokenforge.runtime.batch_items import check_batch_size, without_nul_items
from tokenforge.runtime.grpc_server import bearer_token
from tokenforge.wire import (
    bucket_from_proto,
    bucket_to_proto,
    from_timestamp,
    item_error_to_proto,
    price_from_proto,
    price_to_proto,
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


def _prices_from_wire(bucket: Bucket | None, wire: common_pb2.Prices) -> Price | None:
    """The prices in the bucket they are in; without a bucket there are none to name."""
    if bucket is not None:
        return price_from_proto(bucket, wire)
    if wire != common_pb2.Prices():
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "The receipt cannot be recorded: prices are in a bucket, name the bucket.",
            {"param": "bucket"},
        )
    return None


def _route_attempt_from_wire(wire: usage_pb2.RouteAttempt) -> RouteAttempt:
    bucket = _optional_enum(wire.bucket, bucket_from_proto)
    return RouteAttempt(
        route_kind=_optional_enum(wire.route_kind, _route_kind),
        bucket=bucket,
        upstream_model=wire.upstream_model,
        prices=_prices_from_wire(bucket, wire.prices),
        hold_id=wire.hold_id,
        outcome=wire.outcome,
        channel_attempts=wire.channel_attempts,
    )


def _route_attempt_to_wire(attempt: RouteAttempt) -> usage_pb2.RouteAttempt:
    return usage_pb2.RouteAttempt(
        route_kind=route_kind_to_proto(attempt.route_kind) if attempt.route_kind else None,
        bucket=bucket_to_proto(attempt.bucket) if attempt.bucket else None,
        upstream_model=attempt.upstream_model,
        prices=price_to_proto(attempt.prices) if attempt.prices else None,
        hold_id=attempt.hold_id,
        outcome=attempt.outcome,
        channel_attempts=attempt.channel_attempts,
    )


def receipt_from_wire(wire: usage_pb2.Receipt) -> Receipt:
    status = STATUSES_FROM_WIRE.get(wire.status)
    if status is None:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "The receipt cannot be recorded: status is required "
            "(succeeded, partial, failed or rejected).",
            {"request_id": wire.request_id},
        )
    bucket = _optional_enum(wire.bucket, bucket_from_proto)
    return Receipt(
        request_id=wire.request_id,
        account_id=wire.account_id,
        status=status,
        project_id=wire.project_id,
        key_id=wire.key_id,
        selected_model=wire.selected_model,
        upstream_model=wire.upstream_model,
        route_kind=_optional_enum(wire.route_kind, _route_kind),
        bucket=bucket,
        attempts=tuple(Attempt(a.channel_id, a.outcome, a.latency_ms) for a in wire.attempts),
        prompt_tokens=wire.prompt_tokens,
        cached_tokens=wire.cached_tokens,
        completion_tokens=wire.completion_tokens,
        tokens_reported=wire.tokens_reported,
        prices=_prices_from_wire(bucket, wire.prices),
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
        route_attempts=tuple(_route_attempt_from_wire(a) for a in wire.route_attempts),
        client_format=wire.client_format,
        cache_write_tokens=wire.cache_write_tokens,
        reasoning_tokens=wire.reasoning_tokens,
        channel_protocol=wire.channel_protocol,
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
        prices=price_to_proto(receipt.prices) if receipt.prices else None,
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
        route_attempts=[_route_attempt_to_wire(a) for a in receipt.route_attempts],
        client_format=receipt.client_format,
        cache_write_tokens=receipt.cache_write_tokens,
        reasoning_tokens=receipt.reasoning_tokens,
        channel_protocol=receipt.channel_protocol,
    )


def filter_from_wire(wire: usage_pb2.ReceiptFilter) -> ReceiptFilter:
    return ReceiptFilter(
        account_id=wire.account_id,
        model=wire.model,
        bucket=_optional_enum(wire.bucket, bucket_from_proto),
        status=STATUSES_FROM_WIRE.get(wire.status),
        key_id=wire.key_id,
        project_id=wire.project_id,
        from_time=from_timestamp(wire.from_time) if wire.HasField("from_time") else None,
        to_time=from_timestamp(wire.to_time) if wire.HasField("to_time") else None,
        run_id=wire.run_id,
    )


AGGREGATE_BY: dict[int, AggregateBy] = {
    usage_pb2.AGGREGATE_BY_DAY: AggregateBy.DAY,
    usage_pb2.AGGREGATE_BY_MODEL: AggregateBy.MODEL,
    usage_pb2.AGGREGATE_BY_KEY: AggregateBy.KEY,
    usage_pb2.AGGREGATE_BY_PROJECT: AggregateBy.PROJECT,
    usage_pb2.AGGREGATE_BY_BUCKET: AggregateBy.BUCKET,
    usage_pb2.AGGREGATE_BY_STATUS: AggregateBy.STATUS,
}

RUN_STATUS_TO_WIRE: dict[RunStatus, int] = {
    RunStatus.OPEN: usage_pb2.RUN_STATUS_OPEN,
    RunStatus.CLOSING: usage_pb2.RUN_STATUS_CLOSING,
    RunStatus.CLOSED: usage_pb2.RUN_STATUS_CLOSED,
    RunStatus.EXPIRED: usage_pb2.RUN_STATUS_EXPIRED,
}


def run_to_wire(run: Run) -> usage_pb2.Run:
    return usage_pb2.Run(
        run_id=run.run_id,
        account_id=run.account_id,
        project_id=run.project_id,
        key_id=run.key_id,
        bucket=bucket_to_proto(run.bucket),
        model=run.model,
        budget_micros=run.budget_micros,
        reserved_micros=run.reserved_micros,
        spent_micros=run.spent_micros,
        requests=run.requests,
        hold_id=run.hold_id,
        status=RUN_STATUS_TO_WIRE[run.status],  # type: ignore[arg-type]
        created_at=timestamp(run.created_at),
        expires_at=timestamp(run.expires_at),
        ended_at=timestamp(run.ended_at),
        entry_id=run.entry_id,
        trace_id=run.trace_id,
        expiring=run.expiring,
        captured_micros=run.captured_micros,
    )


def run_from_wire(wire: usage_pb2.Run) -> Run:
    created = from_timestamp(wire.created_at)
    expires = from_timestamp(wire.expires_at)
    if created is None or expires is None or not wire.bucket:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "The run cannot be opened: bucket, created_at and expires_at are required.",
        )
    return Run(
        run_id=wire.run_id,
        account_id=wire.account_id,
        project_id=wire.project_id,
        key_id=wire.key_id,
        bucket=bucket_from_proto(wire.bucket),
        model=wire.model,
        budget_micros=wire.budget_micros,
        hold_id=wire.hold_id,
        created_at=created,
        expires_at=expires,
        trace_id=wire.trace_id,
    )


def _total(total: ModelTotal) -> usage_pb2.RunModelTotal:
    return usage_pb2.RunModelTotal(
        model=total.model,
        requests=total.requests,
        prompt_tokens=total.prompt_tokens,
        cached_tokens=total.cached_tokens,
        completion_tokens=total.completion_tokens,
        charge_micros=total.charge_micros,
    )


def run_receipt_to_wire(receipt: RunReceipt) -> usage_pb2.RunReceipt:
    return usage_pb2.RunReceipt(
        run=run_to_wire(receipt.run),
        lines=[receipt_to_wire(r) for r in receipt.lines],
        models=[_total(m) for m in receipt.models],
        requests=receipt.total.requests,
        prompt_tokens=receipt.total.prompt_tokens,
        cached_tokens=receipt.total.cached_tokens,
        completion_tokens=receipt.total.completion_tokens,
        charge_micros=receipt.total.charge_micros,
        duration_ms=receipt.duration_ms,
    )


def _read_receipt(wire: usage_pb2.Receipt) -> Receipt | DomainError:
    try:
        return receipt_from_wire(wire)
    except DomainError as error:
        return error


def _outcome(outcome: Receipt | DomainError) -> usage_pb2.RecordReceiptOutcome:
    if isinstance(outcome, DomainError):
        return usage_pb2.RecordReceiptOutcome(error=item_error_to_proto(outcome))
    return usage_pb2.RecordReceiptOutcome(
        answer=usage_pb2.RecordReceiptResponse(receipt=receipt_to_wire(outcome))
    )


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        wallet_for: Callable[[str], WalletRecords] | None = None,
    ) -> None:
        self._uow = uow_factory
        # The wallet's holds and ledger rows for Reconcile, read with the operator's own
        # credential: listing every account is the wallet's operators' alone (None: no
        # wallet address).
        self._wallet_for = wallet_for

    async def RecordReceipt(  # noqa: N802
        self, request: usage_pb2.RecordReceiptRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RecordReceiptResponse:
        receipt = await handlers.record_receipt(
            commands.RecordReceipt(receipt_from_wire(request.receipt)), self._uow()
        )
        return usage_pb2.RecordReceiptResponse(receipt=receipt_to_wire(receipt))

    async def RecordReceipts(  # noqa: N802
        self, request: usage_pb2.RecordReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RecordReceiptsResponse:
        async def record(items: list[Any]) -> list[Any]:
            return await handlers.record_receipts(
                commands.RecordReceipts([_read_receipt(item.receipt) for item in items]),
                self._uow,
            )

        check_batch_size(len(request.receipts), "receipts")
        outcomes = await without_nul_items(request.receipts, record)
        return usage_pb2.RecordReceiptsResponse(outcomes=[_outcome(o) for o in outcomes])

    async def GetReceipt(  # noqa: N802
        self, request: usage_pb2.GetReceiptRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.GetReceiptResponse:
        receipt = await handlers.get_receipt(
            commands.GetReceipt(request.account_id, request.request_id), self._uow()
        )
        return usage_pb2.GetReceiptResponse(receipt=receipt_to_wire(receipt))

    async def ListReceipts(  # noqa: N802
        self, request: usage_pb2.ListReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ListReceiptsResponse:
        if request.HasField("filter"):
            where = filter_from_wire(request.filter)
        else:
            where = ReceiptFilter(
                account_id=request.account_id,
                model=request.model,
                bucket=_optional_enum(request.bucket, bucket_from_proto),
                status=STATUSES_FROM_WIRE.get(request.status),
            )
        page = await handlers.list_receipts(
            commands.ListReceipts(where, request.page_size, request.page_token), self._uow()
        )
        return usage_pb2.ListReceiptsResponse(
            receipts=[receipt_to_wire(r) for r in page.receipts],
            next_page_token=page.next_page_token,
        )

    async def AggregateReceipts(  # noqa: N802
        self, request: usage_pb2.AggregateReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.AggregateReceiptsResponse:
        by = AGGREGATE_BY.get(request.by)
        if by is None:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "Aggregate by one of day, model, key, project, bucket or status.",
                {"param": "by"},
            )
        rows = await handlers.aggregate_receipts(
            commands.AggregateReceipts(filter_from_wire(request.filter), by), self._uow()
        )
        return usage_pb2.AggregateReceiptsResponse(
            rows=[
                usage_pb2.AggregateRow(
                    group=r.group,
                    bucket=bucket_to_proto(r.bucket) if r.bucket else None,
                    requests=r.requests,
                    prompt_tokens=r.prompt_tokens,
                    cached_tokens=r.cached_tokens,
                    completion_tokens=r.completion_tokens,
                    charge_micros=r.charge_micros,
                    cache_write_tokens=r.cache_write_tokens,
                    reasoning_tokens=r.reasoning_tokens,
                )
                for r in rows
            ]
        )

    async def OpenRun(  # noqa: N802
        self, request: usage_pb2.OpenRunRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.OpenRunResponse:
        run = await handlers.open_run(commands.OpenRun(run_from_wire(request.run)), self._uow())
        return usage_pb2.OpenRunResponse(run=run_to_wire(run))

    async def GetRun(  # noqa: N802
        self, request: usage_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.GetRunResponse:
        run = await handlers.get_run(
            commands.GetRun(request.account_id, request.run_id), self._uow()
        )
        return usage_pb2.GetRunResponse(run=run_to_wire(run))

    async def ReserveFromRun(  # noqa: N802
        self, request: usage_pb2.ReserveFromRunRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ReserveFromRunResponse:
        run = await handlers.reserve_from_run(
            commands.ReserveFromRun(
                request.account_id,
                request.run_id,
                request.request_id,
                request.amount_micros,
                _optional_enum(request.bucket, bucket_from_proto),
            ),
            self._uow(),
        )
        return usage_pb2.ReserveFromRunResponse(run=run_to_wire(run))

    async def CloseRun(  # noqa: N802
        self, request: usage_pb2.CloseRunRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.CloseRunResponse:
        run = await handlers.close_run(
            commands.CloseRun(request.account_id, request.run_id), self._uow()
        )
        return usage_pb2.CloseRunResponse(run=run_to_wire(run))

    async def FinishRun(  # noqa: N802
        self, request: usage_pb2.FinishRunRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.FinishRunResponse:
        receipt = await handlers.finish_run(
            commands.FinishRun(request.run_id, request.entry_id, request.captured_micros),
            self._uow(),
        )
        return usage_pb2.FinishRunResponse(receipt=run_receipt_to_wire(receipt))

    async def ExpireRuns(  # noqa: N802
        self, request: usage_pb2.ExpireRunsRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ExpireRunsResponse:
        runs = await handlers.expire_runs(commands.ExpireRuns(request.limit), self._uow())
        return usage_pb2.ExpireRunsResponse(runs=[run_to_wire(r) for r in runs])

    async def GetRunReceipt(  # noqa: N802
        self, request: usage_pb2.GetRunReceiptRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.GetRunReceiptResponse:
        receipt = await handlers.get_run_receipt(
            commands.GetRunReceipt(request.account_id, request.run_id), self._uow()
        )
        return usage_pb2.GetRunReceiptResponse(receipt=run_receipt_to_wire(receipt))

    async def Reconcile(  # noqa: N802
        self, request: usage_pb2.ReconcileRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.ReconcileResponse:
        if self._wallet_for is None:
            raise DomainError(
                Reason.SERVICE_UNAVAILABLE,
                "This usage service was started without the wallet's address, so it cannot "
                "compare receipts with the ledger: set TOKENFORGE_WALLET_ADDR and restart it.",
                {"service": "wallet"},
            )
        wallet = self._wallet_for(bearer_token(context.invocation_metadata() or ()))
        try:
            done = await handlers.reconcile_with_wallet(
                commands.Reconcile(from_timestamp(request.since), tuple(request.account_ids)),
                self._uow,
                wallet,
            )
        finally:
            await wallet.close()
        report = done.report
        return usage_pb2.ReconcileResponse(
            holds_checked=report.holds_checked,
            receipts_checked=report.receipts_checked,
            entries_checked=report.entries_checked,
            runs_checked=done.runs_checked,
            mismatches=[
                usage_pb2.ReconcileMismatch(
                    problem=m.problem.value, subject=m.subject, detail=m.detail
                )
                for m in report.mismatches
            ],
        )
