"""Fuzzing every HTTP route (DESIGN S2: no input reaches a 500, no answer carries
internals), on the whole system:

- schemathesis against /openapi.json, positive and negative data, the coverage phase's
  boundary values included: no 5xx, answers within the schema (status, content type
  and every JSON answer against its response schema, success and error), and `no_internals`
  (tests/e2e/fuzz_hooks.py): no SQL, schema name, traceback or digest in any answer,
  `x-request-id` on every one;
- Hypothesis (tests/e2e/fuzz_edge.py) sending what schemathesis does not: NUL bytes,
  numbers beyond int64, JSON nested hundreds deep, ids of thousands of characters,
  invalid UTF-8 and lone surrogates, in each route's path, query, headers and in each
  field of a body that is otherwise valid (so the input gets as far as it can).

Both are deterministic (a fixed seed; Hypothesis derandomized) and bounded.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.e2e.fuzz_edge import fuzz_every_route
from tests.e2e.fuzz_hooks import MARK_ENV, internals_in
from tests.e2e.harness import System

ROOT = Path(__file__).resolve().parents[2]


async def test_schemathesis_finds_no_server_error_and_no_internals(
    system: System, tmp_path: Path
) -> None:
    _, key = await system.new_account(credit=50_000_000, routed=50_000_000)
    st = Path(sys.executable).parent / "st"
    mark = tmp_path / "no_internals.ran"
    proc = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{system.gateway_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,no_internals",
        "--mode",
        "all",
        "--max-examples",
        "10",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "1",
        "--generation-allow-x00",
        "true",
        "--request-timeout",
        "20",
        "--exclude-path-regex",
        "^/(webhooks|console)",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_hooks",
            MARK_ENV: str(mark),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert mark.exists(), text[-3000:]  # the no_internals check was loaded and ran


# The system under test runs in this process and draws from the global `random`
# (retry jitter) while Hypothesis generates in its thread; Hypothesis warns of that.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_hostile_input_on_every_route_gets_a_4xx_without_internals(
    system: System,
) -> None:
    _, key = await system.new_account(credit=50_000_000, routed=50_000_000)
    # Blocking HTTP in a thread: the system under test runs on this event loop.
    seen = await asyncio.to_thread(fuzz_every_route, system.gateway_url, key)
    # Every route got hostile input, and the examples asked for ran.
    assert seen.routes == seen.expected_routes, seen.expected_routes - seen.routes
    assert seen.requests >= 1000


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"message": "[SQL: SELECT usage.receipts.request_id FROM usage.receipts]"}', True),
        ("(sqlalchemy.dialects.postgresql.asyncpg.Error) invalid byte sequence", True),
        ("INSERT INTO routing.api_keys (key_id) VALUES ($1)", True),
        ('Traceback (most recent call last):\n  File "x.py"', True),
        ("digest " + "ab12" * 16, True),
        ("relation wallet.balances does not exist", True),
        ('{"usage": {"cost": 0.1, "cost_micros": 100000}, "note": "see usage.cost"}', False),
        ('{"trace_id": "' + "f" * 32 + '", "id": "req_0123456789abcdef01234567"}', False),
        ('{"error": {"message": "Quote request id req_0123 to support."}}', False),
    ],
)
def test_the_internals_pattern_finds_internals_and_only_them(text: str, found: bool) -> None:
    assert (internals_in(text) is not None) is found


def test_the_clients_own_input_echoed_back_is_no_leak() -> None:
    sent = '{"bucket": "' + "0" * 64 + '"}'
    echoed = '{"error": {"message": "Unknown balance \'' + "0" * 64 + "'\"}}"
    assert internals_in(echoed, sent) is None
    assert internals_in(echoed + " " + "ab12" * 16, sent) == "ab12" * 16
