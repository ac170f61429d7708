"""An `Idempotency-Key` whose request was cut off by its gateway stopping (issue 21:
chaos kills a gateway replica mid-request). Its claim is renewed only by the process
that runs it; once the lease lapses a repeat is told the request was cut off and where
its receipt would be (409, kept for later repeats), instead of "still running" for the
whole 24 h window, and the request is never run twice under one key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from services.gateway.storage.idempotency import LEASE, IdempotencyStore, digest
from tests.e2e.harness import System
from tokenforge.errors import DomainError, Reason
from tokenforge.runtime.db import create_engine

BODY = orjson.dumps({"model": "demo-chat", "messages": [{"role": "user", "content": "once"}]})


async def test_a_claim_whose_gateway_stopped_lapses_and_is_never_run_twice(
    system: System, database_url: str
) -> None:
    _, key = await system.new_account(credit=5_000_000, routed=0)
    engine = create_engine(database_url, pool_size=1)
    stopped = IdempotencyStore(engine)  # the gateway that stops mid-request
    try:
        assert await stopped.claim(key, "k-cut", BODY, "req_cutoff0000000000000") is None
        assert await stopped.claim(key, "k-live", BODY, "req_running000000000000") is None
        async with system.http(key) as http:
            headers = {"content-type": "application/json"}
            # Its lease is current: still running, try again in a moment.
            live = await http.post(
                "/v1/chat/completions",
                content=BODY,
                headers={**headers, "idempotency-key": "k-live"},
            )
            assert live.status_code == 409 and live.json()["error"]["code"] == "request_in_progress"

            # The process is gone: nobody renews the claim, and its lease lapses.
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "UPDATE gateway.idempotency_records SET lease_until = :past "
                        "WHERE idempotency_key = 'k-cut' AND key_digest = :d"
                    ),
                    {"past": datetime.now(UTC) - timedelta(seconds=1), "d": digest(key)},
                )
            cut = await http.post(
                "/v1/chat/completions",
                content=BODY,
                headers={**headers, "idempotency-key": "k-cut"},
            )
            assert cut.status_code == 409, cut.text
            error = cut.json()["error"]
            assert error["code"] == "idempotency_conflict"
            assert "req_cutoff0000000000000" in error["message"] and "cut off" in error["message"]
            assert "/v1/usage/req_cutoff0000000000000" in error["message"]
            assert "new Idempotency-Key" in error["message"]
            # Kept: a later repeat gets the same answer, and nothing ran under the key.
            again = await http.post(
                "/v1/chat/completions",
                content=BODY,
                headers={**headers, "idempotency-key": "k-cut"},
            )
            assert again.status_code == 409 and again.json() == cut.json()
            assert again.headers["idempotent-replayed"] == "true"
            assert (await http.get("/v1/usage", params={"limit": 10})).json()["data"] == []
    finally:
        await engine.dispose()


async def test_the_process_running_a_request_renews_its_claim(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    store = IdempotencyStore(engine)
    try:
        assert await store.claim("tf_renew", "k-renew", BODY, "req_renew00000000000000") is None
        lease = "SELECT lease_until FROM gateway.idempotency_records WHERE request_id = :r"
        async with engine.connect() as conn:
            first = (await conn.execute(text(lease), {"r": "req_renew00000000000000"})).scalar_one()
        await store.renew()
        async with engine.connect() as conn:
            renewed = (
                await conn.execute(text(lease), {"r": "req_renew00000000000000"})
            ).scalar_one()
        assert renewed > first and renewed - datetime.now(UTC) > LEASE - timedelta(seconds=5)
        store.let_go("req_renew00000000000000")  # its request ended: not renewed any more
        assert store.held == set()
    finally:
        await engine.dispose()


async def test_a_claim_that_meets_a_record_given_back_meanwhile_takes_the_key(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chaos seed 840342255: a copy's insert found the first request's claim, which that
    request gave back (its answer a 503 that charged nothing) before the copy read it.
    The copy then claims the free key instead of failing with a 500."""
    engine = create_engine(database_url, pool_size=2)
    first, copy = IdempotencyStore(engine), IdempotencyStore(engine)
    try:
        assert await first.claim("tf_race", "k-race", BODY, "req_first00000000000000") is None
        holder = copy._holder
        gave_back: list[bool] = []

        async def given_back_meanwhile(conn: Any, key_digest: str, key: str) -> Any:
            if not gave_back:  # between the copy's insert and its read, once
                await first.give_back("tf_race", "k-race")
                gave_back.append(True)
            return await holder(conn, key_digest, key)

        monkeypatch.setattr(copy, "_holder", given_back_meanwhile)
        assert await copy.claim("tf_race", "k-race", BODY, "req_copy000000000000000") is None
        assert gave_back == [True] and copy.held == {"req_copy000000000000000"}
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT request_id, state FROM gateway.idempotency_records "
                        "WHERE idempotency_key = 'k-race' AND key_digest = :d"
                    ),
                    {"d": digest("tf_race")},
                )
            ).all()
        assert [tuple(r) for r in rows] == [("req_copy000000000000000", "running")]
    finally:
        await engine.dispose()


async def test_a_key_taken_and_given_back_again_and_again_asks_the_client_to_retry(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(database_url, pool_size=2)
    first, copy = IdempotencyStore(engine), IdempotencyStore(engine)

    async def never_found(conn: Any, key_digest: str, key: str) -> None:
        return None  # the holder is given back every time the copy looks

    try:
        assert await first.claim("tf_churn", "k-churn", BODY, "req_churn0000000000000") is None
        monkeypatch.setattr(copy, "_holder", never_found)
        with pytest.raises(DomainError) as raised:
            await copy.claim("tf_churn", "k-churn", BODY, "req_churncopy0000000000")
        assert raised.value.reason is Reason.REQUEST_IN_PROGRESS
        assert "nothing was run or charged" in raised.value.message
        assert copy.held == set()
    finally:
        await engine.dispose()
