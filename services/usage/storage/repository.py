"""Where receipts are kept: an abstract repository and its PostgreSQL implementation."""

from __future__ import annotations

import abc
from typing import Any

from sqlalchemy import literal, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.usage.domain.receipts import (
    Attempt,
    Cursor,
    Prices,
    Receipt,
    ReceiptFilter,
    ReceiptStatus,
    RouteKind,
)
from services.usage.storage.tables import receipts
from tokenforge.money import Bucket


class ReceiptRepository(abc.ABC):
    @abc.abstractmethod
    async def add(self, receipt: Receipt) -> Receipt | None:
        """Store the receipt unless its request id has one; the stored receipt, or None
        when another receipt already holds the request id."""

    @abc.abstractmethod
    async def get(self, request_id: str) -> Receipt | None: ...

    @abc.abstractmethod
    async def list(self, where: ReceiptFilter, after: Cursor | None, limit: int) -> list[Receipt]:
        """Newest first (finished_at, then request_id, descending), strictly after `after`."""


def to_row(receipt: Receipt) -> dict[str, Any]:
    return {
        "request_id": receipt.request_id,
        "account_id": receipt.account_id,
        "project_id": receipt.project_id,
        "key_id": receipt.key_id,
        "selected_model": receipt.selected_model,
        "upstream_model": receipt.upstream_model,
        "route_kind": receipt.route_kind.value if receipt.route_kind else None,
        "bucket": receipt.bucket.value if receipt.bucket else None,
        "attempts": [
            {"channel_id": a.channel_id, "outcome": a.outcome, "latency_ms": a.latency_ms}
            for a in receipt.attempts
        ],
        "prompt_tokens": receipt.prompt_tokens,
        "cached_tokens": receipt.cached_tokens,
        "completion_tokens": receipt.completion_tokens,
        "tokens_reported": receipt.tokens_reported,
        "input_price_micros": receipt.prices.input_per_million,
        "cached_input_price_micros": receipt.prices.cached_input_per_million,
        "output_price_micros": receipt.prices.output_per_million,
        "request_fee_micros": receipt.prices.request_fee,
        "charge_micros": receipt.charge_micros,
        "status": receipt.status.value,
        "hold_id": receipt.hold_id,
        "entry_id": receipt.entry_id,
        "trace_id": receipt.trace_id,
        "catalog_version": receipt.catalog_version,
        "run_id": receipt.run_id,
        "endpoint": receipt.endpoint,
        "fallback_used": receipt.fallback_used,
        "error_code": receipt.error_code,
        "settlement_rule": receipt.settlement_rule,
        "started_at": receipt.started_at,
        "finished_at": receipt.finished_at,
    }


def from_row(row: Any) -> Receipt:
    return Receipt(
        request_id=row.request_id,
        account_id=row.account_id,
        project_id=row.project_id,
        key_id=row.key_id,
        selected_model=row.selected_model,
        upstream_model=row.upstream_model,
        route_kind=RouteKind(row.route_kind) if row.route_kind else None,
        bucket=Bucket(row.bucket) if row.bucket else None,
        attempts=tuple(
            Attempt(a["channel_id"], a["outcome"], int(a["latency_ms"])) for a in row.attempts
        ),
        prompt_tokens=row.prompt_tokens,
        cached_tokens=row.cached_tokens,
        completion_tokens=row.completion_tokens,
        tokens_reported=row.tokens_reported,
        prices=Prices(
            input_per_million=row.input_price_micros,
            cached_input_per_million=row.cached_input_price_micros,
            output_per_million=row.output_price_micros,
            request_fee=row.request_fee_micros,
        ),
        charge_micros=row.charge_micros,
        status=ReceiptStatus(row.status),
        hold_id=row.hold_id,
        entry_id=row.entry_id,
        trace_id=row.trace_id,
        catalog_version=row.catalog_version,
        run_id=row.run_id,
        endpoint=row.endpoint,
        fallback_used=row.fallback_used,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error_code=row.error_code,
        settlement_rule=row.settlement_rule,
    )


_COLUMNS = [c for c in receipts.c if c.name != "recorded_at"]


class SqlAlchemyReceiptRepository(ReceiptRepository):
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, receipt: Receipt) -> Receipt | None:
        row = (
            await self._session.execute(
                insert(receipts)
                .values(to_row(receipt))
                .on_conflict_do_nothing(index_elements=[receipts.c.request_id])
                .returning(*_COLUMNS)
            )
        ).first()
        return from_row(row) if row is not None else None

    async def get(self, request_id: str) -> Receipt | None:
        row = (
            await self._session.execute(
                select(*_COLUMNS).where(receipts.c.request_id == request_id)
            )
        ).first()
        return from_row(row) if row is not None else None

    async def list(self, where: ReceiptFilter, after: Cursor | None, limit: int) -> list[Receipt]:
        query = select(*_COLUMNS).where(receipts.c.account_id == where.account_id)
        if where.model:
            query = query.where(
                or_(
                    receipts.c.selected_model == where.model,
                    receipts.c.selected_model.startswith(f"{where.model}@", autoescape=True),
                )
            )
        if where.bucket is not None:
            query = query.where(receipts.c.bucket == where.bucket.value)
        if where.status is not None:
            query = query.where(receipts.c.status == where.status.value)
        if after is not None:
            query = query.where(
                tuple_(receipts.c.finished_at, receipts.c.request_id)
                < tuple_(
                    literal(after.finished_at, receipts.c.finished_at.type),
                    literal(after.request_id, receipts.c.request_id.type),
                )
            )
        query = query.order_by(receipts.c.finished_at.desc(), receipts.c.request_id.desc())
        rows = (await self._session.execute(query.limit(limit))).all()
        return [from_row(r) for r in rows]
