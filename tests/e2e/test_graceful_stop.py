"""A gateway told to stop while streams run longer than its grace period
(TOKENFORGE_SHUTDOWN_GRACE_MS): at the end of the grace it ends them, each settled for
what it delivered and receipted, and it gives its budgets back before it exits, so
nothing stays held until a TTL (issue 21). The stop is the one SIGTERM runs
(`tokenforge serve`: run_until_signal -> RunningService.stop); tests/e2e/
test_dev_supervisor.py sends the signal to a real process whose streams finish within
the grace."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.e2e.harness import System

SLOW = "test-slow"  # 200 chunks 50 ms apart: about 10 s
GRACE_MS = 1500


async def stream_until_cut(http: httpx.AsyncClient, opened: asyncio.Event) -> tuple[str, int]:
    """A stream read until the server ends it: its request id and the chunks read."""
    body = {"model": SLOW, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    chunks = 0
    request_id = ""
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks += 1
                    opened.set()
    except httpx.TransportError:
        pass  # the server ended the stream at the end of its grace period
    return request_id, chunks


async def test_streams_past_the_grace_are_settled_receipted_and_budgets_given_back(
    system: System, database_url: str
) -> None:
    replica = await system.another_gateway(database_url, shutdown_grace_ms=GRACE_MS)
    _, key = await system.new_account(credit=5_000_000, routed=0)
    headers = {"authorization": f"Bearer {key}"}
    url = f"http://127.0.0.1:{replica.http_port}"
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        opened = [asyncio.Event() for _ in range(4)]
        streams = [asyncio.create_task(stream_until_cut(http, e)) for e in opened]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 30)
        held = sum(b["held"]["micros"] for b in (await http.get("/v1/wallet")).json()["balances"])
        assert held > 0
        stopping = time.monotonic()
        await replica.stop(grace=0.5)
        took = time.monotonic() - stopping
        seen = await asyncio.gather(*streams)
    assert took < GRACE_MS / 1000 + 8, f"the stop took {took:.1f} s"
    # Ended at the grace, long before their 200 chunks.
    assert all(0 < chunks < 150 for _, chunks in seen), seen
    async with system.http(key) as http:
        balances = (await http.get("/v1/wallet")).json()["balances"]
        assert all(b["held"]["micros"] == 0 for b in balances), balances
        for request_id, chunks in seen:
            receipt = (await http.get(f"/v1/usage/{request_id}")).json()
            assert receipt["charge"]["micros"] > 0, receipt  # what was delivered is paid
            rows = (await http.get("/v1/wallet/ledger", params={"request_id": request_id})).json()
            assert [r["amount"]["micros"] for r in rows["data"]] == [
                -receipt["charge"]["micros"]
            ], (chunks, receipt)
