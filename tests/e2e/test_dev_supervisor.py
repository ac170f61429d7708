"""`tokenforge dev` supervises its children like a pod would (issue 21): a killed child
is started again (with backoff, logged) and serves, and a gateway told to stop
(SIGTERM) with streams open lets them finish within its grace period, each settled
and receipted, and gives its budgets back at once rather than by their TTL."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.devsystem import start_dev, stop_dev, wait_for_dev_json
from tests.e2e.test_dev_command import health
from tokenforge.runtime.embedded import free_port

CATALOG = Path(__file__).parent / "catalog.yaml"
SLOW = "test-slow"  # 200 chunks 50 ms apart: a stream of about 10 s
GRACE_MS = 30_000


def child(dev_pid: int, *command: str) -> psutil.Process:
    """The child of `tokenforge dev` whose command line ends with `command`."""
    for process in psutil.Process(dev_pid).children():
        try:
            cmdline = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if cmdline[-len(command) - 2 : -2] == list(command) or cmdline[-len(command) :] == list(
            command
        ):
            return process
    raise LookupError(f"no child runs {' '.join(command)}")


def wait_for_new_child(dev_pid: int, old_pid: int, *command: str) -> psutil.Process:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            found = child(dev_pid, *command)
            if found.pid != old_pid:
                return found
        except LookupError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{' '.join(command)} was not started again within 60 s")


def wait_serving(address: str) -> None:
    deadline = time.monotonic() + 60
    while health(address) != "SERVING":
        assert time.monotonic() < deadline, f"{address} not SERVING again"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Any:
    state_dir = tmp_path_factory.mktemp("devsupervised")
    env = {"TOKENFORGE_CATALOG_PATH": str(CATALOG), "TOKENFORGE_SHUTDOWN_GRACE_MS": str(GRACE_MS)}
    proc = start_dev(state_dir, free_port(), env=env)
    try:
        info = wait_for_dev_json(proc, state_dir)
        yield proc, info, state_dir
    finally:
        out = stop_dev(proc)
        print(out)


def test_a_killed_service_comes_back_and_serves(dev: Any) -> None:
    proc, info, state_dir = dev
    http = httpx.Client(
        base_url=info["gateway_url"],
        headers={"authorization": f"Bearer {info['api_key']}"},
        timeout=30,
    )
    for name in ("routing", "gateway"):
        old = child(proc.pid, "serve", name)
        old.send_signal(signal.SIGKILL)
        new = wait_for_new_child(proc.pid, old.pid, "serve", name)
        assert new.pid != old.pid
        wait_serving(info["services"][name])
        log = (state_dir / "logs" / f"{name}.log").read_text(errors="replace")
        assert "tokenforge dev: exited with code -9" in log
    # The restarted gateway and routing serve a paid request.
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = http.post(
                "/v1/chat/completions",
                json={"model": "demo-chat", "messages": [{"role": "user", "content": "back?"}]},
            )
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code == 200:
            break
        assert time.monotonic() < deadline, answer.text if answer is not None else "no answer"
        time.sleep(0.5)
    assert answer.json()["receipt"]["charge"]["micros"] > 0
    assert proc.poll() is None, "tokenforge dev itself must keep running"


async def open_stream(client: httpx.AsyncClient, started: asyncio.Event) -> dict[str, Any]:
    """A streamed chat read to its end: its request id, chunks, and final usage."""
    body = {
        "model": SLOW,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "a long answer please"}],
    }
    seen: dict[str, Any] = {"chunks": 0, "usage": None, "done": False}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        seen["request_id"] = response.headers["x-request-id"]
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                seen["done"] = True
            elif line.startswith("data: "):
                seen["chunks"] += 1
                started.set()
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    seen["usage"] = chunk["usage"]
    return seen


async def test_a_gateway_stopped_with_streams_open_finishes_them_and_gives_budgets_back(
    dev: Any,
) -> None:
    proc, info, _ = dev
    headers = {"authorization": f"Bearer {info['api_key']}"}
    async with httpx.AsyncClient(
        base_url=info["gateway_url"], headers=headers, timeout=60
    ) as client:
        events = [asyncio.Event() for _ in range(6)]
        streams = [asyncio.create_task(open_stream(client, e)) for e in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
        held = {
            b["bucket"]: b["held"]["micros"]
            for b in (await client.get("/v1/wallet")).json()["balances"]
        }
        assert sum(held.values()) > 0, "open streams hold money"
        gateway = child(proc.pid, "serve", "gateway")
        stopped_at = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        seen = await asyncio.gather(*streams)
        await asyncio.to_thread(gateway.wait, GRACE_MS / 1000 + 10)
        took = time.monotonic() - stopped_at
    assert took < GRACE_MS / 1000, f"the gateway took {took:.1f} s to stop"
    for stream in seen:
        assert stream["done"] and stream["usage"], stream  # finished, not cut
    # The supervisor starts the gateway again; every stream has its receipt and ledger row,
    # and nothing is held: the stopped gateway gave its budgets back on the way out.
    wait_for_new_child(proc.pid, gateway.pid, "serve", "gateway")
    wait_serving(info["services"]["gateway"])
    async with httpx.AsyncClient(
        base_url=info["gateway_url"], headers=headers, timeout=30
    ) as client:
        for stream in seen:
            receipt = (await client.get(f"/v1/usage/{stream['request_id']}")).json()
            assert receipt["charge"]["micros"] == stream["usage"]["cost_micros"], receipt
            rows = (
                await client.get("/v1/wallet/ledger", params={"request_id": stream["request_id"]})
            ).json()["data"]
            assert [r["amount"]["micros"] for r in rows] == [-receipt["charge"]["micros"]]
        balances = (await client.get("/v1/wallet")).json()["balances"]
    assert all(b["held"]["micros"] == 0 for b in balances), balances
