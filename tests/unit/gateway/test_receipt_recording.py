"""Recording a settled request's receipt: queued when usage is unreachable; and when
it cannot even be queued, a refusal that tells the truth about the charge."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway import handlers, relay
from services.gateway.adapters.peers import Peers
from services.gateway.storage.receipt_queue import Waiting
from tokenforge.common.v1 import common_pb2
from tokenforge.errors import DomainError, Reason
from tokenforge.runtime.grpc_client import Peer
from tokenforge.usage.v1 import usage_pb2

DOWN = DomainError(Reason.SERVICE_UNAVAILABLE, "The usage service is not answering right now.")


class Usage:
    def __init__(self, error: DomainError | None) -> None:
        self.error = error
        self.recorded: list[str] = []

    async def record_receipt(self, receipt: usage_pb2.Receipt) -> usage_pb2.Receipt:
        if self.error is not None:
            raise self.error
        self.recorded.append(receipt.request_id)
        return receipt


class Queue:
    def __init__(self, broken: bool = False) -> None:
        self.kept: dict[str, bytes] = {}
        self.broken = broken

    async def put(self, request_id: str, receipt: bytes, **where: object) -> None:
        if self.broken:
            raise OSError("the gateway's database is unreachable")
        self.kept.setdefault(request_id, receipt)


def peers_with(usage: Usage, queue: Any) -> Peers:
    peers = Peers(*(Peer(name, "127.0.0.1:9", "") for name in ("r", "w", "p", "u")))
    peers.__dict__["usage_client"] = usage  # the cached client, replaced
    peers.receipt_queue = queue
    return peers


def charged(micros: int = 1_234) -> usage_pb2.Receipt:
    return usage_pb2.Receipt(
        request_id="req-1",
        account_id="acct-1",
        bucket=common_pb2.BUCKET_CREDIT,
        charge_micros=micros,
        entry_id="entry-1",
    )


async def test_usage_up_records_it_and_queues_nothing() -> None:
    usage, queue = Usage(None), Queue()
    await handlers.record_receipt(peers_with(usage, queue), charged())
    assert usage.recorded == ["req-1"] and queue.kept == {}


async def test_usage_down_queues_the_receipt_whole_and_answers() -> None:
    queue = Queue()
    await handlers.record_receipt(peers_with(Usage(DOWN), queue), charged())
    assert usage_pb2.Receipt.FromString(queue.kept["req-1"]) == charged()


async def test_a_refusal_other_than_unreachable_is_raised_and_nothing_queued() -> None:
    queue = Queue()
    conflict = DomainError(Reason.IDEMPOTENCY_CONFLICT, "another receipt")
    with pytest.raises(DomainError) as raised:
        await handlers.record_receipt(peers_with(Usage(conflict), queue), charged())
    assert raised.value is conflict and queue.kept == {}


@pytest.mark.parametrize("queue", [None, Queue(broken=True)], ids=["no queue", "queue down"])
async def test_when_it_cannot_wait_anywhere_the_refusal_names_the_charge_taken(
    queue: Queue | None,
) -> None:
    with pytest.raises(DomainError) as raised:
        await handlers.record_receipt(peers_with(Usage(DOWN), queue), charged())
    error = raised.value
    assert error.reason is Reason.SERVICE_UNAVAILABLE
    assert "0.001234 CR was taken from Credit (ledger entry entry-1)" in error.message
    assert "Do not send it again" in error.message
    assert handlers.charged_anyway(error)  # the Idempotency-Key is not given back


async def test_a_release_that_cannot_be_recorded_says_nothing_was_charged() -> None:
    with pytest.raises(DomainError) as raised:
        await handlers.record_receipt(peers_with(Usage(DOWN), None), charged(0))
    assert "nothing was charged" in raised.value.message
    assert "You may send it again" in raised.value.message
    assert not handlers.charged_anyway(raised.value)


class WaitingQueue:
    """The queue as the relay sees it."""

    def __init__(self, *receipts: usage_pb2.Receipt) -> None:
        self.rows = {r.request_id: r.SerializeToString() for r in receipts}
        self.errors: dict[str, str] = {}

    async def waiting(self, limit: int, account_id: str = "", hold_id: str = "") -> list[Any]:
        ready = [(rid, data) for rid, data in self.rows.items() if rid not in self.errors]
        return [Waiting(rid, data, 0) for rid, data in ready[:limit]]

    async def delivered(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            del self.rows[rid]

    async def refused(self, request_id: str, error: str) -> None:
        self.errors[request_id] = error

    async def count(self) -> int:
        return len(self.rows)


class PickyUsage(Usage):
    """Records, refuses one request id, and goes down at another."""

    def __init__(self, refuse: str, down_at: str) -> None:
        super().__init__(None)
        self.refuse, self.down_at = refuse, down_at

    async def record_receipt(self, receipt: usage_pb2.Receipt) -> usage_pb2.Receipt:
        if receipt.request_id == self.refuse:
            raise DomainError(Reason.IDEMPOTENCY_CONFLICT, "another receipt holds it")
        if receipt.request_id == self.down_at:
            raise DOWN
        return await super().record_receipt(receipt)


async def test_the_relay_records_each_keeps_a_refused_one_and_one_usage_could_not_take() -> None:
    receipts = [usage_pb2.Receipt(request_id=f"req-{n}") for n in range(5)]
    queue = WaitingQueue(*receipts)
    usage = PickyUsage(refuse="req-1", down_at="req-3")
    peers = peers_with(usage, queue)

    assert await relay.deliver(peers) == (3, 5)
    assert usage.recorded == ["req-0", "req-2", "req-4"]
    assert set(queue.rows) == {"req-1", "req-3"}  # refused one kept; one waits
    assert queue.errors["req-1"].startswith("IDEMPOTENCY_CONFLICT")
    assert not await relay.deliver_all(peers)  # usage still cannot take req-3

    usage.down_at = ""  # usage is back
    assert await relay.deliver_all(peers)
    assert usage.recorded == ["req-0", "req-2", "req-4", "req-3"]
    assert set(queue.rows) == {"req-1"}  # only the refused one, for an operator
    assert await relay.deliver(peers) == (0, 0)
