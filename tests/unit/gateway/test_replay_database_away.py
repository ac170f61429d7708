"""`Idempotency-Key` while the gateway's database restarts (issue 21): a key that
cannot be claimed is refused before anything runs (503, nothing charged, try again);
an answer whose record cannot be written yet is still given, and the record is written
once the database answers; a failure's give-back likewise, the failure kept."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import Response

from services.gateway.storage.idempotency import Stored
from services.gateway.transport.http import replay
from tokenforge.errors import DomainError, Reason

GONE = ConnectionRefusedError(111, "Connection refused")


class Store:
    """The idempotency store, its database away for the first `away` calls of each kind."""

    def __init__(self, claim_away: int = 0, write_away: int = 0) -> None:
        self.claim_away, self.write_away = claim_away, write_away
        self.completed: list[tuple[int, bytes]] = []
        self.given_back = 0

    async def claim(self, *_: Any) -> Stored | None:
        if self.claim_away:
            self.claim_away -= 1
            raise RuntimeError("claim failed") from GONE
        return None

    async def complete(self, api_key: str, key: str, status: int, body: bytes, _: Any) -> None:
        if self.write_away:
            self.write_away -= 1
            raise GONE
        self.completed.append((status, bytes(body)))

    def let_go(self, request_id: str) -> None:
        pass

    async def give_back(self, *_: Any) -> None:
        if self.write_away:
            self.write_away -= 1
            raise GONE
        self.given_back += 1


def a_request() -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"idempotency-key", b"k-1"), (b"authorization", b"Bearer tf_key")],
        "state": {"request_id": "req-1"},
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    return Request(scope, receive)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "RECORD_RETRY_MAX_S", 0.01)


async def settled() -> None:
    while replay._writing:
        await asyncio.sleep(0.01)


async def test_a_key_that_cannot_be_claimed_is_refused_before_anything_runs() -> None:
    ran = []

    async def run() -> Response:
        ran.append(1)
        return Response(b"{}")

    with pytest.raises(DomainError) as refused:
        await replay.idempotent(Store(claim_away=1), a_request(), run)  # type: ignore[arg-type]
    assert refused.value.reason is Reason.SERVICE_UNAVAILABLE
    assert "nothing was run or charged" in refused.value.message
    assert refused.value.metadata == {"retry_after_s": "1"}
    assert ran == []


async def test_an_answer_is_given_and_its_record_written_once_the_database_is_back() -> None:
    store = Store(write_away=2)

    async def run() -> Response:
        return Response(b'{"charged": 42}', 200)

    answer = await replay.idempotent(store, a_request(), run)  # type: ignore[arg-type]
    assert answer.status_code == 200 and answer.body == b'{"charged": 42}'
    await asyncio.wait_for(settled(), 5)
    assert store.completed == [(200, b'{"charged": 42}')]


async def test_a_failure_keeps_its_error_and_gives_the_key_back_later() -> None:
    store = Store(write_away=1)
    failure = DomainError(Reason.SERVICE_UNAVAILABLE, "The wallet is not answering.")

    async def run() -> Response:
        raise failure

    with pytest.raises(DomainError) as raised:
        await replay.idempotent(store, a_request(), run)  # type: ignore[arg-type]
    assert raised.value is failure
    await asyncio.wait_for(settled(), 5)
    assert store.given_back == 1
