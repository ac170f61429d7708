"""Balances, the ledger, holds, adjustments, reversals and reconciliation (operator
verbs)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from apps.cli.common import (
    add_json,
    add_state_dir,
    amount_arg,
    connection,
    money_fields,
    operator_call,
    out,
    out_json,
)


def wallet_call(args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]) -> int:
    """Run `action(wallet_client)` with the operator's credential; refusals exit 1."""
    from services.wallet.client import WalletClient
    from tokenforge.errors import DomainError

    services, token = connection(args)
    if not services.get("wallet"):
        sys.stderr.write(
            "No wallet address: start `tokenforge dev` (dev.json) or set "
            "TOKENFORGE_WALLET_ADDR and TOKENFORGE_ADMIN_TOKEN.\n"
        )
        return 2

    async def main() -> int:
        client = WalletClient.connect(services["wallet"], token, deadline=30.0)
        try:
            return await action(client)
        except DomainError as error:
            sys.stderr.write(f"refused ({error.reason.value}): {error.message}\n")
            return 1
        finally:
            await client.close()

    return asyncio.run(main())


def _when(stamp: Any) -> str:
    return str(stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))


def cmd_wallet_ledger(args: argparse.Namespace) -> int:
    from tokenforge.generated.wallet.v1 import wallet_pb2
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_name, bucket_from_proto

    bucket = bucket_from_name(args.bucket) if args.bucket else None
    kind = wallet_pb2.EntryKind.Value(f"ENTRY_KIND_{args.kind.upper()}") if args.kind else 0

    async def action(client: Any) -> int:
        page = await client.ledger(
            args.account_id,
            bucket=bucket,
            kind=kind,
            request_id=args.request_id,
            order_id=args.order_id,
            page_size=args.limit,
            page_token=args.cursor,
        )
        if args.json:
            out_json(
                {
                    "data": [_entry_json(e) for e in page.entries],
                    "next_cursor": page.next_page_token or None,
                }
            )
            return 0
        if not page.entries:
            out("no ledger rows")
        for e in page.entries:
            b = bucket_from_proto(e.bucket)
            kind_name = wallet_pb2.EntryKind.Name(e.kind).removeprefix("ENTRY_KIND_").lower()
            refs = " ".join(
                f"{name}={value}"
                for name, value in (
                    ("request", e.request_id),
                    ("order", e.order_id),
                    ("reverses", e.reverses_entry_id),
                    ("by", e.operator),
                    ("reason", e.reason),
                )
                if value
            )
            out(
                f"{_when(e.created_at)}  {e.entry_id}  {kind_name:<14} {b.label:<15} "
                f"{format_amount(e.amount_micros, b):>14}  balance "
                f"{format_amount(e.balance_after_micros, b):>14}  {refs}".rstrip()
            )
        if page.next_page_token:
            out(f"(more rows: --cursor {page.next_page_token})")
        return 0

    return wallet_call(args, action)


def _entry_json(e: Any) -> dict[str, Any]:
    from tokenforge.generated.wallet.v1 import wallet_pb2
    from tokenforge.vocabulary import ENTRY_KINDS
    from tokenforge.wire import bucket_from_proto

    b = bucket_from_proto(e.bucket)
    kind = wallet_pb2.EntryKind.Name(e.kind).removeprefix("ENTRY_KIND_").lower()
    return {
        "entry_id": e.entry_id,
        "created_at": e.created_at.ToDatetime().isoformat() + "Z",
        "kind": kind,
        "kind_text": ENTRY_KINDS[kind].reads if kind in ENTRY_KINDS else kind,
        "bucket": b.value,
        **money_fields("change", e.amount_micros, b),
        **money_fields("balance_after", e.balance_after_micros, b),
        "request_id": e.request_id or None,
        "order_id": e.order_id or None,
        "reverses_entry_id": e.reverses_entry_id or None,
        "operator": e.operator or None,
        "reason": e.reason or None,
    }


def _hold_json(h: Any) -> dict[str, Any]:
    from tokenforge.generated.wallet.v1 import wallet_pb2
    from tokenforge.wire import bucket_from_proto

    b = bucket_from_proto(h.bucket)
    return {
        "hold_id": h.hold_id,
        "status": wallet_pb2.HoldStatus.Name(h.status).removeprefix("HOLD_STATUS_").lower(),
        "bucket": b.value,
        **money_fields("held", h.amount_micros, b),
        **money_fields("charged", h.captured_micros, b),
        "request_id": h.request_id,
        "created_at": h.created_at.ToDatetime().isoformat() + "Z",
        "expires_at": h.expires_at.ToDatetime().isoformat() + "Z",
    }


def cmd_wallet_holds(args: argparse.Namespace) -> int:
    from tokenforge.generated.wallet.v1 import wallet_pb2
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    status = wallet_pb2.HoldStatus.Value(f"HOLD_STATUS_{args.status.upper()}") if args.status else 0

    async def action(client: Any) -> int:
        page = await client.holds(
            args.account_id, status=status, page_size=args.limit, page_token=args.cursor
        )
        if args.json:
            out_json(
                {
                    "data": [_hold_json(h) for h in page.holds],
                    "next_cursor": page.next_page_token or None,
                }
            )
            return 0
        if not page.holds:
            out("no holds")
        for h in page.holds:
            b = bucket_from_proto(h.bucket)
            state = wallet_pb2.HoldStatus.Name(h.status).removeprefix("HOLD_STATUS_").lower()
            out(
                f"{_when(h.created_at)}  {h.hold_id}  {state:<8} {b.label:<15} "
                f"{format_amount(h.amount_micros, b):>14}  captured "
                f"{format_amount(h.captured_micros, b):>14}  expires {_when(h.expires_at)}  "
                f"request={h.request_id}"
            )
        if page.next_page_token:
            out(f"(more holds: --cursor {page.next_page_token})")
        return 0

    return wallet_call(args, action)


def cmd_wallet_release(args: argparse.Namespace) -> int:
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    async def action(client: Any) -> int:
        hold = await client.release(args.hold_id, reason=args.reason)
        bucket = bucket_from_proto(hold.bucket)
        out(
            f"hold {hold.hold_id} released: "
            f"{format_amount(hold.amount_micros - hold.captured_micros, bucket)} back to "
            f"{bucket.label} (it had captured {format_amount(hold.captured_micros, bucket)})"
        )
        return 0

    return wallet_call(args, action)


def cmd_wallet_reverse(args: argparse.Namespace) -> int:
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    async def action(client: Any) -> int:
        entry = await client.reverse(
            args.entry_id, args.reason, operator=os.environ.get("USER", "operator")
        )
        bucket = bucket_from_proto(entry.bucket)
        out(
            f"reversal {entry.entry_id} of {entry.reverses_entry_id}: "
            f"{format_amount(entry.amount_micros, bucket)}, "
            f"{bucket.label} now {format_amount(entry.balance_after_micros, bucket)}"
        )
        return 0

    return wallet_call(args, action)


def cmd_wallet_paid_for(args: argparse.Namespace) -> int:
    from tokenforge.generated.wallet.v1 import wallet_pb2
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    def kind_name(kind: Any) -> str:
        return str(wallet_pb2.EntryKind.Name(kind).removeprefix("ENTRY_KIND_").lower())

    async def action(client: Any) -> int:
        use = await client.credit_use(
            args.account_id,
            order_id=args.order or "",
            entry_id=args.entry or "",
            page_size=args.limit,
            page_token=args.cursor,
        )
        b = bucket_from_proto(use.credit.bucket)
        if args.json:
            out_json(
                {
                    "credit_entry_id": use.credit.entry_id,
                    "order_id": use.credit.order_id or None,
                    "bucket": b.value,
                    **money_fields("received_balance", use.received_micros, b),
                    **money_fields("used", use.used_micros, b),
                    **money_fields("left", use.left_micros, b),
                    "total": use.slices_total,
                    "data": [
                        {
                            "entry_id": s.entry_id,
                            "kind": kind_name(s.kind),
                            "request_id": s.request_id or None,
                            **money_fields("used", s.used_micros, b),
                            "created_at": s.created_at.ToJsonString(),
                        }
                        for s in use.slices
                    ],
                    "next_cursor": use.next_page_token or None,
                }
            )
            return 0
        out(
            f"credit {use.credit.entry_id} ({use.credit.order_id or kind_name(use.credit.kind)}): "
            f"received {format_amount(use.received_micros, b)}, used "
            f"{format_amount(use.used_micros, b)}, left {format_amount(use.left_micros, b)}; "
            f"{use.slices_total} rows paid, first in, first out"
        )
        for s in use.slices:
            out(
                f"{_when(s.created_at)}  {s.entry_id}  {kind_name(s.kind):<14} "
                f"{format_amount(s.used_micros, b):>14}  {s.request_id}".rstrip()
            )
        if use.next_page_token:
            out(f"(more rows: --cursor {use.next_page_token})")
        return 0

    return wallet_call(args, action)


def cmd_wallet_reconcile(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        report = await client.reconcile()
        if args.json:
            out_json(
                {
                    "ok": report.ok,
                    "accounts_checked": report.accounts_checked,
                    "entries_checked": report.entries_checked,
                    "holds_checked": report.holds_checked,
                    "violations": [
                        {"rule": v.rule, "subject": v.subject, "detail": v.detail}
                        for v in report.violations
                    ],
                }
            )
            return 0 if report.ok else 1
        out(
            f"checked {report.accounts_checked} accounts, {report.entries_checked} ledger "
            f"entries, {report.holds_checked} holds"
        )
        for v in report.violations:
            out(f"VIOLATION {v.rule} {v.subject}: {v.detail}")
        if report.ok:
            out(
                "ok: every entry sums to zero, every balance is the fold of its journal, "
                "no bucket below zero, every hold open or ended once, every charge paid by "
                "credits first in, first out"
            )
            return 0
        out(f"{len(report.violations)} violations")
        return 1

    return wallet_call(args, action)


def cmd_wallet_balances(args: argparse.Namespace) -> int:
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    async def action(op: Any) -> int:
        found = await op.balances(args.account_id)
        if args.json:
            rows = []
            for b in found:
                bucket = bucket_from_proto(b.bucket)
                row: dict[str, Any] = {"bucket": bucket.value, "label": bucket.label}
                for name in ("posted", "held", "held_for_requests", "set_aside", "available"):
                    row |= money_fields(name, getattr(b, f"{name}_micros"), bucket)
                rows.append(row)
            out_json({"account_id": args.account_id, "balances": rows})
            return 0
        for b in found:
            bucket = bucket_from_proto(b.bucket)
            out(
                f"{bucket.label:<15} balance {format_amount(b.posted_micros, bucket):>16}  "
                f"held {format_amount(b.held_micros, bucket):>14} (for requests "
                f"{format_amount(b.held_for_requests_micros, bucket)}, set aside "
                f"{format_amount(b.set_aside_micros, bucket)})  "
                f"available {format_amount(b.available_micros, bucket):>16}"
            )
        return 0

    return operator_call(args, action)


def cmd_wallet_adjust(args: argparse.Namespace) -> int:
    from tokenforge.money import format_amount, parse_amount
    from tokenforge.wire import bucket_from_name

    bucket = bucket_from_name(args.bucket)
    micros = parse_amount(args.amount)

    async def action(op: Any) -> int:
        entry = await op.adjust(
            args.account_id,
            bucket,
            micros,
            args.reason,
            args.idempotency_key or str(uuid.uuid4()),
            os.environ.get("USER", "operator"),
        )
        out(
            f"adjustment {entry.entry_id}: {format_amount(entry.amount_micros, bucket)}, "
            f"{bucket.label} now {format_amount(entry.balance_after_micros, bucket)}"
        )
        return 0

    return operator_call(args, action)


def register(sub: Any) -> None:
    wallet = sub.add_parser(
        "wallet", help="balances, ledger, adjustments, reversals, reconcile"
    ).add_subparsers(dest="verb", required=True)
    bal = wallet.add_parser("balances", help="both balances of an account")
    add_state_dir(bal)
    bal.add_argument("account_id")
    add_json(bal)
    bal.set_defaults(func=cmd_wallet_balances)
    adj = wallet.add_parser("adjust", help="an operator's adjustment, with a reason")
    add_state_dir(adj)
    adj.add_argument("account_id")
    adj.add_argument("bucket", choices=["credit", "routed"])
    adj.add_argument("amount", type=amount_arg, help='signed decimal, e.g. "5" or "-1.25"')
    adj.add_argument("--reason", required=True)
    adj.add_argument("--idempotency-key", default="")
    adj.set_defaults(func=cmd_wallet_adjust)
    led = wallet.add_parser("ledger", help="an account's ledger rows, newest first")
    add_state_dir(led)
    led.add_argument("account_id")
    led.add_argument("--bucket", choices=["credit", "routed"], default="")
    led.add_argument(
        "--kind",
        choices=["topup_credit", "request_charge", "adjustment", "reversal"],
        default="",
    )
    led.add_argument("--request-id", default="")
    led.add_argument("--order-id", default="")
    led.add_argument("--limit", type=int, default=50)
    led.add_argument("--cursor", default="", help="the next-page token a listing printed")
    add_json(led)
    led.set_defaults(func=cmd_wallet_ledger)
    hol = wallet.add_parser("holds", help="an account's holds, newest first")
    add_state_dir(hol)
    hol.add_argument("account_id")
    hol.add_argument("--status", choices=["open", "settled", "released", "expired"], default="")
    hol.add_argument("--limit", type=int, default=50)
    hol.add_argument("--cursor", default="", help="the next-page token a listing printed")
    add_json(hol)
    hol.set_defaults(func=cmd_wallet_holds)
    rel = wallet.add_parser(
        "release",
        help="give an open hold back whole (a budget of a gateway replica that died: only "
        "once none of its parts waits in gateway.finish_queue)",
    )
    add_state_dir(rel)
    rel.add_argument("hold_id")
    rel.add_argument("--reason", required=True)
    rel.set_defaults(func=cmd_wallet_release)
    rev = wallet.add_parser("reverse", help="reverse one ledger entry, with a reason")
    add_state_dir(rev)
    rev.add_argument("entry_id")
    rev.add_argument("--reason", required=True)
    rev.set_defaults(func=cmd_wallet_reverse)
    paid = wallet.add_parser(
        "paid-for",
        help="what a top-up (or any credit) paid for, first in, first out: received, used, "
        "left and each row it paid",
    )
    add_state_dir(paid)
    paid.add_argument("account_id")
    which = paid.add_mutually_exclusive_group(required=True)
    which.add_argument("--order", help="the top-up's order id")
    which.add_argument("--entry", help="the credit's ledger entry id")
    paid.add_argument("--limit", type=int, default=50)
    paid.add_argument("--cursor", default="", help="the next-page token a listing printed")
    add_json(paid)
    paid.set_defaults(func=cmd_wallet_paid_for)
    rec = wallet.add_parser(
        "reconcile", help="prove every balance from the journal; exits 1 on any violation"
    )
    add_state_dir(rec)
    add_json(rec)
    rec.set_defaults(func=cmd_wallet_reconcile)
