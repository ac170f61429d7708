"""Where receipts are kept: an abstract repository and its PostgreSQL implementation."""

from __future__ import annotations

import abc
import builtins
import json
from collections.abc import Collection, Sequence
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Select,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.usage.domain.receipts import (
    AggregateBy,
    AggregateRow,
    Attempt,
    Cursor,
    Receipt,
    ReceiptFilter,
    ReceiptStatus,
    RouteAttempt,
    RouteKind,
)
from services.usage.domain.runs import Draw, Run, RunStatus
from services.usage.storage.tables import receipts, run_draws, runs
from tokenforge.money import Bucket, Price


class ReceiptRepository(abc.ABC):
    @abc.abstractmethod
    async def add(self, receipt: Receipt) -> Receipt | None:
        """Store the receipt unless its request id has one; the stored receipt, or None
        when another receipt already holds the request id."""

    @abc.abstractmethod
    async def add_many(self, batch: Sequence[Receipt]) -> dict[str, Receipt]:
        """`add` for receipts of distinct request ids in one statement: the stored
        ones by request id (a request id already holding a receipt is left out)."""

    @abc.abstractmethod
    async def get(self, request_id: str) -> Receipt | None: ...

    @abc.abstractmethod
    async def get_many(self, request_ids: Collection[str]) -> dict[str, Receipt]:
        """The receipts found, by request id."""

    @abc.abstractmethod
    async def list(
        self, where: ReceiptFilter, after: Cursor | None, limit: int
    ) -> builtins.list[Receipt]:
        """Newest first (finished_at, then request_id, descending), strictly after `after`."""

    @abc.abstractmethod
    async def aggregate(self, where: ReceiptFilter, by: AggregateBy) -> builtins.list[AggregateRow]:
        """Sums per (group, bucket), groups in ascending order."""


def _prices_json(p: Price | None) -> dict[str, int]:
    return {
        "input": p.input_per_million if p else 0,
        "cached_input": p.cached_input_per_million if p else 0,
        "output": p.output_per_million if p else 0,
        "request_fee": p.request_fee if p else 0,
        "cache_write": p.cache_write if p else 0,
    }


def _price(
    bucket: Bucket | None, input: int, cached_input: int, output: int, fee: int, cache_write: int
) -> Price | None:
    """The stored prices in their bucket (None without one: nothing priced it)."""
    if bucket is None:
        return None
    return Price(
        bucket,
        input,
        output,
        cached_input_per_million=cached_input,
        request_fee=fee,
        cache_write_per_million=cache_write,
    )


def _route_attempts_json(receipt: Receipt) -> list[dict[str, Any]]:
    return [
        {
            "route_kind": a.route_kind.value if a.route_kind else None,
            "bucket": a.bucket.value if a.bucket else None,
            "upstream_model": a.upstream_model,
            "prices": _prices_json(a.prices),
            "hold_id": a.hold_id,
            "outcome": a.outcome,
            "channel_attempts": a.channel_attempts,
        }
        for a in receipt.route_attempts
    ]


def _route_attempt(a: dict[str, Any]) -> RouteAttempt:
    bucket = Bucket(a["bucket"]) if a.get("bucket") else None
    p = a["prices"]
    return RouteAttempt(
        route_kind=RouteKind(a["route_kind"]) if a.get("route_kind") else None,
        bucket=bucket,
        upstream_model=a.get("upstream_model", ""),
        prices=_price(
            bucket,
            int(p["input"]),
            int(p["cached_input"]),
            int(p["output"]),
            int(p["request_fee"]),
            # Stored before cache writes were priced apart: the input price.
            int(p.get("cache_write", p["input"])),
        ),
        hold_id=a.get("hold_id", ""),
        outcome=a.get("outcome", ""),
        channel_attempts=int(a.get("channel_attempts", 0)),
    )


def _route_attempts(rows: list[dict[str, Any]] | None) -> tuple[RouteAttempt, ...]:
    return tuple(_route_attempt(a) for a in rows or [])


def to_row(receipt: Receipt) -> dict[str, Any]:
    prices = _prices_json(receipt.prices)
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
        "input_price_micros": prices["input"],
        "cached_input_price_micros": prices["cached_input"],
        "output_price_micros": prices["output"],
        "request_fee_micros": prices["request_fee"],
        "cache_write_price_micros": prices["cache_write"],
        "cache_write_tokens": receipt.cache_write_tokens,
        "reasoning_tokens": receipt.reasoning_tokens,
        "channel_protocol": receipt.channel_protocol,
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
        "route_attempts": _route_attempts_json(receipt),
        "client_format": receipt.client_format,
        "started_at": receipt.started_at,
        "finished_at": receipt.finished_at,
    }


def from_row(row: Any) -> Receipt:
    bucket = Bucket(row.bucket) if row.bucket else None
    return Receipt(
        request_id=row.request_id,
        account_id=row.account_id,
        project_id=row.project_id,
        key_id=row.key_id,
        selected_model=row.selected_model,
        upstream_model=row.upstream_model,
        route_kind=RouteKind(row.route_kind) if row.route_kind else None,
        bucket=bucket,
        attempts=tuple(
            Attempt(a["channel_id"], a["outcome"], int(a["latency_ms"])) for a in row.attempts
        ),
        prompt_tokens=row.prompt_tokens,
        cached_tokens=row.cached_tokens,
        completion_tokens=row.completion_tokens,
        tokens_reported=row.tokens_reported,
        prices=_price(
            bucket,
            row.input_price_micros,
            row.cached_input_price_micros,
            row.output_price_micros,
            row.request_fee_micros,
            row.cache_write_price_micros,
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
        route_attempts=_route_attempts(row.route_attempts),
        client_format=row.client_format,
        cache_write_tokens=row.cache_write_tokens,
        reasoning_tokens=row.reasoning_tokens,
        channel_protocol=row.channel_protocol,
    )


_COLUMNS = [c for c in receipts.c if c.name != "recorded_at"]
_JSON = frozenset(c.name for c in _COLUMNS if isinstance(c.type, JSONB))


def _array_of(column: Column[Any]) -> str:
    if isinstance(column.type, JSONB):
        return "text[]"  # cast to jsonb per row in the SELECT
    if isinstance(column.type, BigInteger):
        return "bigint[]"
    if isinstance(column.type, Boolean):
        return "boolean[]"
    if isinstance(column.type, DateTime):
        return "timestamptz[]"
    return "text[]"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# Any number of receipts in one statement whose text never changes: one array per
# column, unnested into rows. SQLAlchemy caches no postgresql.insert construct (ON
# CONFLICT): it compiles one again on every execution, ~1 ms of CPU for this table,
# and more per row for a multi-row VALUES. A text statement is compiled once, and
# asyncpg keeps it prepared.
_NAMES = ", ".join(c.name for c in _COLUMNS)
_INSERT_MANY = text(
    f"INSERT INTO {receipts.fullname} ({_NAMES}) "
    "SELECT "
    + ", ".join(f"r.{c.name}::jsonb" if c.name in _JSON else f"r.{c.name}" for c in _COLUMNS)
    + " FROM unnest("
    + ", ".join(f"CAST(:{c.name} AS {_array_of(c)})" for c in _COLUMNS)
    + f") AS r({_NAMES}) "
    f"ON CONFLICT (request_id) DO NOTHING RETURNING {_NAMES}"
).columns(*_COLUMNS)


# The same statements for the asyncpg driver (single statements, autocommit).
_INSERT_MANY_SQL = (
    f"INSERT INTO {receipts.fullname} ({_NAMES}) "
    "SELECT "
    + ", ".join(f"r.{c.name}::jsonb" if c.name in _JSON else f"r.{c.name}" for c in _COLUMNS)
    + " FROM unnest("
    + ", ".join(f"${i}::{_array_of(c)}" for i, c in enumerate(_COLUMNS, start=1))
    + f") AS r({_NAMES}) "
    f"ON CONFLICT (request_id) DO NOTHING RETURNING {_NAMES}"
)
_SELECT_BY_IDS_SQL = f"SELECT {_NAMES} FROM {receipts.fullname} WHERE request_id = ANY($1::text[])"


class _Fields:
    """An asyncpg record read like a SQLAlchemy row (`row.name`), JSON decoded (the
    SQLAlchemy dialect's codec hands jsonb over as text)."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        value = self._record[name]
        return json.loads(value) if name in _JSON and isinstance(value, str) else value


class SqlAlchemyReceiptRepository(ReceiptRepository):
    """Receipts through SQLAlchemy Core; with `driver` (an asyncpg connection in
    autocommit, lent by `SqlAlchemyUnitOfWork.single_statements`), recording and the
    replay check run on it directly, one round trip each."""

    def __init__(self, session: AsyncSession, driver: asyncpg.Connection | None = None) -> None:
        self._session = session
        self._driver = driver

    async def add(self, receipt: Receipt) -> Receipt | None:
        return (await self.add_many([receipt])).get(receipt.request_id)

    async def add_many(self, batch: Sequence[Receipt]) -> dict[str, Receipt]:
        if not batch:
            return {}
        # Rows go in request id order: two batches sharing request ids (replays) then
        # take their index entries in the same order and cannot deadlock each other.
        rows = sorted((to_row(r) for r in batch), key=lambda row: str(row["request_id"]))
        columns = {
            c.name: [_json(row[c.name]) if c.name in _JSON else row[c.name] for row in rows]
            for c in _COLUMNS
        }
        if self._driver is not None:
            records = await self._driver.fetch(_INSERT_MANY_SQL, *columns.values())
            return {r["request_id"]: from_row(_Fields(r)) for r in records}
        found = await self._session.execute(_INSERT_MANY, columns)
        return {row.request_id: from_row(row) for row in found}

    async def get(self, request_id: str) -> Receipt | None:
        if self._driver is not None:
            return (await self.get_many([request_id])).get(request_id)
        row = (
            await self._session.execute(
                select(*_COLUMNS).where(receipts.c.request_id == request_id)
            )
        ).first()
        return from_row(row) if row is not None else None

    async def get_many(self, request_ids: Collection[str]) -> dict[str, Receipt]:
        if not request_ids:
            return {}
        if self._driver is not None:
            records = await self._driver.fetch(_SELECT_BY_IDS_SQL, list(request_ids))
            return {r["request_id"]: from_row(_Fields(r)) for r in records}
        found = await self._session.execute(
            select(*_COLUMNS).where(receipts.c.request_id.in_(list(request_ids)))
        )
        return {row.request_id: from_row(row) for row in found}

    async def list(
        self, where: ReceiptFilter, after: Cursor | None, limit: int
    ) -> builtins.list[Receipt]:
        query = filtered(select(*_COLUMNS), where)
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

    async def aggregate(self, where: ReceiptFilter, by: AggregateBy) -> builtins.list[AggregateRow]:
        group = _GROUPS[by]().label("grp")
        query = filtered(
            select(
                group,
                receipts.c.bucket,
                func.count().label("requests"),
                func.coalesce(func.sum(receipts.c.prompt_tokens), 0).label("prompt"),
                func.coalesce(func.sum(receipts.c.cached_tokens), 0).label("cached"),
                func.coalesce(func.sum(receipts.c.completion_tokens), 0).label("completion"),
                func.coalesce(func.sum(receipts.c.charge_micros), 0).label("charge"),
                func.coalesce(func.sum(receipts.c.cache_write_tokens), 0).label("written"),
                func.coalesce(func.sum(receipts.c.reasoning_tokens), 0).label("reasoning"),
            ),
            where,
        ).group_by(group, receipts.c.bucket)
        rows = (await self._session.execute(query.order_by(group, receipts.c.bucket))).all()
        return [
            AggregateRow(
                group=str(r.grp or ""),
                bucket=Bucket(r.bucket) if r.bucket else None,
                requests=int(r.requests),
                prompt_tokens=int(r.prompt),
                cached_tokens=int(r.cached),
                completion_tokens=int(r.completion),
                charge_micros=int(r.charge),
                cache_write_tokens=int(r.written),
                reasoning_tokens=int(r.reasoning),
            )
            for r in rows
        ]


_GROUPS: dict[AggregateBy, Any] = {
    AggregateBy.DAY: lambda: func.to_char(
        func.timezone("UTC", receipts.c.finished_at), "YYYY-MM-DD"
    ),
    AggregateBy.MODEL: lambda: receipts.c.selected_model,
    AggregateBy.KEY: lambda: receipts.c.key_id,
    AggregateBy.PROJECT: lambda: receipts.c.project_id,
    AggregateBy.BUCKET: lambda: receipts.c.bucket,
    AggregateBy.STATUS: lambda: receipts.c.status,
}


def filtered(query: Select[Any], where: ReceiptFilter) -> Select[Any]:
    """The WHERE of a receipt filter; every column it names leads an index (tables.py)."""
    if where.account_id:
        query = query.where(receipts.c.account_id == where.account_id)
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
    if where.key_id:
        query = query.where(receipts.c.key_id == where.key_id)
    if where.project_id:
        query = query.where(receipts.c.project_id == where.project_id)
    if where.run_id:
        query = query.where(receipts.c.run_id == where.run_id)
    if where.from_time is not None:
        query = query.where(receipts.c.finished_at >= where.from_time)
    if where.to_time is not None:
        query = query.where(receipts.c.finished_at < where.to_time)
    return query


class RunRepository(abc.ABC):
    @abc.abstractmethod
    async def add(self, run: Run) -> Run | None:
        """Store a new run; None when the run id is taken."""

    @abc.abstractmethod
    async def get(self, run_id: str, lock: bool = False) -> Run | None:
        """The run; with `lock`, its row is locked until the transaction ends."""

    @abc.abstractmethod
    async def save(self, run: Run) -> None: ...

    @abc.abstractmethod
    async def due(self, now: Any, limit: int) -> builtins.list[Run]:
        """Open runs past their expiry and runs left closing, locked, skipping locked."""

    @abc.abstractmethod
    async def list(self, account_id: str) -> list[Run]: ...

    @abc.abstractmethod
    async def get_draw(self, request_id: str) -> Draw | None: ...

    @abc.abstractmethod
    async def save_draw(self, draw: Draw) -> None: ...

    @abc.abstractmethod
    async def abandon_draws(self, run_id: str) -> int:
        """Mark the run's still-reserved draws abandoned; answers their reserved sum."""


def run_to_row(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "account_id": run.account_id,
        "project_id": run.project_id,
        "key_id": run.key_id,
        "bucket": run.bucket.value,
        "model": run.model,
        "budget_micros": run.budget_micros,
        "reserved_micros": run.reserved_micros,
        "spent_micros": run.spent_micros,
        "requests": run.requests,
        "hold_id": run.hold_id,
        "status": run.status.value,
        "expiring": run.expiring,
        "entry_id": run.entry_id,
        "captured_micros": run.captured_micros,
        "trace_id": run.trace_id,
        "created_at": run.created_at,
        "expires_at": run.expires_at,
        "closing_at": run.closing_at,
        "ended_at": run.ended_at,
    }


def run_from_row(row: Any) -> Run:
    return Run(
        run_id=row.run_id,
        account_id=row.account_id,
        project_id=row.project_id,
        key_id=row.key_id,
        bucket=Bucket(row.bucket),
        model=row.model,
        budget_micros=row.budget_micros,
        reserved_micros=row.reserved_micros,
        spent_micros=row.spent_micros,
        requests=row.requests,
        hold_id=row.hold_id,
        status=RunStatus(row.status),
        expiring=row.expiring,
        entry_id=row.entry_id,
        captured_micros=row.captured_micros,
        trace_id=row.trace_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        closing_at=row.closing_at,
        ended_at=row.ended_at,
    )


class SqlAlchemyRunRepository(RunRepository):
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, run: Run) -> Run | None:
        row = (
            await self._session.execute(
                insert(runs)
                .values(run_to_row(run))
                .on_conflict_do_nothing(index_elements=[runs.c.run_id])
                .returning(*runs.c)
            )
        ).first()
        return run_from_row(row) if row is not None else None

    async def get(self, run_id: str, lock: bool = False) -> Run | None:
        query = select(runs).where(runs.c.run_id == run_id)
        if lock:
            query = query.with_for_update()
        row = (await self._session.execute(query)).first()
        return run_from_row(row) if row is not None else None

    async def save(self, run: Run) -> None:
        await self._session.execute(
            update(runs).where(runs.c.run_id == run.run_id).values(run_to_row(run))
        )

    async def due(self, now: Any, limit: int) -> builtins.list[Run]:
        query = (
            select(runs)
            .where(runs.c.status.in_(["open", "closing"]))
            .where(runs.c.expires_at <= now)
            .order_by(runs.c.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        closing = (
            select(runs)
            .where(runs.c.status == "closing")
            .order_by(runs.c.closing_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        found: dict[str, Run] = {}
        for q in (query, closing):
            for row in (await self._session.execute(q)).all():
                found[row.run_id] = run_from_row(row)
        return list(found.values())

    async def list(self, account_id: str) -> list[Run]:
        rows = (
            await self._session.execute(
                select(runs)
                .where(runs.c.account_id == account_id)
                .order_by(runs.c.created_at.desc())
            )
        ).all()
        return [run_from_row(r) for r in rows]

    async def get_draw(self, request_id: str) -> Draw | None:
        row = (
            await self._session.execute(
                select(run_draws).where(run_draws.c.request_id == request_id).with_for_update()
            )
        ).first()
        if row is None:
            return None
        return Draw(row.run_id, row.request_id, row.reserved_micros, row.charge_micros, row.state)

    async def save_draw(self, draw: Draw) -> None:
        values = {
            "request_id": draw.request_id,
            "run_id": draw.run_id,
            "reserved_micros": draw.reserved_micros,
            "charge_micros": draw.charge_micros,
            "state": draw.state,
        }
        await self._session.execute(
            insert(run_draws)
            .values(values)
            .on_conflict_do_update(
                index_elements=[run_draws.c.request_id],
                set_={"charge_micros": draw.charge_micros, "state": draw.state},
            )
        )

    async def abandon_draws(self, run_id: str) -> int:
        rows = (
            await self._session.execute(
                update(run_draws)
                .where(run_draws.c.run_id == run_id, run_draws.c.state == "reserved")
                .values(state="abandoned")
                .returning(run_draws.c.reserved_micros)
            )
        ).all()
        return sum(int(r.reserved_micros) for r in rows)
