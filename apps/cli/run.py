"""Running the system: dev, serve, migrate, mock-upstream, health."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from apps.cli.common import add_json, add_state_dir, connection, out, out_json
from tokenforge.config import Settings
from tokenforge.runtime.service import SERVICES


def cmd_serve(args: argparse.Namespace) -> int:
    from tokenforge.money import configure_labels
    from tokenforge.prod_mode import UnsafeForProduction, refuse_unsafe_prod
    from tokenforge.runtime.grpc_server import run_until_signal
    from tokenforge.runtime.logging import setup_logging
    from tokenforge.runtime.service import load, tune_gc
    from tokenforge.runtime.telemetry import setup_telemetry

    settings = Settings.from_env()
    # The service's own role when TOKENFORGE_<SERVICE>_DATABASE_URL is set.
    settings = replace(settings, database_url=settings.database_url_for(args.service))
    setup_logging(args.service, settings.log_level)
    try:
        refuse_unsafe_prod(settings, args.service)
    except UnsafeForProduction as error:
        sys.stderr.write(f"{error}\n")
        return 78  # EX_CONFIG: a setting must change, restarting will not help
    setup_telemetry(f"tokenforge-{args.service}")
    configure_labels(settings.bucket_labels)
    app = load(args.service)
    port = args.port if args.port is not None else settings.grpc_port

    async def main() -> None:
        from tokenforge.runtime.metrics import start_metrics_server

        start_metrics_server(settings, args.service)
        running = await app.start(settings, port=port)
        tune_gc()
        import logging

        logging.getLogger(args.service).info(
            "serving gRPC on %s (http port %s)", running.address, running.http_port or "-"
        )
        await run_until_signal(running.stop)

    run_event_loop(main())
    return 0


def run_event_loop(main: Any) -> None:
    """uvloop when it is installed (a faster event loop for grpc.aio and uvicorn; see
    docs/PERFORMANCE.md), the standard loop otherwise."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def cmd_migrate(args: argparse.Namespace) -> int:
    from tokenforge.runtime.service import load

    settings = Settings.from_env()
    for name in args.services or SERVICES:
        url = settings.database_url_for(name)
        if not url:
            sys.stderr.write(
                f"Set TOKENFORGE_{name.upper()}_DATABASE_URL (or TOKENFORGE_DATABASE_URL) "
                "to the PostgreSQL to migrate.\n"
            )
            return 2
        load(name).migrate(url)
        out(f"migrated {name}")
    return 0


def cmd_db_roles(args: argparse.Namespace) -> int:
    """One login role per service owning its schema only (tokenforge.runtime.db_roles):
    run with the database owner's TOKENFORGE_DATABASE_URL; each service's role and
    password come from its TOKENFORGE_<SERVICE>_DATABASE_URL."""
    from tokenforge.runtime.db_roles import provision, role_from_url
    from tokenforge.runtime.service import load

    settings = Settings.from_env()
    if not settings.database_url:
        sys.stderr.write("Set TOKENFORGE_DATABASE_URL to the database owner's URL.\n")
        return 2
    roles = []
    for name in args.services or SERVICES:
        url = settings.service_database_urls.get(name)
        if not url:
            sys.stderr.write(
                f"Set TOKENFORGE_{name.upper()}_DATABASE_URL to {name}'s own URL "
                f"(postgresql://tokenforge_{name}:<password>@host:port/db).\n"
            )
            return 2
        try:
            roles.append(role_from_url(name, load(name).SCHEMA, url))
        except ValueError as error:
            sys.stderr.write(f"{error}\n")
            return 2
    asyncio.run(provision(settings.database_url, roles))
    for role in roles:
        out(f"{role.role} owns schema {role.schema}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from apps.dev import run

    return asyncio.run(run(args.port, Path(args.state_dir), args.gateways))


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    from apps.mock_upstream.server import main

    main(args.port, args.host)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from apps.admin import health_status

    services, _ = connection(args)

    async def main() -> int:
        worst = 0
        found = {}
        for name, address in services.items():
            status = await health_status(address) if address else "UNKNOWN ADDRESS"
            found[name] = {"address": address, "status": status}
            if not args.json:
                out(f"{name:<9} {address:<22} {status}")
            worst = worst or int(status != "SERVING")
        if args.json:
            out_json({"services": found, "ok": not worst})
        return worst

    return asyncio.run(main())


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="run the whole system on embedded defaults")
    dev.add_argument("--port", type=int, default=8080, help="gateway HTTP port (default 8080)")
    dev.add_argument("--state-dir", default=".dev", help="data and dev.json (default .dev)")
    dev.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway replicas (default 1; dev.json gateway_urls)",
    )
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--port", type=int, default=None, help="gRPC port (default env or 0)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("services", nargs="*", default=[], help="default: all")
    migrate.set_defaults(func=cmd_migrate)

    roles = sub.add_parser(
        "db-roles", help="create each service's database role, owner of its schema only"
    )
    roles.add_argument("services", nargs="*", default=[], help="default: all")
    roles.set_defaults(func=cmd_db_roles)

    mock = sub.add_parser("mock-upstream", help="the bundled OpenAI-compatible mock upstream")
    mock.add_argument("--port", type=int, default=9999)
    mock.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    mock.set_defaults(func=cmd_mock_upstream)

    health = sub.add_parser("health", help="grpc.health.v1 of every service")
    add_state_dir(health)
    add_json(health)
    health.set_defaults(func=cmd_health)
