"""Recording a settled request's receipt: queued when usage is unreachable; and when
it cannot even be queued, a refusal that tells the truth about the charge. The relay
that delivers the queue: receipts, and budget draws' finishes (part, then receipt)."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway import metrics, relay
from services.gateway.adapters.peers import Peers
from services.gateway.flow.ends import PeerEnds
from services.gateway.flow.finish import charged_anyway
from services.gateway.storage.finish_queue import PART, RELEASE, SETTLE
from tests.unit.gateway.fakes import Queue, RecordingUsage, Usage, WaitingQueue, Wallet, peers_with
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.holds import part_entry_id, settle_entry_id

DOWN = DomainError(Reason.SERVICE_UNAVAILABLE, "The usage service is not answering right now.")


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
    await PeerEnds(peers_with(usage, queue)).record(charged())
    assert usage.recorded == ["req-1"] and queue.kept == {}


async def test_usage_down_queues_the_receipt_whole_and_answers() -> None:
    queue = Queue()
    await PeerEnds(peers_with(Usage(DOWN), queue)).record(charged())
    assert usage_pb2.Receipt.FromString(queue.kept["req-1"]) == charged()


async def test_a_refusal_other_than_unreachable_is_raised_and_nothing_queued() -> None:
    queue = Queue()
    conflict = DomainError(Reason.IDEMPOTENCY_CONFLICT, "another receipt")
    with pytest.raises(DomainError) as raised:
        await PeerEnds(peers_with(Usage(conflict), queue)).record(charged())
    assert raised.value is conflict and queue.kept == {}


@pytest.mark.parametrize("queue", [None, Queue(broken=True)], ids=["no queue", "queue down"])
async def test_when_it_cannot_wait_anywhere_the_refusal_names_the_charge_taken(
    queue: Queue | None,
) -> None:
    with pytest.raises(DomainError) as raised:
        await PeerEnds(peers_with(Usage(DOWN), queue)).record(charged())
    error = raised.value
    # 503 receipt_pending, not service_unavailable (which says nothing was charged).
    assert error.reason is Reason.RECEIPT_PENDING
    assert error.metadata == {
        "request_id": "req-1",
        "charge_micros": "1234",
        "bucket": "credit",
        "ledger_entry_id": "entry-1",
    }
    assert "0.001234 CR was taken from Credit (ledger entry entry-1)" in error.message
    assert "Do not send it again" in error.message
    assert charged_anyway(error)  # the Idempotency-Key is not given back


async def test_a_release_that_cannot_be_recorded_says_nothing_was_charged() -> None:
    with pytest.raises(DomainError) as raised:
        await PeerEnds(peers_with(Usage(DOWN), None)).record(charged(0))
    assert "nothing was charged" in raised.value.message
    assert "You may send it again" in raised.value.message
    assert not charged_anyway(raised.value)


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


def budget_finish(request_id: str, charge: int) -> usage_pb2.Receipt:
    return usage_pb2.Receipt(
        request_id=request_id,
        account_id="acct-1",
        bucket=common_pb2.BUCKET_CREDIT,
        hold_id="hold-b",
        charge_micros=charge,
        entry_id=str(part_entry_id("hold-b", request_id)) if charge else "",
    )


def relay_peers(wallet: Wallet, usage: Usage, *finishes: usage_pb2.Receipt) -> Peers:
    peers = peers_with(usage, WaitingQueue(*finishes, finish=PART))
    peers.__dict__["wallet_client"] = wallet
    return peers


async def test_the_relay_captures_each_part_then_records_its_receipt() -> None:
    wallet, usage = Wallet(), Usage(None)
    peers = relay_peers(wallet, usage, budget_finish("req-1", 300), budget_finish("req-2", 0))
    assert await relay.deliver(peers) == (2, 2)
    assert wallet.parts == [("hold-b", 300, "req-1")]  # nothing to capture for req-2
    assert usage.recorded == ["req-1", "req-2"]
    assert peers.finish_queue.rows == {}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "reason", [Reason.HOLD_EXPIRED, Reason.HOLD_NOT_OPEN, Reason.SETTLE_ABOVE_HOLD]
)
async def test_a_part_the_budget_hold_cannot_pay_is_recorded_as_not_collected(
    reason: Reason,
) -> None:
    wallet = Wallet(DomainError(reason, "The hold cannot pay this part."))
    usage = RecordingUsage()
    before = metrics.CHARGES_NOT_COLLECTED._value.get()  # type: ignore[attr-defined]
    assert await relay.deliver(relay_peers(wallet, usage, budget_finish("req-1", 300))) == (1, 1)
    (receipt,) = usage.receipts
    assert (receipt.charge_micros, receipt.entry_id) == (0, "")
    assert receipt.error_code == "charge_not_collected"
    assert metrics.CHARGES_NOT_COLLECTED._value.get() == before + 1  # type: ignore[attr-defined]


async def test_a_finish_waits_while_the_wallet_cannot_be_reached_and_is_kept_if_refused() -> None:
    down = relay_peers(Wallet(DOWN), Usage(None), budget_finish("req-1", 300))
    assert await relay.deliver(down) == (0, 1)
    assert set(down.finish_queue.rows) == {"req-1"}  # type: ignore[union-attr]
    assert not down.finish_queue.errors  # type: ignore[union-attr]

    unknown = DomainError(Reason.NOT_FOUND, "No hold hold-b on this account.")
    refused = relay_peers(Wallet(unknown), Usage(None), budget_finish("req-1", 300))
    assert await relay.deliver(refused) == (0, 1)
    assert refused.finish_queue.errors["req-1"].startswith("NOT_FOUND")  # type: ignore[union-attr]


class SlowUsage(Usage):
    """Records once released, so two rounds can meet the same row in flight."""

    def __init__(self) -> None:
        super().__init__(None)
        self.release = asyncio.Event()

    async def record_receipt(self, receipt: usage_pb2.Receipt) -> usage_pb2.Receipt:
        await self.release.wait()
        return await super().record_receipt(receipt)


async def test_two_rounds_that_meet_one_row_deliver_it_once() -> None:
    usage = SlowUsage()
    peers = relay_peers(Wallet(), usage, budget_finish("req-1", 300))
    relay_round = asyncio.create_task(relay.deliver(peers))
    await asyncio.sleep(0)  # the relay's round is delivering req-1
    read_round = asyncio.create_task(relay.deliver(peers, account_id="acct-1"))
    await asyncio.sleep(0)
    usage.release.set()
    assert await relay_round == (1, 1) and await read_round == (1, 1)
    assert usage.recorded == ["req-1"]  # once
    assert peers.finish_queue.rows == {} and peers.delivering == {}  # type: ignore[union-attr]


def own_finish(
    request_id: str, charge: int, rule: str = "finished_with_usage"
) -> usage_pb2.Receipt:
    return usage_pb2.Receipt(
        request_id=request_id,
        account_id="acct-1",
        bucket=common_pb2.BUCKET_CREDIT,
        hold_id=f"hold-{request_id}",
        charge_micros=charge,
        entry_id=str(settle_entry_id(f"hold-{request_id}")) if charge else "",
        settlement_rule=rule,
    )


async def test_the_relay_settles_or_releases_a_requests_own_hold_then_records_its_receipt() -> None:
    wallet, usage = Wallet(), RecordingUsage()
    settled = peers_with(usage, WaitingQueue(own_finish("req-1", 300), finish=SETTLE))
    settled.__dict__["wallet_client"] = wallet
    assert await relay.deliver(settled) == (1, 1)
    released = peers_with(
        usage, WaitingQueue(own_finish("req-2", 0, "error_before_first_byte"), finish=RELEASE)
    )
    released.__dict__["wallet_client"] = wallet
    assert await relay.deliver(released) == (1, 1)
    assert wallet.settles == [("hold-req-1", 300)]
    assert wallet.releases == [("hold-req-2", "error_before_first_byte")]
    assert [(r.request_id, r.entry_id) for r in usage.receipts] == [
        ("req-1", str(settle_entry_id("hold-req-1"))),
        ("req-2", ""),
    ]


async def test_a_settle_whose_hold_ended_is_recorded_as_not_collected() -> None:
    usage = RecordingUsage()
    peers = peers_with(usage, WaitingQueue(own_finish("req-1", 300), finish=SETTLE))
    peers.__dict__["wallet_client"] = Wallet(DomainError(Reason.HOLD_EXPIRED, "expired"))
    assert await relay.deliver(peers) == (1, 1)
    (receipt,) = usage.receipts
    assert (receipt.charge_micros, receipt.entry_id, receipt.error_code) == (
        0,
        "",
        "charge_not_collected",
    )
