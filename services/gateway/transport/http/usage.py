"""The user API for usage: receipts, history (filters, cursor, CSV) and aggregates."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from services.gateway.adapters.peers import Peers
from services.gateway.presenting import amount, paid_from_json, receipt_json
from services.gateway.transport.http.answers import (
    AGGREGATES,
    PAID_FROM,
    RECEIPT,
    answer,
    listing,
)
from services.gateway.transport.http.common import Deps, PageSize, json_response
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.money import format_amount
from tokenforge.wire import (
    bucket_from_name,
    bucket_from_proto,
    bucket_to_proto,
    route_kind_from_proto,
)

log = logging.getLogger(__name__)

STATUSES = {
    "succeeded": usage_pb2.RECEIPT_STATUS_SUCCEEDED,
    "partial": usage_pb2.RECEIPT_STATUS_PARTIAL,
    "failed": usage_pb2.RECEIPT_STATUS_FAILED,
    "rejected": usage_pb2.RECEIPT_STATUS_REJECTED,
}
STATUS_NAMES = {v: k for k, v in STATUSES.items()}
AGGREGATE_BY = {
    "day": usage_pb2.AGGREGATE_BY_DAY,
    "model": usage_pb2.AGGREGATE_BY_MODEL,
    "key": usage_pb2.AGGREGATE_BY_KEY,
    "project": usage_pb2.AGGREGATE_BY_PROJECT,
    "bucket": usage_pb2.AGGREGATE_BY_BUCKET,
    "status": usage_pb2.AGGREGATE_BY_STATUS,
}
CSV_COLUMNS = (
    "request_id",
    "finished_at",
    "status",
    "selected_model",
    "upstream_model",
    "route",
    "bucket",
    "key_id",
    "project_id",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "charge",
    "charge_micros",
    "hold_id",
    "ledger_entry_id",
    "run_id",
    "trace_id",
    # Added after the first columns, so readers by position keep working.
    "cache_write_tokens",
    "reasoning_tokens",
    "client_format",
    "channel_protocol",
)


def _time(value: str | None, param: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"`{param}` is an ISO 8601 time, e.g. 2026-01-05T00:00:00Z.",
            {"param": param},
        ) from None
    if parsed.tzinfo is None:
        raise DomainError(
            Reason.INVALID_ARGUMENT, f"`{param}` needs a time zone (Z or +hh:mm).", {"param": param}
        )
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"`{param}` is outside the years 1 to 9999 once in UTC.",
            {"param": param},
        ) from None


def receipt_filter(account_id: str, params: dict[str, str | None]) -> usage_pb2.ReceiptFilter:
    """The query string of GET /v1/usage (and /aggregates) as a usage filter."""
    where = usage_pb2.ReceiptFilter(
        account_id=account_id,
        model=params.get("model") or "",
        key_id=params.get("key") or "",
        project_id=params.get("project") or "",
        run_id=params.get("run") or "",
    )
    if bucket := params.get("bucket"):
        try:
            where.bucket = bucket_to_proto(bucket_from_name(bucket))
        except (KeyError, ValueError):
            raise DomainError(
                Reason.INVALID_ARGUMENT, "`bucket` is `credit` or `routed`.", {"param": "bucket"}
            ) from None
    if status := params.get("status"):
        if status not in STATUSES:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"`status` is one of {', '.join(STATUSES)}.",
                {"param": "status"},
            )
        where.status = STATUSES[status]
    if start := _time(params.get("from"), "from"):
        where.from_time.FromDatetime(start)
    if end := _time(params.get("to"), "to"):
        where.to_time.FromDatetime(end)
    return where


def csv_row(r: usage_pb2.Receipt) -> list[Any]:
    bucket = bucket_from_proto(r.bucket) if r.bucket else None
    return [
        r.request_id,
        r.finished_at.ToDatetime().isoformat() + "Z",
        STATUS_NAMES.get(r.status, ""),
        r.selected_model,
        r.upstream_model,
        route_kind_from_proto(r.route_kind) if r.route_kind else "",
        bucket.value if bucket else "",
        r.key_id,
        r.project_id,
        r.prompt_tokens,
        r.cached_tokens,
        r.completion_tokens,
        format_amount(r.charge_micros, bucket) if bucket else "0",
        r.charge_micros,
        r.hold_id,
        r.entry_id,
        r.run_id,
        r.trace_id,
        r.cache_write_tokens,
        r.reasoning_tokens,
        r.client_format or "openai",
        r.channel_protocol,
    ]


def _csv_line(values: list[Any] | tuple[Any, ...]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode()


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    def params_of(request: Request) -> dict[str, str | None]:
        return dict(request.query_params)

    @r.get("/v1/usage/aggregates", tags=["usage"], responses=answer(AGGREGATES))
    async def aggregates(
        request: Request,
        by: str = "day",
        from_: str | None = Query(None, alias="from"),
        to: str | None = None,
        model: str | None = None,
        key: str | None = None,
        project: str | None = None,
        bucket: str | None = None,
        status: str | None = None,
        run: str | None = None,
    ) -> Response:
        """Requests, tokens and charge by day / model / key / project / bucket / status,
        always per bucket (Credit and Routed balance are never added together). Same
        filters as GET /v1/usage."""
        who = await deps.reader(request)
        if by not in AGGREGATE_BY:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"`by` is one of {', '.join(AGGREGATE_BY)}.",
                {"param": "by"},
            )
        found = await peers.usage_client.aggregate_receipts(
            receipt_filter(who.account_id, params_of(request)), AGGREGATE_BY[by]
        )
        rows = []
        for row in found:
            bucket = bucket_from_proto(row.bucket) if row.bucket else None
            rows.append(
                {
                    by: row.group,
                    "bucket": bucket.value if bucket else None,
                    "requests": row.requests,
                    "prompt_tokens": row.prompt_tokens,
                    "cached_tokens": row.cached_tokens,
                    "cache_write_tokens": row.cache_write_tokens,
                    "completion_tokens": row.completion_tokens,
                    "reasoning_tokens": row.reasoning_tokens,
                    "charge": {
                        "micros": row.charge_micros,
                        "display": format_amount(row.charge_micros, bucket) if bucket else "0",
                    },
                }
            )
        return json_response({"object": "list", "by": by, "data": rows})

    @r.get("/v1/usage/{receipt_request_id}", tags=["usage"], responses=answer(RECEIPT))
    async def get_receipt(receipt_request_id: str, request: Request) -> Response:
        """The receipt of one request, with its ledger row and trace id."""
        who = await deps.reader(request)
        receipt = await peers.usage_client.get_receipt(who.account_id, receipt_request_id)
        return json_response(receipt_json(receipt))

    @r.get("/v1/usage/{receipt_request_id}/paid-from", tags=["usage"], responses=answer(PAID_FROM))
    async def paid_from(receipt_request_id: str, request: Request) -> Response:
        """The top-ups (credits) that paid this request, first in, first out, with what
        each paid; empty until its ledger row exists (docs/GLOSSARY.md, "What a top-up
        paid for")."""
        who = await deps.reader(request)
        receipt = await peers.usage_client.get_receipt(who.account_id, receipt_request_id)
        paid = await peers.wallet_client.paid_from(
            who.account_id, receipt_request_id, request_id=request.state.request_id
        )
        bucket = bucket_from_proto(receipt.bucket)
        return json_response(
            {
                "object": "list",
                "request_id": receipt_request_id,
                "charge": amount(receipt.charge_micros, bucket),
                "data": paid_from_json(paid, bucket),
            }
        )

    @r.get("/v1/usage", tags=["usage"], responses=answer(listing(RECEIPT)))
    async def list_receipts(
        request: Request,
        limit: PageSize = 50,
        cursor: str | None = None,
        from_: str | None = Query(None, alias="from"),
        to: str | None = None,
        model: str | None = None,
        key: str | None = None,
        project: str | None = None,
        bucket: str | None = None,
        status: str | None = None,
        run: str | None = None,
    ) -> Response:
        """Receipts newest first. Filters: from, to (ISO 8601), model, key, project,
        bucket, status, run; `cursor` is the previous page's next_cursor. With
        `Accept: text/csv` every matching receipt streams as CSV."""
        who = await deps.reader(request)
        where = receipt_filter(who.account_id, params_of(request))
        if "text/csv" in request.headers.get("accept", ""):
            request_id = request.state.request_id

            async def rows() -> AsyncIterator[bytes]:
                yield _csv_line(CSV_COLUMNS)
                token = ""
                while True:
                    page = await peers.usage_client.list_receipts(
                        where, page_size=500, page_token=token, request_id=request_id
                    )
                    for receipt in page.receipts:
                        yield _csv_line(csv_row(receipt))
                    token = page.next_page_token
                    if not token:
                        break

            return StreamingResponse(
                rows(),
                media_type="text/csv",
                headers={"content-disposition": 'attachment; filename="usage.csv"'},
            )
        answer = await peers.usage_client.list_receipts(
            where, page_size=limit, page_token=cursor or ""
        )
        return json_response(
            {
                "object": "list",
                "data": [receipt_json(r) for r in answer.receipts],
                "next_cursor": answer.next_page_token or None,
            }
        )

    return r
