"""`tokenforge usage ...`: receipts, aggregates, and the receipt <-> ledger
reconciliation (operator verbs, over gRPC with the admin token).

tokenforge usage reconcile [--since 2026-01-01T00:00:00Z] [--account ID ...]
tokenforge usage aggregates <account-id> [--by day|model|key|project|bucket|status]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from apps.cli.common import (
    add_json,
    add_state_dir,
    connection,
    money_fields,
    out,
    out_json,
)


def _since(text: str) -> datetime | None:
    if not text:
        return None
    if text.endswith(("h", "d", "m")) and text[:-1].isdigit():
        unit = {"h": "hours", "d": "days", "m": "minutes"}[text[-1]]
        return datetime.now(UTC) - timedelta(**{unit: int(text[:-1])})
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_usage_reconcile(args: argparse.Namespace) -> int:
    """Usage compares (its Reconcile call reads the wallet itself); this prints."""
    from services.usage.client import UsageClient
    from tokenforge.errors import DomainError

    services, token = connection(args)
    try:
        since = _since(args.since)
    except ValueError:
        sys.stderr.write("--since is an ISO 8601 time or an age like 24h / 7d.\n")
        return 2

    async def main() -> int:
        usage = UsageClient.connect(services["usage"], token)
        try:
            report = await usage.reconcile(since, list(args.account or []))
        finally:
            await usage.close()
        if args.json:
            out_json(
                {
                    "ok": not report.mismatches,
                    "holds_checked": report.holds_checked,
                    "receipts_checked": report.receipts_checked,
                    "entries_checked": report.entries_checked,
                    "runs_checked": report.runs_checked,
                    "mismatches": [
                        {"problem": m.problem, "subject": m.subject, "detail": m.detail}
                        for m in report.mismatches
                    ],
                }
            )
            return 0 if not report.mismatches else 1
        out(
            f"checked {report.holds_checked} ended holds, {report.receipts_checked} receipts, "
            f"{report.entries_checked} request-charge ledger rows, {report.runs_checked} runs"
        )
        for m in report.mismatches:
            out(f"MISMATCH {m.problem} {m.subject}: {m.detail}")
        if not report.mismatches:
            out(
                "ok: every settled or released hold has one receipt with its charge, "
                "every charged receipt has its ledger row"
            )
            return 0
        out(f"{len(report.mismatches)} mismatches")
        return 1

    try:
        return asyncio.run(main())
    except DomainError as error:
        sys.stderr.write(f"refused ({error.reason.value}): {error.message}\n")
        return 1


def cmd_usage_aggregates(args: argparse.Namespace) -> int:
    from services.usage.client import UsageClient
    from tokenforge.errors import DomainError
    from tokenforge.generated.usage.v1 import usage_pb2
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    services, token = connection(args)

    async def main() -> int:
        usage = UsageClient.connect(services["usage"], token)
        try:
            where = usage_pb2.ReceiptFilter(account_id=args.account_id)
            if since := _since(args.since):
                where.from_time.FromDatetime(since)
            rows = await usage.aggregate_receipts(where, f"AGGREGATE_BY_{args.by.upper()}")
        finally:
            await usage.close()
        if args.json:
            shown = []
            for row in rows:
                bucket = bucket_from_proto(row.bucket) if row.bucket else None
                shown.append(
                    {
                        "group": row.group,
                        "bucket": bucket.value if bucket else None,
                        "requests": row.requests,
                        "prompt_tokens": row.prompt_tokens,
                        "completion_tokens": row.completion_tokens,
                        **(
                            money_fields("charged", row.charge_micros, bucket)
                            if bucket
                            else {"charged_micros": row.charge_micros}
                        ),
                    }
                )
            out_json({"account_id": args.account_id, "by": args.by, "rows": shown})
            return 0
        if not rows:
            out("no receipts")
        for row in rows:
            bucket = bucket_from_proto(row.bucket) if row.bucket else None
            charge = format_amount(row.charge_micros, bucket) if bucket else "0"
            out(
                f"{row.group:<24} {(bucket.label if bucket else '-'):<15} "
                f"{row.requests:>8} req  {row.prompt_tokens:>10} in  "
                f"{row.completion_tokens:>10} out  {charge}"
            )
        return 0

    try:
        return asyncio.run(main())
    except DomainError as error:
        sys.stderr.write(f"refused ({error.reason.value}): {error.message}\n")
        return 1


def register(sub: Any) -> None:
    usage = sub.add_parser(
        "usage", help="receipts: aggregates, receipt <-> ledger reconciliation"
    ).add_subparsers(dest="verb", required=True)
    rec = usage.add_parser(
        "reconcile",
        help="every ended hold has one receipt with its charge, every charged receipt its "
        "ledger row; exits 1 on any mismatch",
    )
    add_state_dir(rec)
    rec.add_argument("--since", default="", help="ISO 8601 time or an age (24h, 7d)")
    rec.add_argument("--account", action="append", help="only this account (repeat for more)")
    add_json(rec)
    rec.set_defaults(func=cmd_usage_reconcile)
    agg = usage.add_parser("aggregates", help="requests, tokens and charge per group and bucket")
    add_state_dir(agg)
    agg.add_argument("account_id")
    agg.add_argument(
        "--by", choices=["day", "model", "key", "project", "bucket", "status"], default="day"
    )
    agg.add_argument("--since", default="")
    add_json(agg)
    agg.set_defaults(func=cmd_usage_aggregates)
