"""Balances and adjustments (operator verbs)."""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

from tokenforge.cli.common import add_state_dir, operator_call, out


def cmd_wallet_balances(args: argparse.Namespace) -> int:
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    async def action(op: Any) -> int:
        for b in await op.balances(args.account_id):
            bucket = bucket_from_proto(b.bucket)
            out(
                f"{bucket.label:<15} balance {format_amount(b.posted_micros, bucket):>16}  "
                f"reserved {format_amount(b.held_micros, bucket):>14}  "
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
    wallet = sub.add_parser("wallet", help="balances and adjustments").add_subparsers(
        dest="verb", required=True
    )
    bal = wallet.add_parser("balances", help="both balances of an account")
    add_state_dir(bal)
    bal.add_argument("account_id")
    bal.set_defaults(func=cmd_wallet_balances)
    adj = wallet.add_parser("adjust", help="an operator's adjustment, with a reason")
    add_state_dir(adj)
    adj.add_argument("account_id")
    adj.add_argument("bucket", choices=["credit", "routed"])
    adj.add_argument("amount", help='signed decimal, e.g. "5" or "-1.25"')
    adj.add_argument("--reason", required=True)
    adj.add_argument("--idempotency-key", default="")
    adj.set_defaults(func=cmd_wallet_adjust)
