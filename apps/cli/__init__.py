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

Read verbs take --json (one JSON document; amounts as integer <name>_micros plus the
display text <name>); a listing that prints a next-page token takes it back with
--cursor. Installed by `make install` as .venv/bin/tokenforge.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def parser() -> argparse.ArgumentParser:
    """Every module of this package with a `register(subparsers)` adds its verbs."""
    p = argparse.ArgumentParser(
        prog="tokenforge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"tokenforge {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # __main__ runs the command when imported
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenforge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code
