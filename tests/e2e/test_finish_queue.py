"""A charged request whose receipt the usage service cannot take (this gateway cannot
reach it) is not lost, and the client is not told that nothing was charged: the
receipt waits in the gateways' queue, the request is answered, and a relay records the
receipt with usage. Both reconcile commands then pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
from sqlalchemy import text

from services.gateway.storage.finish_queue import FinishQueue
from tests.e2e.harness import System
from tests.e2e.test_usage_reconcile import assert_reconciled
from tokenforge.runtime.db import create_engine
from tokenforge.runtime.embedded import free_port


async def waiting(database_url: str, request_id: str) -> int:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT count(*) FROM gateway.finish_queue WHERE request_id = :r"),
                {"r": request_id},
            )
            return int(rows.scalar_one())
    finally:
        await engine.dispose()


async def test_a_receipt_waits_while_usage_is_unreachable_and_a_relay_records_it(
    system: System, database_url: str, tmp_path: Path
) -> None:
    account, key = await system.new_account()
    usage_port = free_port()  # nothing listens there
    gateway = await system.another_gateway(database_url, usage_addr=f"127.0.0.1:{usage_port}")
    try:
        sdk = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key=key, max_retries=0
        )
        raw = await sdk.chat.completions.with_raw_response.create(
            model="demo-chat", messages=[{"role": "user", "content": "is anyone keeping count?"}]
        )
        completion = raw.parse()
        request_id = raw.headers["x-request-id"]
        assert completion.choices[0].message.content
        extra = (completion.usage.model_extra or {}) if completion.usage else {}
        charge = extra["cost_micros"]
        assert charge > 0
        summary = (completion.model_extra or {})["receipt"]
        # Its finish waits in the gateways' queue: this gateway cannot reach usage.
        assert await waiting(database_url, request_id) == 1

        async with system.http(key) as http:
            # The charge is in the ledger at once.
            ledger = (await http.get("/v1/wallet/ledger", params={"request_id": request_id})).json()
            [row] = ledger["data"]
            assert row["amount"]["micros"] == -charge
            assert row["entry_id"] == summary["ledger_entry_id"]
            # The receipt follows: the queue is the gateways' shared schema, and a relay
            # (this system's gateway reaches usage) hands it over within a second or so.
            for _ in range(300):
                found = await http.get(f"/v1/usage/{request_id}")
                if found.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            receipt = found.json()
        assert found.status_code == 200, found.text
        assert receipt["charge"]["micros"] == charge
        assert receipt["ledger_entry_id"] == row["entry_id"]
        assert receipt["status"] == "succeeded"
        await until_queue_empty(database_url)  # the relay removes what usage recorded
        await assert_reconciled(system, tmp_path, account)
    finally:
        await gateway.stop(grace=0.5)


async def until_queue_empty(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        queue = FinishQueue(engine)
        for _ in range(100):
            if await queue.count() == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{await queue.count()} receipts still queued")
    finally:
        await engine.dispose()
