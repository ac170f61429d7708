"""Top-up orders (operator verbs): the review queue, an order's trail, approve, reject."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from apps.cli.common import add_json, add_state_dir, connection, money_fields, out, out_json

if TYPE_CHECKING:
    from services.payments.client import PaymentsClient

STATUSES = (
    "pending",
    "awaiting_review",
    "succeeded",
    "failed",
    "expired",
    "rejected",
    "canceled",
)


def _status_value(name: str) -> Any:
    from tokenforge.generated.payments.v1 import payments_pb2

    return payments_pb2.TopUpStatus.Value(f"TOP_UP_STATUS_{name.upper()}")


def _status_name(value: int) -> str:
    from tokenforge.generated.payments.v1 import payments_pb2

    name: str = payments_pb2.TopUpStatus.Name(value)
    return name.removeprefix("TOP_UP_STATUS_").lower()


def _line(t: Any) -> str:
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    bucket = bucket_from_proto(t.bucket)
    paid = f"{t.paid_amount_minor // 100}.{t.paid_amount_minor % 100:02d} {t.currency}"
    received = format_amount(t.received_micros, bucket)
    return (
        f"{t.order_id}  {_status_name(t.status):<15} {paid:>12} -> {received:>14} "
        f"{bucket.label:<15} {t.provider:<15} {t.account_id}"
        + (f"  ref {t.transfer_reference}" if t.transfer_reference else "")
    )


def _order_json(t: Any) -> dict[str, Any]:
    from tokenforge.wire import bucket_from_proto

    bucket = bucket_from_proto(t.bucket)
    return {
        "order_id": t.order_id,
        "account_id": t.account_id,
        "status": _status_name(t.status),
        "bucket": bucket.value,
        "provider": t.provider,
        "topup_amount_minor": t.paid_amount_minor,
        "currency": t.currency,
        **money_fields("received_balance", t.received_micros, bucket),
        "transfer_reference": t.transfer_reference or None,
        "created_at": t.created_at.ToJsonString(),
        "expires_at": t.expires_at.ToJsonString(),
        "transitions": [
            {
                "at": x.at.ToJsonString(),
                "from": _status_name(x.from_status),
                "to": _status_name(x.to_status),
                "actor": x.actor,
                "reason": x.reason,
            }
            for x in t.transitions
        ],
    }


def _payments_call(
    args: argparse.Namespace, action: Callable[[PaymentsClient], Awaitable[int]]
) -> int:
    """Run `action(payments)` with payments' client and the operator's credential."""
    from services.payments.client import PaymentsClient
    from tokenforge.errors import DomainError

    services, token = connection(args)
    if not services.get("payments"):
        sys.stderr.write(
            "no payments address: run `tokenforge dev` or set TOKENFORGE_PAYMENTS_ADDR\n"
        )
        return 2

    async def main() -> int:
        payments = PaymentsClient.connect(services["payments"], token)
        try:
            return await action(payments)
        except DomainError as error:
            sys.stderr.write(f"refused ({error.reason.value}): {error.message}\n")
            return 1
        finally:
            await payments.close()

    return asyncio.run(main())


def cmd_topups_list(args: argparse.Namespace) -> int:
    async def action(payments: PaymentsClient) -> int:
        answer = await payments.list_all_top_ups(
            status=_status_value(args.status or "unspecified"),
            account_id=args.account or "",
            page_size=args.limit,
            page_token=args.cursor or "",
        )
        if args.json:
            out_json(
                {
                    "data": [_order_json(t) for t in answer.top_ups],
                    "next_cursor": answer.next_page_token or None,
                }
            )
            return 0
        if not answer.top_ups:
            out("no top-ups" + (f" {args.status}" if args.status else ""))
        for t in answer.top_ups:
            out(_line(t))
        if answer.next_page_token:
            out(f"more: --cursor {answer.next_page_token}")
        return 0

    return _payments_call(args, action)


def cmd_topups_show(args: argparse.Namespace) -> int:
    async def action(payments: PaymentsClient) -> int:
        t = await payments.inspect_top_up(args.order_id)
        if args.json:
            out_json(_order_json(t))
            return 0
        out(_line(t))
        out(f"  created {t.created_at.ToJsonString()}, expires {t.expires_at.ToJsonString()}")
        if t.provider_reference:
            out(f"  provider reference {t.provider_reference}")
        if t.provider_transaction_id:
            out(f"  provider transaction {t.provider_transaction_id}")
        out("  trail:")
        for x in t.transitions:
            out(
                f"    {x.at.ToJsonString()}  {_status_name(x.from_status)} -> "
                f"{_status_name(x.to_status)}  by {x.actor}: {x.reason}"
            )
        return 0

    return _payments_call(args, action)


def _review(args: argparse.Namespace, approve: bool) -> int:
    from tokenforge.generated.payments.v1 import payments_pb2

    decision = (
        payments_pb2.REVIEW_DECISION_APPROVE if approve else payments_pb2.REVIEW_DECISION_REJECT
    )

    async def action(payments: PaymentsClient) -> int:
        top_up = await payments.review_top_up(
            args.order_id, decision, args.reason, os.environ.get("USER", "operator")
        )
        out(_line(top_up))
        return 0

    return _payments_call(args, action)


def cmd_topups_approve(args: argparse.Namespace) -> int:
    return _review(args, approve=True)


def cmd_topups_reject(args: argparse.Namespace) -> int:
    return _review(args, approve=False)


def register(sub: Any) -> None:
    topups = sub.add_parser(
        "topups", help="top-up orders: review queue, trail, review"
    ).add_subparsers(dest="verb", required=True)
    ls = topups.add_parser("list", help="orders across accounts, newest first")
    add_state_dir(ls)
    ls.add_argument("--status", choices=STATUSES, help="only orders in this status")
    ls.add_argument("--account", default="", help="only this account's orders")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--cursor", default="", help="the next-page token a listing printed")
    add_json(ls)
    ls.set_defaults(func=cmd_topups_list)
    show = topups.add_parser("show", help="one order with its trail (who moved it, when, why)")
    add_state_dir(show)
    show.add_argument("order_id")
    add_json(show)
    show.set_defaults(func=cmd_topups_show)
    for verb, func, what in (
        ("approve", cmd_topups_approve, "the money arrived: the order succeeds and is credited"),
        ("reject", cmd_topups_reject, "the order is not approved: no balance is added"),
    ):
        p = topups.add_parser(verb, help=what)
        add_state_dir(p)
        p.add_argument("order_id")
        p.add_argument("--reason", required=True, help="kept on the order's trail")
        p.set_defaults(func=func)
