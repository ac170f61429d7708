"""Accounts and API keys (operator verbs)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from apps.cli.common import (
    add_json,
    add_state_dir,
    cap_arg,
    money_fields,
    operator_call,
    out,
    out_json,
)

if TYPE_CHECKING:
    from services.routing.client import RoutingClient


def cmd_accounts_open(args: argparse.Namespace) -> int:
    async def action(op: Any) -> int:
        project = await op.open_account(args.account_id, args.name or "")
        out(f"account {args.account_id} open (default project {project})")
        return 0

    return operator_call(args, action)


def _settings(args: argparse.Namespace) -> Any:
    from tokenforge.generated.routing.v1 import routing_pb2
    from tokenforge.money import parse_amount
    from tokenforge.wire import bucket_from_name, bucket_to_proto, route_kind_to_proto

    caps: dict[str, dict[str, int]] = {}
    for kind, entries in (("daily_micros", args.daily_cap), ("total_micros", args.total_cap)):
        for entry in entries or []:
            bucket, _, amount = entry.partition("=")
            caps.setdefault(bucket, {})[kind] = parse_amount(amount)
    return routing_pb2.KeySettings(
        allowed_models=args.models or [],
        allowed_route_kinds=[route_kind_to_proto(k) for k in args.kinds or []],
        route_preference=[route_kind_to_proto(k) for k in args.prefer or []],
        fallback_allowed=args.fallback,
        ip_allowlist=args.ip or [],
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        max_in_flight=args.max_in_flight,
        spend_caps=[
            routing_pb2.SpendCap(bucket=bucket_to_proto(bucket_from_name(b)), **values)
            for b, values in caps.items()
        ],
    )


def cmd_keys_create(args: argparse.Namespace) -> int:
    from datetime import datetime

    from apps.cli.catalog import routing_action
    from tokenforge.generated.routing.v1 import routing_pb2
    from tokenforge.wire import timestamp

    scopes: list[str] = args.scope or list(DEFAULT_KEY_SCOPES)

    async def action(routing: RoutingClient) -> int:
        project_id = await routing.open_account(args.account_id)
        created = await routing.create_api_key(
            routing_pb2.CreateApiKeyRequest(
                account_id=args.account_id,
                project_id=args.project or project_id,
                name=args.name,
                scopes=[SCOPES[s] for s in scopes],  # type: ignore[misc]
                expires_at=timestamp(datetime.fromisoformat(args.expires))
                if args.expires
                else None,
                settings=_settings(args),
            ),
        )
        out(f"key id {created.key_id} (prefix {created.prefix}), scopes: {', '.join(scopes)}")
        out(f"API key (shown once, keep it safe): {created.api_key}")
        return 0

    return routing_action(args, action)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from apps.cli.catalog import routing_action

    async def action(routing: RoutingClient) -> int:
        keys = await routing.list_api_keys(args.account_id)
        names = {v: k for k, v in SCOPES.items()}
        if args.json:
            out_json({"account_id": args.account_id, "keys": [_key_json(k, names) for k in keys]})
            return 0
        for k in keys:
            s = k.settings
            state = "revoked" if k.HasField("revoked_at") else "active"
            last = k.last_used_at.ToJsonString() if k.HasField("last_used_at") else "never"
            out(
                f"{k.key_id}	{k.prefix}...	{state}	{','.join(names[x] for x in k.scopes)}	"
                f"rpm={s.requests_per_minute or '-'} tpm={s.tokens_per_minute or '-'} "
                f"in_flight={s.max_in_flight or '-'}	last used {last}	{k.name}"
            )
        return 0

    return routing_action(args, action)


def _key_json(k: Any, scope_names: dict[Any, str]) -> dict[str, Any]:
    from tokenforge.wire import bucket_from_proto, route_kind_from_proto

    s = k.settings
    caps = []
    for c in s.spend_caps:
        bucket = bucket_from_proto(c.bucket)
        cap: dict[str, Any] = {"bucket": bucket.value}
        if c.daily_micros:
            cap |= money_fields("daily", c.daily_micros, bucket)
        if c.total_micros:
            cap |= money_fields("total", c.total_micros, bucket)
        caps.append(cap)
    return {
        "key_id": k.key_id,
        "name": k.name,
        "prefix": k.prefix,
        "state": "revoked" if k.HasField("revoked_at") else "active",
        "scopes": [scope_names[x] for x in k.scopes],
        "allowed_models": list(s.allowed_models),
        "allowed_route_kinds": [route_kind_from_proto(x) for x in s.allowed_route_kinds],
        "ip_allowlist": list(s.ip_allowlist),
        "requests_per_minute": s.requests_per_minute or None,
        "tokens_per_minute": s.tokens_per_minute or None,
        "max_in_flight": s.max_in_flight or None,
        "spend_caps": caps,
        "expires_at": k.expires_at.ToJsonString() if k.HasField("expires_at") else None,
        "last_used_at": k.last_used_at.ToJsonString() if k.HasField("last_used_at") else None,
    }


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from apps.cli.catalog import routing_action

    async def action(routing: RoutingClient) -> int:
        await routing.revoke_api_key(args.account_id, args.key_id)
        out(f"key {args.key_id} revoked (everywhere within 2 s)")
        return 0

    return routing_action(args, action)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from apps.cli.catalog import routing_action

    async def action(routing: RoutingClient) -> int:
        answer = await routing.rotate_api_key(
            args.account_id, args.key_id, grace_seconds=args.grace
        )
        out(f"new key id {answer.key.key_id}; {args.key_id} stops in {args.grace} s")
        out(f"API key (shown once, keep it safe): {answer.api_key}")
        return 0

    return routing_action(args, action)


SCOPES = {"inference": 1, "wallet_read": 2, "topup": 3, "keys": 4}
# A key made by `keys create` without --scope may call models and read its wallet; top-ups
# and key management are asked for by name (--scope topup, --scope keys): a key handed to
# an application should not open orders or mint other keys unless meant to.
DEFAULT_KEY_SCOPES = ("inference", "wallet_read")


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
    key_create.add_argument("--project", default="", help="default: the default project")
    key_create.add_argument(
        "--scope",
        action="append",
        choices=sorted(SCOPES),
        help=f"repeat for several; default: {', '.join(DEFAULT_KEY_SCOPES)}",
    )
    key_create.add_argument("--models", action="append", help="allowed model pattern")
    key_create.add_argument("--kinds", action="append", choices=["official", "routed"])
    key_create.add_argument("--prefer", action="append", choices=["official", "routed"])
    key_create.add_argument(
        "--fallback", action="store_true", help="may fall back to another route"
    )
    key_create.add_argument("--ip", action="append", help="allowed client IP or CIDR")
    key_create.add_argument("--rpm", type=int, default=0, help="requests per minute")
    key_create.add_argument("--tpm", type=int, default=0, help="tokens per minute")
    key_create.add_argument("--max-in-flight", type=int, default=0)
    key_create.add_argument(
        "--daily-cap", action="append", type=cap_arg, help="BUCKET=AMOUNT, e.g. credit=5"
    )
    key_create.add_argument("--total-cap", action="append", type=cap_arg, help="BUCKET=AMOUNT")
    key_create.add_argument("--expires", default="", help="ISO 8601 time with zone")
    key_create.set_defaults(func=cmd_keys_create)
    key_list = keys.add_parser("list", help="an account's keys (never the secrets)")
    add_state_dir(key_list)
    key_list.add_argument("account_id")
    add_json(key_list)
    key_list.set_defaults(func=cmd_keys_list)
    key_revoke = keys.add_parser("revoke", help="revoke a key")
    add_state_dir(key_revoke)
    key_revoke.add_argument("account_id")
    key_revoke.add_argument("key_id")
    key_revoke.set_defaults(func=cmd_keys_revoke)
    key_rotate = keys.add_parser("rotate", help="new secret, same settings")
    add_state_dir(key_rotate)
    key_rotate.add_argument("account_id")
    key_rotate.add_argument("key_id")
    key_rotate.add_argument("--grace", type=int, default=0, help="seconds the old key still works")
    key_rotate.set_defaults(func=cmd_keys_rotate)
