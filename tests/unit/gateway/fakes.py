"""Fakes of the gateway's peers and queue for unit tests (the real ones are tested
against the real services in tests/e2e)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from services.gateway.adapters.peers import Peers
from services.gateway.storage.finish_queue import Waiting
from tokenforge.errors import DomainError
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.holds import part_entry_id, settle_entry_id
from tokenforge.runtime.grpc_client import Peer


class Usage:
    def __init__(self, error: DomainError | None) -> None:
        self.error = error
        self.recorded: list[str] = []

    async def record_receipt(self, receipt: usage_pb2.Receipt) -> usage_pb2.Receipt:
        if self.error is not None:
            raise self.error
        self.recorded.append(receipt.request_id)
        return receipt


class RecordingUsage(Usage):
    def __init__(self) -> None:
        super().__init__(None)
        self.receipts: list[usage_pb2.Receipt] = []

    async def record_receipt(self, receipt: usage_pb2.Receipt) -> usage_pb2.Receipt:
        self.receipts.append(usage_pb2.Receipt.FromString(receipt.SerializeToString()))
        return await super().record_receipt(receipt)


class Queue:
    def __init__(self, broken: bool = False) -> None:
        self.kept: dict[str, bytes] = {}
        self.broken = broken

    async def put(self, request_id: str, receipt: bytes, **where: object) -> None:
        if self.broken:
            raise OSError("the gateway's database is unreachable")
        self.kept.setdefault(request_id, receipt)


class WaitingQueue:
    """The queue as the relay sees it."""

    def __init__(self, *receipts: usage_pb2.Receipt, finish: str = "") -> None:
        self.rows = {r.request_id: r.SerializeToString() for r in receipts}
        self.errors: dict[str, str] = {}
        self.finish = finish

    async def waiting(self, limit: int, account_id: str = "", hold_id: str = "") -> list[Any]:
        ready = [(rid, data) for rid, data in self.rows.items() if rid not in self.errors]
        return [Waiting(rid, data, 0, self.finish) for rid, data in ready[:limit]]

    async def delivered(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            del self.rows[rid]

    async def refused(self, request_id: str, error: str) -> None:
        self.errors[request_id] = error

    async def count(self) -> int:
        return len(self.rows)


class Wallet:
    """Captures parts and settles holds (under the entry ids the wallet derives) and
    releases them, or refuses them all."""

    def __init__(self, error: DomainError | None = None) -> None:
        self.error = error
        self.parts: list[tuple[str, int, str]] = []
        self.settles: list[tuple[str, int]] = []
        self.releases: list[tuple[str, str]] = []

    async def settle(self, hold_id: str, amount: int, **_: str) -> wallet_pb2.SettleResponse:
        if self.error is not None:
            raise self.error
        self.settles.append((hold_id, amount))
        answer = wallet_pb2.SettleResponse()
        if amount:
            answer.entry.entry_id = str(settle_entry_id(hold_id))
        return answer

    async def release(self, hold_id: str, *, reason: str = "", **_: str) -> wallet_pb2.Hold:
        if self.error is not None:
            raise self.error
        self.releases.append((hold_id, reason))
        return wallet_pb2.Hold(hold_id=hold_id)

    async def capture_part(
        self, hold_id: str, amount: int, request_id: str, **_: str
    ) -> wallet_pb2.CapturePartResponse:
        if self.error is not None:
            raise self.error
        self.parts.append((hold_id, amount, request_id))
        entry_id = str(part_entry_id(hold_id, request_id))
        return wallet_pb2.CapturePartResponse(entry=wallet_pb2.LedgerEntry(entry_id=entry_id))


def peers_with(usage: Usage, queue: Any) -> Peers:
    peers = Peers(*(Peer(name, "127.0.0.1:9", "") for name in ("r", "w", "p", "u")))
    peers.__dict__["usage_client"] = usage  # the cached client, replaced
    peers.finish_queue = queue
    return peers


def chunk(text: str) -> str:
    return "data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).decode()


class PacedUpstream:
    """An upstream answer read as SSE lines: `words` chunks, then [DONE]; the reading
    waits at `stall` (a chunk index) until let go, like a slow model."""

    def __init__(self, words: int, stall: int | None = None, fail: Exception | None = None):
        self.words, self.stall, self.fail = words, stall, fail
        self.go = asyncio.Event()
        self.closed = 0
        self.cancelled_while_reading = False

    async def lines(self) -> AsyncIterator[str]:
        for n in range(self.words):
            if n == self.stall:
                try:
                    await self.go.wait()
                except asyncio.CancelledError:
                    self.cancelled_while_reading = True
                    raise
            if self.fail is not None and n == self.words - 1:
                raise self.fail
            yield chunk(f"w{n} ")
            yield ""
        yield "data: [DONE]"

    async def close(self) -> None:
        self.closed += 1
