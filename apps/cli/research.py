"""`tokenforge research "<topic>"`: a multi-section research report written through
the gateway on a run (talks HTTP with an API key, from dev.json or --api-key)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from apps.cli.common import add_state_dir, out


def cmd_research(args: argparse.Namespace) -> int:
    import httpx

    from apps.research.plan import plan_report
    from apps.research.run import ResearchError, write_report

    gateway_url, api_key = args.gateway_url, args.api_key
    dev_json = Path(args.state_dir) / "dev.json"
    if (not gateway_url or not api_key) and dev_json.exists():
        info = json.loads(dev_json.read_text())
        gateway_url = gateway_url or info.get("gateway_url", "")
        api_key = api_key or info.get("api_key", "")
    if not gateway_url or not api_key:
        sys.stderr.write(
            "No gateway: start `tokenforge dev` (dev.json) or pass --gateway-url and --api-key.\n"
        )
        return 2
    try:
        plan = plan_report(args.topic, args.model, args.sections, args.max_tokens)
    except ValueError as error:
        sys.stderr.write(f"{error}\n")
        return 2

    async def main() -> int:
        async with httpx.AsyncClient(
            base_url=gateway_url, headers={"authorization": f"Bearer {api_key}"}, timeout=120
        ) as http:
            outcome = await write_report(http, plan, out, args.budget)
        if args.output:
            Path(args.output).write_text(outcome.report)
            out(f"report written to {args.output}")
        else:
            out("")
            out(outcome.report)
        return 0

    try:
        return asyncio.run(main())
    except ResearchError as error:
        sys.stderr.write(f"refused: {error}\n")
        return 1


def register(sub: Any) -> None:
    p = sub.add_parser(
        "research",
        help="write a research report through the gateway on a run (not financial advice)",
    )
    add_state_dir(p)
    p.add_argument("topic")
    p.add_argument("--model", default="demo-chat")
    p.add_argument("--sections", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=300, help="per section")
    p.add_argument("--budget", default=None, help='run budget, e.g. "0.5" (default: worst case)')
    p.add_argument("--gateway-url", default="")
    p.add_argument("--api-key", default="")
    p.add_argument("--output", default="", help="write the report here instead of stdout")
    p.set_defaults(func=cmd_research)
