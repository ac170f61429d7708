"""schemathesis against /openapi.json: no 500, no answer that breaks the schema."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.e2e.harness import System


async def test_schemathesis_finds_no_server_error(system: System, tmp_path: Path) -> None:
    _, key = await system.new_account(credit=50_000_000, routed=50_000_000)
    st = Path(sys.executable).parent / "st"
    proc = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{system.gateway_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance",
        "--max-examples",
        "15",
        "--phases",
        "examples,fuzzing",
        "--seed",
        "1",
        "--request-timeout",
        "20",
        "--exclude-path-regex",
        "^/(webhooks|console)",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
