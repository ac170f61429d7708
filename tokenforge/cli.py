"""`tokenforge`: run the services and operate them.

tokenforge dev [--port 8080] [--state-dir .dev]   the whole system on embedded defaults
tokenforge serve <service> [--port N]             one service (routing, wallet, payments,
                                                  usage, gateway)
tokenforge migrate [service ...]                  apply Alembic migrations
tokenforge mock-upstream [--port N]               the bundled OpenAI-compatible upstream
tokenforge accounts open <account-id>             operator verbs, over gRPC, with the
tokenforge keys create <account-id>               admin token (from --state-dir's dev.json
tokenforge wallet balances <account-id>           or TOKENFORGE_ADMIN_TOKEN and
tokenforge wallet adjust <account-id> <bucket> <amount> --reason R   TOKENFORGE_<SVC>_ADDR)
tokenforge health                                 grpc.health.v1 of every service
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tokenforge.config import Settings
from tokenforge.runtime.service import SERVICES


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def cmd_serve(args: argparse.Namespace) -> int:
    from tokenforge.money import configure_labels
    from tokenforge.runtime.grpc_server import run_until_signal
    from tokenforge.runtime.logging import setup_logging
    from tokenforge.runtime.service import load
    from tokenforge.runtime.telemetry import setup_telemetry

    settings = Settings.from_env()
    setup_logging(args.service, settings.log_level)
    setup_telemetry(f"tokenforge-{args.service}")
    configure_labels(settings.bucket_labels)
    app = load(args.service)
    port = args.port if args.port is not None else settings.grpc_port

    async def main() -> None:
        if settings.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(settings.metrics_port, addr="0.0.0.0")
        running = await app.start(settings, port=port)
        import logging

        logging.getLogger(args.service).info(
            "serving gRPC on %s (http port %s)", running.address, running.http_port or "-"
        )
        await run_until_signal(running.stop)

    asyncio.run(main())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from tokenforge.runtime.service import load

    url = Settings.from_env().database_url
    if not url:
        sys.stderr.write("Set TOKENFORGE_DATABASE_URL to the PostgreSQL to migrate.\n")
        return 2
    for name in args.services or SERVICES:
        load(name).migrate(url)
        _out(f"migrated {name}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from tokenforge.dev import run

    return asyncio.run(run(args.port, Path(args.state_dir)))


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    from tokenforge.mock_upstream.server import main

    main(args.port)
    return 0


def _connection(args: argparse.Namespace) -> tuple[dict[str, str], str]:
    dev_json = Path(args.state_dir) / "dev.json"
    if dev_json.exists():
        info = json.loads(dev_json.read_text())
        return dict(info["services"]), str(info["admin_token"])
    settings = Settings.from_env()
    services = {
        "routing": settings.routing_addr,
        "wallet": settings.wallet_addr,
        "payments": settings.payments_addr,
        "usage": settings.usage_addr,
        "gateway": settings.gateway_addr,
    }
    return services, settings.admin_token or os.environ.get("TOKENFORGE_ADMIN_TOKEN", "")


def _operator_call(args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]) -> int:
    from tokenforge.admin import Operator
    from tokenforge.errors import DomainError

    services, token = _connection(args)

    async def main() -> int:
        operator = Operator.connect(services, token)
        try:
            return await action(operator)
        except DomainError as error:
            sys.stderr.write(f"refused ({error.reason.value}): {error.message}\n")
            return 1
        finally:
            await operator.close()

    return asyncio.run(main())


def cmd_accounts_open(args: argparse.Namespace) -> int:
    async def action(op: Any) -> int:
        project = await op.open_account(args.account_id, args.name or "")
        _out(f"account {args.account_id} open (default project {project})")
        return 0

    return _operator_call(args, action)


def cmd_keys_create(args: argparse.Namespace) -> int:
    async def action(op: Any) -> int:
        project = await op.open_account(args.account_id)
        key = await op.create_key(args.account_id, project, args.name)
        _out(f"API key (shown once, keep it safe): {key}")
        return 0

    return _operator_call(args, action)


def cmd_wallet_balances(args: argparse.Namespace) -> int:
    from tokenforge.money import format_amount
    from tokenforge.wire import bucket_from_proto

    async def action(op: Any) -> int:
        for b in await op.balances(args.account_id):
            bucket = bucket_from_proto(b.bucket)
            _out(
                f"{bucket.label:<15} balance {format_amount(b.posted_micros, bucket):>16}  "
                f"reserved {format_amount(b.held_micros, bucket):>14}  "
                f"available {format_amount(b.available_micros, bucket):>16}"
            )
        return 0

    return _operator_call(args, action)


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
        _out(
            f"adjustment {entry.entry_id}: {format_amount(entry.amount_micros, bucket)}, "
            f"{bucket.label} now {format_amount(entry.balance_after_micros, bucket)}"
        )
        return 0

    return _operator_call(args, action)


def cmd_health(args: argparse.Namespace) -> int:
    from tokenforge.admin import health_status

    services, _ = _connection(args)

    async def main() -> int:
        worst = 0
        for name, address in services.items():
            status = await health_status(address) if address else "UNKNOWN ADDRESS"
            _out(f"{name:<9} {address:<22} {status}")
            worst = worst or int(status != "SERVING")
        return worst

    return asyncio.run(main())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenforge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run the whole system on embedded defaults")
    dev.add_argument("--port", type=int, default=8080, help="gateway HTTP port (default 8080)")
    dev.add_argument("--state-dir", default=".dev", help="data and dev.json (default .dev)")
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--port", type=int, default=None, help="gRPC port (default env or 0)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("services", nargs="*", default=[], help="default: all")
    migrate.set_defaults(func=cmd_migrate)

    mock = sub.add_parser("mock-upstream", help="the bundled OpenAI-compatible mock upstream")
    mock.add_argument("--port", type=int, default=9999)
    mock.set_defaults(func=cmd_mock_upstream)

    def operator_parser(parent: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        sp.add_argument("--state-dir", default=".dev", help="read dev.json from here")
        return sp

    accounts = sub.add_parser("accounts", help="accounts").add_subparsers(
        dest="verb", required=True
    )
    acc_open = operator_parser(accounts, "open", "open an account (wallet + routing)")
    acc_open.add_argument("account_id")
    acc_open.add_argument("--name", default="")
    acc_open.set_defaults(func=cmd_accounts_open)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="verb", required=True)
    key_create = operator_parser(keys, "create", "create an API key (shown once)")
    key_create.add_argument("account_id")
    key_create.add_argument("--name", default="cli key")
    key_create.set_defaults(func=cmd_keys_create)

    wallet = sub.add_parser("wallet", help="balances and adjustments").add_subparsers(
        dest="verb", required=True
    )
    bal = operator_parser(wallet, "balances", "both balances of an account")
    bal.add_argument("account_id")
    bal.set_defaults(func=cmd_wallet_balances)
    adj = operator_parser(wallet, "adjust", "an operator's adjustment, with a reason")
    adj.add_argument("account_id")
    adj.add_argument("bucket", choices=["credit", "routed"])
    adj.add_argument("amount", help='signed decimal, e.g. "5" or "-1.25"')
    adj.add_argument("--reason", required=True)
    adj.add_argument("--idempotency-key", default="")
    adj.set_defaults(func=cmd_wallet_adjust)

    health = operator_parser(sub, "health", "grpc.health.v1 of every service")
    health.set_defaults(func=cmd_health)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
