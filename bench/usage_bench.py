"""Usage benchmark: history listing and aggregates on 1,000,000 receipts.

Starts an embedded PostgreSQL, applies the usage migrations (with the history
indexes of 0003), bulk-inserts N receipts with one INSERT ... SELECT over
generate_series (1,000 accounts; one "big" account holds 10% of them, over 90 days,
3 models, 5 keys, 2 buckets, 4 statuses;
the whole set spans 90 days), ANALYZEs, then times the use cases
in-process (handlers + SqlAlchemy unit of work, no gRPC) on the big account:

- the first page of the history, a page deep behind a cursor, filters by model,
  key, status and a one-week window;
- aggregates by day / model / key / status over 30 days and over everything.

Prints a table (median and p95 of R repetitions, ms) and writes
bench-results/usage.json. Not part of `make test`:
`.venv/bin/python bench/usage_bench.py [--receipts 1000000] [--repeat 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from services.usage import app as usage_app
from services.usage import handlers
from services.usage.domain import commands
from services.usage.domain.receipts import AggregateBy, ReceiptFilter, ReceiptStatus
from services.usage.storage.unit_of_work import SqlAlchemyUnitOfWork
from tokenforge.runtime.db import create_engine, sessionmaker
from tokenforge.runtime.embedded import EmbeddedPostgres

log = logging.getLogger("bench.usage")
BIG = "acct_big"
END = datetime(2026, 3, 1, tzinfo=UTC)

FILL = """
INSERT INTO usage.receipts (
  request_id, account_id, project_id, key_id, selected_model, upstream_model, route_kind,
  bucket, attempts, prompt_tokens, cached_tokens, completion_tokens, tokens_reported,
  input_price_micros, cached_input_price_micros, output_price_micros, request_fee_micros,
  charge_micros, status, hold_id, entry_id, trace_id, catalog_version, run_id, endpoint,
  fallback_used, error_code, settlement_rule, started_at, finished_at)
SELECT
  'req-' || i,
  CASE WHEN i % 10 = 0 THEN CAST(:big AS text) ELSE 'acct_' || (i % 999) END,
  'prj_' || (i / 10 % 3),
  'key_' || (i / 10 % 5),
  (ARRAY['demo-chat', 'demo-chat@routed', 'demo-embed'])[1 + i / 7 % 3],
  'mock-gpt', CASE WHEN i / 7 % 3 = 1 THEN 'routed' ELSE 'official' END,
  CASE WHEN i / 7 % 3 = 1 THEN 'routed' ELSE 'credit' END,
  '[{"channel_id": "mock-primary", "outcome": "ok", "latency_ms": 80}]'::jsonb,
  100 + i % 400, 0, 50 + i % 300, true, 2500000, 1250000, 10000000, 0,
  CASE WHEN i % 17 = 0 THEN 0 ELSE 1000 + i % 5000 END,
  (ARRAY['succeeded', 'succeeded', 'succeeded', 'partial', 'failed', 'rejected'])[1 + i / 10 % 6],
  'hold-' || i, 'entry-' || i, md5(i::text), 'v1', '', 'chat.completions',
  false, '', 'finished_with_usage',
  CAST(:end AS timestamptz) - (i * 7776 / 1000 + 1) * interval '1 second',
  CAST(:end AS timestamptz) - (i * 7776 / 1000) * interval '1 second'
FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS i
"""


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    await call()  # warm
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[max(int(len(samples) * 0.95) - 1, 0)], 2),
    }


async def bench(database_url: str, receipts: int, repeat: int) -> dict[str, Any]:
    engine = create_engine(database_url)
    sessions = sessionmaker(engine)
    began = time.perf_counter()
    async with engine.begin() as conn:
        step = 200_000
        for start in range(1, receipts + 1, step):
            await conn.execute(
                text(FILL),
                {"big": BIG, "end": END, "start": start, "stop": min(start + step - 1, receipts)},
            )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE usage.receipts"))
    fill_s = time.perf_counter() - began

    def uow() -> SqlAlchemyUnitOfWork:
        return SqlAlchemyUnitOfWork(sessions)

    async def page(where: ReceiptFilter, token: str = "") -> handlers.ReceiptPage:
        return await handlers.list_receipts(commands.ListReceipts(where, 50, token), uow())

    token = ""
    for _ in range(100):
        token = (await page(ReceiptFilter(BIG), token)).next_page_token
    month = ReceiptFilter(BIG, from_time=END - timedelta(days=30))
    week = ReceiptFilter(BIG, from_time=END - timedelta(days=14), to_time=END - timedelta(days=7))
    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "list: first page (50)": lambda: page(ReceiptFilter(BIG)),
        "list: page 101 (cursor)": lambda: page(ReceiptFilter(BIG), token),
        "list: model filter": lambda: page(ReceiptFilter(BIG, model="demo-embed")),
        "list: key filter": lambda: page(ReceiptFilter(BIG, key_id="key_3")),
        "list: status=failed": lambda: page(ReceiptFilter(BIG, status=ReceiptStatus.FAILED)),
        "list: one-week window": lambda: page(week),
    }
    for by in (AggregateBy.DAY, AggregateBy.MODEL, AggregateBy.KEY, AggregateBy.STATUS):
        cases[f"aggregate by {by.value}, 30 days"] = lambda by=by: handlers.aggregate_receipts(
            commands.AggregateReceipts(month, by), uow()
        )
    cases["aggregate by day, all 90 days"] = lambda: handlers.aggregate_receipts(
        commands.AggregateReceipts(ReceiptFilter(BIG), AggregateBy.DAY), uow()
    )
    results = {name: await timed(repeat, call) for name, call in cases.items()}
    async with engine.connect() as conn:
        big = (
            await conn.execute(
                text("SELECT count(*) FROM usage.receipts WHERE account_id = :a"), {"a": BIG}
            )
        ).scalar_one()
    await engine.dispose()
    return {
        "receipts": receipts,
        "big_account_receipts": big,
        "fill_seconds": round(fill_s, 1),
        "repeat": repeat,
        "results": results,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--receipts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="usage-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", durable=True)
        database_url = pg.start()
        try:
            usage_app.migrate(database_url)
            report = asyncio.run(bench(database_url, args.receipts, args.repeat))
        finally:
            pg.stop()
    log.info(
        "%s receipts (%s in the measured account), filled in %s s",
        report["receipts"],
        report["big_account_receipts"],
        report["fill_seconds"],
    )
    log.info("| case | median ms | p95 ms |")
    log.info("| --- | ---: | ---: |")
    for name, r in report["results"].items():
        log.info("| %s | %s | %s |", name, r["median_ms"], r["p95_ms"])
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "usage.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
