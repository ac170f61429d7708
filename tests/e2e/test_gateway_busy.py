"""A gateway process at its limit of open upstream calls (TOKENFORGE_UPSTREAM_MAX_
CONNECTIONS) refuses the next request at once with 503 gateway_busy and Retry-After,
reserving and charging nothing, instead of a 504 after a wait (issue 21); once its
streams end, it takes requests again."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.e2e.harness import System

SLOW = "test-slow"  # 200 chunks 50 ms apart


async def read_stream(http: httpx.AsyncClient, opened: asyncio.Event) -> int:
    body = {"model": SLOW, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        opened.set()
        return sum([1 async for line in response.aiter_lines() if line.startswith("data: ")])


async def test_a_gateway_at_its_upstream_limit_refuses_at_once_and_holds_nothing(
    system: System, database_url: str
) -> None:
    replica = await system.another_gateway(database_url, upstream_max_connections=2)
    _, key = await system.new_account(credit=5_000_000, routed=0)
    url = f"http://127.0.0.1:{replica.http_port}"
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60
        ) as http:
            opened = [asyncio.Event(), asyncio.Event()]
            streams = [asyncio.create_task(read_stream(http, e)) for e in opened]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 30)
            held_before = (await http.get("/v1/wallet")).json()["balances"]

            asked = time.monotonic()
            refused = await http.post(
                "/v1/chat/completions",
                json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
            )
            took = time.monotonic() - asked
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "gateway_busy" and error["type"] == "api_error"
            assert "TOKENFORGE_UPSTREAM_MAX_CONNECTIONS" in error["message"]
            assert error["details"]["limit"] == 2
            assert refused.headers["retry-after"] == "1"
            assert took < 1.0, f"refused after {took:.2f} s, not at once"
            assert (await http.get("/v1/wallet")).json()["balances"] == held_before

            assert all(n > 100 for n in await asyncio.gather(*streams))
            # Both streams ended: their connections count no more.
            again = await asyncio.gather(
                *(
                    http.post(
                        "/v1/chat/completions",
                        json={
                            "model": "demo-chat",
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                    )
                    for _ in range(2)
                )
            )
            assert [a.status_code for a in again] == [200, 200]
    finally:
        await replica.stop(grace=0.5)
