"""Accounts and API keys (operator verbs)."""

from __future__ import annotations

import argparse
from typing import Any

from tokenforge.cli.common import add_state_dir, operator_call, out


def cmd_accounts_open(args: argparse.Namespace) -> int:
    async def action(op: Any) -> int:
        project = await op.open_account(args.account_id, args.name or "")
        out(f"account {args.account_id} open (default project {project})")
        return 0

    return operator_call(args, action)


def cmd_keys_create(args: argparse.Namespace) -> int:
    async def action(op: Any) -> int:
        project = await op.open_account(args.account_id)
        key = await op.create_key(args.account_id, project, args.name)
        out(f"API key (shown once, keep it safe): {key}")
        return 0

    return operator_call(args, action)


def register(sub: Any) -> None:
    accounts = sub.add_parser("accounts", help="accounts").add_subparsers(
        dest="verb", required=True
    )
    acc_open = accounts.add_parser("open", help="open an account (wallet + routing)")
    add_state_dir(acc_open)
    acc_open.add_argument("account_id")
    acc_open.add_argument("--name", default="")
    acc_open.set_defaults(func=cmd_accounts_open)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="verb", required=True)
    key_create = keys.add_parser("create", help="create an API key (shown once)")
    add_state_dir(key_create)
    key_create.add_argument("account_id")
    key_create.add_argument("--name", default="cli key")
    key_create.set_defaults(func=cmd_keys_create)
