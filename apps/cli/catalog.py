"""The catalog (operator verbs): show the running one, apply a file, list versions.

`apply` validates the whole file in routing; a catalog with an error is refused
whole (the message names line and field) and the running catalog stays.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.cli.common import add_json, add_state_dir, connection, out, out_json

if TYPE_CHECKING:
    from services.routing.client import RoutingClient


def routing_action(
    args: argparse.Namespace, action: Callable[[RoutingClient], Awaitable[int]]
) -> int:
    """Run `action(routing)` with routing's client and the operator's credential."""
    from services.routing.client import RoutingClient
    from tokenforge.errors import DomainError

    services, token = connection(args)

    async def main() -> int:
        routing = RoutingClient.connect(services["routing"], token, batching=False)
        try:
            return await action(routing)
        except DomainError as error:
            sys.stderr.write(f"refused ({error.reason.value}): {error.message}\n")
            return 1
        finally:
            await routing.close()

    return asyncio.run(main())


def _version_json(v: Any) -> dict[str, Any]:
    return {
        "version": v.version,
        "created_by": v.created_by,
        "created_at": v.created_at.ToJsonString(),
        "content_sha256": v.content_sha256,
    }


def cmd_catalog_show(args: argparse.Namespace) -> int:
    async def action(routing: RoutingClient) -> int:
        answer = await routing.get_catalog()
        v = answer.version
        if args.json:
            out_json({"version": _version_json(v), "yaml": answer.yaml})
            return 0
        out(f"# catalog {v.version} by {v.created_by} at {v.created_at.ToJsonString()}")
        out(answer.yaml.rstrip("\n"))
        return 0

    return routing_action(args, action)


def cmd_catalog_apply(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        sys.stderr.write(f"cannot read the catalog file {args.file}: {error}\n")
        return 2

    async def action(routing: RoutingClient) -> int:
        answer = await routing.put_catalog(text, args.author)
        if answer.changed:
            out(f"catalog {answer.version.version} applied (every replica within ~2 s)")
        else:
            out(f"unchanged: {answer.version.version} already has this content")
        return 0

    return routing_action(args, action)


def cmd_catalog_versions(args: argparse.Namespace) -> int:
    async def action(routing: RoutingClient) -> int:
        versions = await routing.catalog_versions(limit=args.limit)
        if args.json:
            out_json({"versions": [_version_json(v) for v in versions]})
            return 0
        for v in versions:
            out(
                f"{v.version}\t{v.created_at.ToJsonString()}\t{v.created_by}\t"
                f"{v.content_sha256[:12]}"
            )
        return 0

    return routing_action(args, action)


def register(sub: Any) -> None:
    catalog = sub.add_parser("catalog", help="the model catalog").add_subparsers(
        dest="verb", required=True
    )
    show = catalog.add_parser("show", help="print the running catalog and its version")
    add_state_dir(show)
    add_json(show)
    show.set_defaults(func=cmd_catalog_show)
    apply = catalog.add_parser("apply", help="validate a catalog file and make it the new version")
    add_state_dir(apply)
    apply.add_argument("file")
    apply.add_argument("--author", default="cli", help="recorded with the version")
    apply.set_defaults(func=cmd_catalog_apply)
    versions = catalog.add_parser("versions", help="list the catalog's versions, newest first")
    add_state_dir(versions)
    versions.add_argument("--limit", type=int, default=20)
    add_json(versions)
    versions.set_defaults(func=cmd_catalog_versions)
