"""Receipts, the ledger and the balances agree after a mix of requests, and both
reconcile commands (`tokenforge usage reconcile`, `tokenforge wallet reconcile`) pass."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from apps.cli import main as cli_main
from services.wallet.client import WalletClient
from tests.e2e.harness import INTERNAL, System
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.money import Bucket


def state_dir(system: System, tmp: Path) -> str:
    (tmp / "dev.json").write_text(
        json.dumps({"services": system.services, "admin_token": system.admin_token})
    )
    return str(tmp)


async def run_cli(argv: list[str]) -> tuple[int, str]:
    """The CLI in a thread (it runs its own event loop); its exit code and output."""

    def call() -> tuple[int, str]:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = cli_main(argv)
        return code, buffer.getvalue()

    return await asyncio.to_thread(call)


async def assert_reconciled(system: System, tmp: Path, *accounts: str) -> None:
    """Both reconcile commands pass (the wallet's when the CLI has it)."""
    state = state_dir(system, tmp)
    args = ["usage", "reconcile", "--state-dir", state]
    for account in accounts:
        args += ["--account", account]
    code, text = await run_cli(args)
    assert code == 0, text
    assert "ok:" in text
    code, text = await run_cli(["wallet", "reconcile", "--state-dir", state])
    assert code == 0, text


async def balances(http: httpx.AsyncClient) -> dict[str, dict[str, int]]:
    body = (await http.get("/v1/wallet")).json()
    return {
        b["bucket"]: {k: b[k]["micros"] for k in ("posted", "held", "available")}
        for b in body["balances"]
    }


def chat(model: str, stream: bool = False, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Count the ledger rows"}],
        "max_tokens": 20,
        "stream": stream,
        **extra,
    }


async def test_mixed_requests_leave_receipts_ledger_and_balances_in_agreement(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account(credit=2_000_000, routed=1_000)
    async with system.http(key) as http:
        ok = await http.post("/v1/chat/completions", json=chat("demo-chat"))
        routed = await http.post("/v1/chat/completions", json=chat("demo-chat@routed"))
        fallback = await http.post("/v1/chat/completions", json=chat("test-fallback"))
        down = await http.post("/v1/chat/completions", json=chat("test-down"))
        async with http.stream(
            "POST", "/v1/chat/completions", json=chat("test-cut", stream=True)
        ) as cut:
            cut_body = (await cut.aread()).decode()
        too_big = await http.post(
            "/v1/chat/completions",
            json={
                **chat("demo-chat@routed"),
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": "x " * 4000}],
            },
        )
        after = await balances(http)
        listing = (await http.get("/v1/usage", params={"limit": 100})).json()["data"]
        ledger = (await http.get("/v1/wallet/ledger", params={"limit": 100})).json()

    assert ok.status_code == routed.status_code == fallback.status_code == 200
    assert fallback.json()["receipt"]["fallback_used"] is True
    assert down.status_code == 502
    assert "upstream_cut" in cut_body
    assert too_big.status_code == 402
    assert too_big.json()["error"]["code"] == "insufficient_balance"

    statuses = sorted(r["status"] for r in listing)
    assert statuses == ["failed", "partial", "rejected", "succeeded", "succeeded", "succeeded"]
    charged = {r["request_id"]: r["charge"]["micros"] for r in listing}
    rows = [e for e in ledger["data"] if e.get("kind") == "request_charge"]
    assert {e["request_id"]: -e["amount"]["micros"] for e in rows} == {
        rid: c for rid, c in charged.items() if c > 0
    }
    spent = {"credit": 0, "routed": 0}
    for r in listing:
        spent[r["bucket"]] += r["charge"]["micros"]
    assert after["credit"]["posted"] == 2_000_000 - spent["credit"]
    assert after["routed"]["posted"] == 1_000 - spent["routed"]
    assert after["credit"]["held"] == after["routed"]["held"] == 0

    await assert_reconciled(system, tmp_path, account)


async def test_history_filters_aggregates_and_csv_agree(system: System) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        for model in ("demo-chat", "demo-chat", "demo-chat@routed"):
            answer = await http.post("/v1/chat/completions", json=chat(model))
            assert answer.status_code == 200
        routed = (await http.get("/v1/usage", params={"bucket": "routed"})).json()["data"]
        first = (await http.get("/v1/usage", params={"limit": 2})).json()
        second = (
            await http.get("/v1/usage", params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
        by_bucket = (await http.get("/v1/usage/aggregates", params={"by": "model"})).json()["data"]
        csv_answer = await http.get("/v1/usage", headers={"accept": "text/csv"})
        empty = (await http.get("/v1/usage", params={"from": "2099-01-01T00:00:00Z"})).json()[
            "data"
        ]

    assert [r["bucket"] for r in routed] == ["routed"]
    ids = [r["request_id"] for r in first["data"] + second["data"]]
    assert len(ids) == len(set(ids)) == 3 and second["next_cursor"] is None
    # Never summed across buckets: demo-chat (credit) and demo-chat@routed are two rows.
    assert {(r["model"], r["bucket"], r["requests"]) for r in by_bucket} == {
        ("demo-chat", "credit", 2),
        ("demo-chat@routed", "routed", 1),
    }
    assert csv_answer.headers["content-type"].startswith("text/csv")
    lines = csv_answer.text.strip().splitlines()
    assert lines[0].startswith("request_id,finished_at,status")
    assert len(lines) == 4
    assert empty == []


async def test_reconcile_of_every_account_finds_a_charge_on_an_account_with_no_receipt(
    system: System, tmp_path: Path
) -> None:
    """Without --account, reconciliation scans every account's charges, not only the
    accounts that have receipts: a charge whose receipt never came is found even when
    it is the account's only one. A service may not list every account."""
    account, _ = await system.new_account()
    wallet = WalletClient.connect(system.services["wallet"], INTERNAL)
    try:
        hold = await wallet.hold(account, Bucket.CREDIT, 5_000, "req-orphan-" + account)
        await wallet.settle(hold.hold_id, 4_000, account_id=account)
        with pytest.raises(DomainError) as refused:
            await wallet.peer.call(
                wallet.stub.ListLedger, wallet_pb2.ListLedgerRequest(account_id="")
            )
    finally:
        await wallet.close()
    assert refused.value.reason is Reason.INVALID_ARGUMENT

    state = state_dir(system, tmp_path)
    code, text = await run_cli(["usage", "reconcile", "--state-dir", state, "--since", "10m"])
    assert code != 0
    found = [line for line in text.splitlines() if "req-orphan-" + account in line]
    assert any("ledger_entry_without_receipt" in line for line in found), text
    assert any("hold_without_receipt" in line for line in found), text
    # Usage (in this process) reports the last reconciliation's mismatches as a metric.
    mismatches = REGISTRY.get_sample_value("tokenforge_usage_reconcile_mismatches")
    assert mismatches is not None and mismatches >= 2
