"""`tokenforge usage ...`: receipts, aggregates, and the receipt <-> ledger
reconciliation (operator verbs, over gRPC with the admin token).

tokenforge usage reconcile [--since 2026-01-01T00:00:00Z] [--account ID ...]
tokenforge usage aggregates <account-id> [--by day|model|key|project|bucket|status]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tokenforge.cli.common import (
    add_json,
    add_state_dir,
    connection,
    money_fields,
    out,
    out_json,
)

# Receipts are fetched from this much before --since, so a hold placed just before
# the window still finds its receipt.
RECEIPT_MARGIN = timedelta(hours=1)
PAGE = 500


@dataclass
class Fetched:
    holds: list[Any]
    receipts: list[Any]
    receipts_in_scope: list[Any]
    entries: list[Any]
    runs: list[Any]


def _since(text: str) -> datetime | None:
    if not text:
        return None
    if text.endswith(("h", "d", "m")) and text[:-1].isdigit():
        unit = {"h": "hours", "d": "days", "m": "minutes"}[text[-1]]
        return datetime.now(UTC) - timedelta(**{unit: int(text[:-1])})
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def _pages(call: Any, make: Any, field: str) -> list[Any]:
    items: list[Any] = []
    token = ""
    while True:
        answer = await call(make(token))
        items.extend(getattr(answer, field))
        token = answer.next_page_token
        if not token:
            return items


async def fetch(
    services: dict[str, str], token: str, since: datetime | None, accounts: list[str]
) -> Fetched:
    """Everything the comparison needs: holds, receipts, request-charge ledger rows and
    runs of the named accounts, or of every account (then each listing is one scan
    across accounts: an account whose charges have no receipt at all is seen too)."""
    from tokenforge.runtime.grpc_client import Peer
    from tokenforge.usage.v1 import usage_pb2, usage_pb2_grpc
    from tokenforge.wallet.v1 import wallet_pb2, wallet_pb2_grpc

    usage_peer = Peer("usage", services["usage"], token)
    wallet_peer = Peer("wallet", services["wallet"], token)
    usage = usage_pb2_grpc.UsageServiceStub(usage_peer.channel)
    wallet = wallet_pb2_grpc.WalletServiceStub(wallet_peer.channel)
    try:

        def receipt_filter(account: str, start: datetime | None) -> Any:
            where = usage_pb2.ReceiptFilter(account_id=account)
            if start is not None:
                where.from_time.FromDatetime(start)
            return where

        wide_start = since - RECEIPT_MARGIN if since else None
        names = list(accounts) or [""]  # "": every account
        fetched = Fetched([], [], [], [], [])
        for account in names:
            fetched.receipts += await _pages(
                lambda req: usage_peer.call(usage.ListReceipts, req),
                lambda t, a=account: usage_pb2.ListReceiptsRequest(
                    filter=receipt_filter(a, wide_start), page_size=PAGE, page_token=t
                ),
                "receipts",
            )

            def hold_request(t: str, a: str = account) -> Any:
                req = wallet_pb2.ListHoldsRequest(account_id=a, page_size=PAGE, page_token=t)
                if since is not None:
                    req.from_time.FromDatetime(since)
                return req

            def ledger_request(t: str, a: str = account) -> Any:
                req = wallet_pb2.ListLedgerRequest(
                    account_id=a,
                    kind=wallet_pb2.ENTRY_KIND_REQUEST_CHARGE,
                    page_size=PAGE,
                    page_token=t,
                )
                if since is not None:
                    req.from_time.FromDatetime(since)
                return req

            fetched.holds += await _pages(
                lambda req: wallet_peer.call(wallet.ListHolds, req), hold_request, "holds"
            )
            fetched.entries += await _pages(
                lambda req: wallet_peer.call(wallet.ListLedger, req), ledger_request, "entries"
            )
        fetched.receipts_in_scope = [
            r
            for r in fetched.receipts
            if since is None or r.finished_at.ToDatetime(tzinfo=UTC) >= since
        ]
        run_ids = {r.run_id for r in fetched.receipts if r.run_id} | {
            h.request_id for h in fetched.holds if h.request_id.startswith("run_")
        }
        for run_id in sorted(run_ids):
            answer = await usage_peer.call(usage.GetRun, usage_pb2.GetRunRequest(run_id=run_id))
            fetched.runs.append(answer.run)
        return fetched
    finally:
        await usage_peer.close()
        await wallet_peer.close()


def compare(fetched: Fetched) -> Any:
    """Wire types -> the pure comparison of services.usage.domain.reconcile."""
    from services.usage.domain.reconcile import EntryView, HoldState, HoldView, reconcile
    from services.usage.domain.runs import Run, RunStatus
    from services.usage.transport.grpc import receipt_from_wire
    from tokenforge.usage.v1 import usage_pb2
    from tokenforge.wallet.v1 import wallet_pb2
    from tokenforge.wire import bucket_from_proto, from_timestamp

    states = {
        wallet_pb2.HOLD_STATUS_OPEN: HoldState.OPEN,
        wallet_pb2.HOLD_STATUS_SETTLED: HoldState.SETTLED,
        wallet_pb2.HOLD_STATUS_RELEASED: HoldState.RELEASED,
        wallet_pb2.HOLD_STATUS_EXPIRED: HoldState.EXPIRED,
    }
    run_states = {
        usage_pb2.RUN_STATUS_OPEN: RunStatus.OPEN,
        usage_pb2.RUN_STATUS_CLOSING: RunStatus.CLOSING,
        usage_pb2.RUN_STATUS_CLOSED: RunStatus.CLOSED,
        usage_pb2.RUN_STATUS_EXPIRED: RunStatus.EXPIRED,
    }
    holds = [
        HoldView(
            h.hold_id,
            h.account_id,
            bucket_from_proto(h.bucket),
            h.amount_micros,
            h.captured_micros,
            states.get(h.status, HoldState.OPEN),
            h.request_id,
            h.entry_id,
        )
        for h in fetched.holds
    ]
    entries = [
        EntryView(
            e.entry_id,
            e.account_id,
            bucket_from_proto(e.bucket),
            e.amount_micros,
            e.request_id,
            e.hold_id,
        )
        for e in fetched.entries
    ]
    runs = []
    for r in fetched.runs:
        created = from_timestamp(r.created_at)
        expires = from_timestamp(r.expires_at)
        assert created is not None and expires is not None
        runs.append(
            Run(
                run_id=r.run_id,
                account_id=r.account_id,
                bucket=bucket_from_proto(r.bucket),
                budget_micros=r.budget_micros,
                hold_id=r.hold_id,
                created_at=created,
                expires_at=expires,
                spent_micros=r.spent_micros,
                status=run_states.get(r.status, RunStatus.OPEN),
                entry_id=r.entry_id,
                captured_micros=r.captured_micros,
            )
        )
    return reconcile(
        holds,
        [receipt_from_wire(r) for r in fetched.receipts],
        entries,
        runs,
        [receipt_from_wire(r) for r in fetched.receipts_in_scope],
    )


def cmd_usage_reconcile(args: argparse.Namespace) -> int:
    from tokenforge.errors import DomainError

    services, token = connection(args)
    try:
        since = _since(args.since)
    except ValueError:
        sys.stderr.write("--since is an ISO 8601 time or an age like 24h / 7d.\n")
        return 2

    async def main() -> int:
        fetched = await fetch(services, token, since, list(args.account or []))
        report = compare(fetched)
        if args.json:
            out_json(
                {
                    "ok": report.ok,
                    "holds_checked": report.holds_checked,
                    "receipts_checked": report.receipts_checked,
                    "entries_checked": report.entries_checked,
                    "runs_checked": len(fetched.runs),
                    "mismatches": [
                        {"problem": m.problem.value, "subject": m.subject, "detail": m.detail}
                        for m in report.mismatches
                    ],
                }
            )
            return 0 if report.ok else 1
        out(
            f"checked {report.holds_checked} ended holds, {report.receipts_checked} receipts, "
            f"{report.entries_checked} request-charge ledger rows, {len(fetched.runs)} runs"
        )
        for m in report.mismatches:
            out(f"MISMATCH {m.problem.value} {m.subject}: {m.detail}")
        if report.ok:
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
    from tokenforge.errors import DomainError
    from tokenforge.money import format_amount
    from tokenforge.runtime.grpc_client import Peer
    from tokenforge.usage.v1 import usage_pb2, usage_pb2_grpc
    from tokenforge.wire import bucket_from_proto

    services, token = connection(args)

    async def main() -> int:
        peer = Peer("usage", services["usage"], token)
        try:
            stub = usage_pb2_grpc.UsageServiceStub(peer.channel)
            where = usage_pb2.ReceiptFilter(account_id=args.account_id)
            if since := _since(args.since):
                where.from_time.FromDatetime(since)
            by = usage_pb2.AggregateBy.Value(f"AGGREGATE_BY_{args.by.upper()}")
            answer = await peer.call(
                stub.AggregateReceipts, usage_pb2.AggregateReceiptsRequest(filter=where, by=by)
            )
        finally:
            await peer.close()
        if args.json:
            rows = []
            for row in answer.rows:
                bucket = bucket_from_proto(row.bucket) if row.bucket else None
                rows.append(
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
            out_json({"account_id": args.account_id, "by": args.by, "rows": rows})
            return 0
        if not answer.rows:
            out("no receipts")
        for row in answer.rows:
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
