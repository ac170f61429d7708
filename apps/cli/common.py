"""What every CLI module shares: output, the connection to the services (from
dev.json or TOKENFORGE_* variables), and running an operator action."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tokenforge.config import Settings


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def amount_arg(text: str) -> str:
    """An argparse `type`: a decimal amount ("5", "-1.25"), refused with a usage
    message (exit 2) instead of a traceback; the command parses it again."""
    from tokenforge.money import MoneyError, parse_amount

    try:
        parse_amount(text)
    except (MoneyError, ValueError):
        raise argparse.ArgumentTypeError(
            f'{text!r} is not an amount: use a decimal like "5" or "-1.25" (at most 6 decimals)'
        ) from None
    return text


def cap_arg(text: str) -> str:
    """An argparse `type` for BUCKET=AMOUNT (credit=5)."""
    bucket, sep, amount = text.partition("=")
    if not sep or bucket not in ("credit", "routed"):
        raise argparse.ArgumentTypeError(f"{text!r}: write BUCKET=AMOUNT, e.g. credit=5")
    amount_arg(amount)
    return text


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=".dev", help="read dev.json from here")


def connection(args: argparse.Namespace) -> tuple[dict[str, str], str]:
    """Service addresses and the admin token: dev.json if present, else the env."""
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
    if not any(services.values()):
        sys.stderr.write(
            f"No system to talk to: no dev.json in {args.state_dir} (start `tokenforge dev` "
            "or pass --state-dir) and no TOKENFORGE_<SERVICE>_ADDR set.\n"
        )
        raise SystemExit(2)
    return services, settings.admin_token or os.environ.get("TOKENFORGE_ADMIN_TOKEN", "")


def operator_call(args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]) -> int:
    """Run `action(operator)` with the operator's credential; refusals exit 1."""
    from apps.admin import Operator
    from tokenforge.errors import DomainError

    services, token = connection(args)

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


def add_json(parser: argparse.ArgumentParser) -> None:
    """`--json`: the verb prints one JSON document instead of lines (amounts as integer
    `<name>_micros` plus `<name>` display text, docs/GLOSSARY.md)."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")


def out_json(document: Any) -> None:
    out(json.dumps(document, indent=2, sort_keys=False))


def money_fields(name: str, micros: int, bucket: Any) -> dict[str, Any]:
    """One amount as flat CLI JSON: `<name>_micros` (integer) and `<name>` (display)."""
    from tokenforge.money import format_amount

    return {f"{name}_micros": micros, name: format_amount(micros, bucket)}
