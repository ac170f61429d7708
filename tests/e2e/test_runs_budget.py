"""Runs: one hold for the whole budget, requests draw on it, close settles what was
spent and releases the rest, forgotten runs expire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.gateway.adapters.peers import Peers
from services.gateway.runs import sweep_runs
from tests.e2e.harness import INTERNAL, System
from tests.e2e.test_usage_reconcile import assert_reconciled, balances
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.money import Bucket
from tokenforge.runtime.grpc_client import Peer

BODY = {
    "model": "test-slow",
    "messages": [{"role": "user", "content": "One line of research"}],
    "max_tokens": 5,
    "stream": True,
}


def peers_of(system: System) -> Peers:
    s = system.services
    return Peers(
        routing=Peer("routing", s["routing"], INTERNAL),
        wallet=Peer("wallet", s["wallet"], INTERNAL),
        payments=Peer("payments", s["payments"], INTERNAL),
        usage=Peer("usage", s["usage"], INTERNAL),
    )


async def test_a_run_for_five_requests_lets_exactly_five_of_twenty_racing_through(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account(credit=5_000_000)
    async with system.http(key) as http:
        worst = (await http.post("/v1/routes/preview", json=BODY)).json()["worst_case_cost"]
        budget_micros = 5 * worst["micros"]
        opened = await http.post(
            "/v1/runs",
            json={"model": "test-slow", "budget": f"{budget_micros / 1_000_000:.6f}", "ttl": 300},
        )
        assert opened.status_code == 201, opened.text
        run = opened.json()
        held = await balances(http)

        async def one() -> tuple[int, bytes]:
            async with http.stream(
                "POST", "/v1/chat/completions", json=BODY, headers={"x-tokenforge-run": run["id"]}
            ) as answer:
                return answer.status_code, await answer.aread()

        answers = await asyncio.gather(*(one() for _ in range(20)))
        closed = (await http.post(f"/v1/runs/{run['id']}/close")).json()
        after = await balances(http)
        ledger = (await http.get("/v1/wallet/ledger", params={"limit": 100})).json()

    assert run["budget"]["micros"] == budget_micros
    assert run["hold"]["amount"]["micros"] == budget_micros
    assert run["available_before"]["micros"] == 5_000_000
    assert held["credit"]["held"] == budget_micros
    assert sorted(code for code, _ in answers) == [200] * 5 + [402] * 15
    refusal = next(body for code, body in answers if code == 402).decode()
    assert run["id"] in refusal and "budget spent" in refusal

    totals = closed["totals"]
    assert closed["run"]["status"] == "closed"
    assert len(closed["lines"]) == totals["requests"] == 5
    assert totals["charge"]["micros"] == sum(line["charge"]["micros"] for line in closed["lines"])
    assert totals["completion_tokens"] == sum(line["completion_tokens"] for line in closed["lines"])
    assert [m["charge"]["micros"] for m in closed["models"]] == [totals["charge"]["micros"]]
    # One ledger row per request of the run (its part of the run's hold), each matching
    # its line; no aggregate row for the run.
    rows = {e["entry_id"]: e for e in ledger["data"] if e["kind"] == "request_charge"}
    assert len(rows) == 5 and closed["ledger_entry_id"] is None
    for line in closed["lines"]:
        row = rows[line["ledger_entry_id"]]
        assert row["request_id"] == line["request_id"]
        assert -row["amount"]["micros"] == line["charge"]["micros"] > 0
    assert sum(-e["amount"]["micros"] for e in rows.values()) == totals["charge"]["micros"]
    assert after["credit"]["held"] == 0
    assert after["credit"]["posted"] == 5_000_000 - totals["charge"]["micros"]
    await assert_reconciled(system, tmp_path, account)


async def test_a_run_without_requests_closes_releasing_its_whole_hold(system: System) -> None:
    _, key = await system.new_account(credit=1_000_000)
    async with system.http(key) as http:
        run = (
            await http.post(
                "/v1/runs",
                json={
                    "model": "demo-chat",
                    "estimate": {"requests": 3, "prompt_tokens": 100, "max_tokens": 200},
                },
            )
        ).json()
        closed = (await http.post(f"/v1/runs/{run['id']}/close")).json()
        again = (await http.post(f"/v1/runs/{run['id']}/close")).json()
        after = await balances(http)
    # 3 x (100 x 2.5 + 200 x 10) / 1M CR = 3 x 2250 micro-CR
    assert run["estimate"]["worst_case_per_request"]["micros"] == 2250
    assert run["budget"]["micros"] == 6750
    assert closed["totals"]["charge"]["micros"] == 0 and closed["lines"] == []
    assert again["run"]["status"] == "closed"
    assert after["credit"] == {"posted": 1_000_000, "held": 0, "available": 1_000_000}


async def test_a_forgotten_run_expires_and_releases_its_hold(system: System) -> None:
    account, key = await system.new_account(credit=1_000_000)
    peers = peers_of(system)
    try:
        hold = await peers.wallet_client.hold(
            account, Bucket.CREDIT, 400_000, "run_forgotten_" + account, ttl_seconds=600
        )
        run = usage_pb2.Run(
            run_id="run_forgotten_" + account,
            account_id=account,
            bucket=common_pb2.BUCKET_CREDIT,
            budget_micros=400_000,
            hold_id=hold.hold_id,
        )
        now = datetime.now(UTC)
        run.created_at.FromDatetime(now - timedelta(minutes=20))
        run.expires_at.FromDatetime(now - timedelta(minutes=5))
        await peers.usage_client.open_run(run)
        await sweep_runs(peers)  # the gateway's own sweeper may win the race: either ends it
        for _ in range(100):
            swept = await peers.usage_client.get_run(run.run_id)
            if swept.status == usage_pb2.RUN_STATUS_EXPIRED:
                break
            await asyncio.sleep(0.1)
    finally:
        await peers.close()
    async with system.http(key) as http:
        after = await balances(http)
    assert swept.status == usage_pb2.RUN_STATUS_EXPIRED
    assert after["credit"] == {"posted": 1_000_000, "held": 0, "available": 1_000_000}


async def test_a_request_whose_run_hold_ended_first_is_recorded_without_a_charge(
    system: System, tmp_path: Path
) -> None:
    account, key = await system.new_account(credit=5_000_000)
    body = {**BODY, "stream": False}
    async with system.http(key) as http:
        run = (await http.post("/v1/runs", json={"model": "test-slow", "budget": "0.5"})).json()
        # The wallet ended the run's hold under the run (as if it had expired).
        peers = peers_of(system)
        try:
            await peers.wallet_client.release(run["hold"]["hold_id"], reason="test")
        finally:
            await peers.close()
        answer = await http.post(
            "/v1/chat/completions", json=body, headers={"x-tokenforge-run": run["id"]}
        )
        receipt = (await http.get(f"/v1/usage/{answer.headers['x-request-id']}")).json()
        closed = (await http.post(f"/v1/runs/{run['id']}/close")).json()
        after = await balances(http)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["cost_micros"] == 0
    assert receipt["charge"]["micros"] == 0 and receipt["error"] == "run_settled_first"
    assert receipt["ledger_entry_id"] is None
    assert closed["run"]["status"] == "closed" and closed["totals"]["charge"]["micros"] == 0
    assert after["credit"] == {"posted": 5_000_000, "held": 0, "available": 5_000_000}
    await assert_reconciled(system, tmp_path, account)
