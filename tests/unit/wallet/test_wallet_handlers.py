"""The wallet's use cases against an in-memory repository (idempotency, not-found,
commit discipline) and the top-up consumer's handling of one message."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from services.wallet import handlers
from services.wallet.domain import commands
from services.wallet.domain.model import EntryKind, HoldStatus
from services.wallet.transport.nats_consumer import TopUpConsumer
from tests.unit.wallet.fakes import NOW, FakeUnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.holds import part_entry_id
from tokenforge.money import Bucket


@pytest.fixture
async def uow() -> FakeUnitOfWork:
    fake = FakeUnitOfWork()
    await handlers.open_account(commands.OpenAccount("acct-1"), fake)
    await handlers.credit_topup(
        commands.CreditTopUp("acct-1", Bucket.CREDIT, 1_000_000, "order-0"), fake
    )
    return fake


async def test_open_account_is_idempotent(uow: FakeUnitOfWork) -> None:
    again = await handlers.open_account(commands.OpenAccount("acct-1"), uow)
    assert sorted((b.bucket.value, b.posted) for b in again) == [
        ("credit", 1_000_000),
        ("routed", 0),
    ]


async def test_hold_replays_by_request_id_and_conflicts_on_other_args(
    uow: FakeUnitOfWork,
) -> None:
    cmd = commands.PlaceHold("acct-1", Bucket.CREDIT, 100, "req-1")
    first = await handlers.place_hold(cmd, uow)
    again = await handlers.place_hold(cmd, uow)
    assert again.hold_id == first.hold_id
    for other in (
        commands.PlaceHold("acct-1", Bucket.CREDIT, 101, "req-1"),
        commands.PlaceHold("acct-1", Bucket.ROUTED, 100, "req-1"),
    ):
        with pytest.raises(DomainError) as caught:
            await handlers.place_hold(other, uow)
        assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert uow.committed.balances_[("acct-1", Bucket.CREDIT)].held == 100


async def test_hold_on_unknown_account_is_account_not_found(uow: FakeUnitOfWork) -> None:
    with pytest.raises(DomainError) as caught:
        await handlers.place_hold(commands.PlaceHold("ghost", Bucket.CREDIT, 1, "r"), uow)
    assert caught.value.reason is Reason.ACCOUNT_NOT_FOUND


async def test_parts_replay_conflict_and_end_with_the_rest_given_back(
    uow: FakeUnitOfWork,
) -> None:
    hold = await handlers.place_hold(commands.PlaceHold("acct-1", Bucket.CREDIT, 100, "r"), uow)
    hold_id = str(hold.hold_id)
    first = await handlers.capture_part(commands.CapturePart(hold_id, 30, "req-a"), uow)
    again = await handlers.capture_part(commands.CapturePart(hold_id, 30, "req-a"), uow)
    with pytest.raises(DomainError) as conflict:
        await handlers.capture_part(commands.CapturePart(hold_id, 31, "req-a"), uow)
    with pytest.raises(DomainError) as above:
        await handlers.capture_part(commands.CapturePart(hold_id, 71, "req-b"), uow)
    released = await handlers.release_hold(commands.ReleaseHold(hold_id), uow)
    assert first.entry is not None and again.entry == first.entry
    assert first.entry.request_id == "req-a" and first.entry.amount == -30
    assert conflict.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert above.value.reason is Reason.SETTLE_ABOVE_HOLD
    assert (released.status, released.captured) == (HoldStatus.RELEASED, 30)
    balance = uow.committed.balances_[("acct-1", Bucket.CREDIT)]
    assert (balance.posted, balance.held) == (1_000_000 - 30, 0)
    assert (await handlers.reconcile(commands.Reconcile(), uow)).ok


async def test_a_parts_entry_id_is_derived_from_its_hold_and_request(
    uow: FakeUnitOfWork,
) -> None:
    hold = await handlers.place_hold(commands.PlaceHold("acct-1", Bucket.CREDIT, 100, "r"), uow)
    hold_id = str(hold.hold_id)
    first = await handlers.capture_part(commands.CapturePart(hold_id, 30, "req-a"), uow)
    second = await handlers.capture_part(commands.CapturePart(hold_id, 20, "req-b"), uow)
    again = await handlers.capture_part(commands.CapturePart(hold_id, 30, "req-a"), uow)
    assert first.entry is not None and second.entry is not None and again.entry is not None
    assert first.entry.entry_id == part_entry_id(hold.hold_id, "req-a")
    assert first.entry.entry_id == part_entry_id(hold_id, "req-a")  # the wire's form
    assert second.entry.entry_id == part_entry_id(hold.hold_id, "req-b")
    assert again.entry.entry_id == first.entry.entry_id
    assert [e.entry_id for e in uow.committed.entries if e.hold_id == hold.hold_id] == [
        first.entry.entry_id,
        second.entry.entry_id,
    ]


async def test_a_refused_settle_commits_nothing(uow: FakeUnitOfWork) -> None:
    hold = await handlers.place_hold(commands.PlaceHold("acct-1", Bucket.CREDIT, 100, "r"), uow)
    commits = uow.commits
    with pytest.raises(DomainError):
        await handlers.settle_hold(commands.SettleHold(str(hold.hold_id), 101), uow)
    uow.clock = NOW + timedelta(seconds=301)
    with pytest.raises(DomainError) as caught:
        await handlers.settle_hold(commands.SettleHold(str(hold.hold_id), 50), uow)
    assert caught.value.reason is Reason.HOLD_EXPIRED
    assert uow.commits == commits
    assert uow.committed.holds_[hold.hold_id].status is HoldStatus.OPEN


async def test_settle_replays_its_first_result(uow: FakeUnitOfWork) -> None:
    hold = await handlers.place_hold(commands.PlaceHold("acct-1", Bucket.CREDIT, 100, "r"), uow)
    first = await handlers.settle_hold(commands.SettleHold(str(hold.hold_id), 60), uow)
    again = await handlers.settle_hold(commands.SettleHold(str(hold.hold_id), 60), uow)
    assert first.entry is not None and again.entry is not None
    assert again.entry.entry_id == first.entry.entry_id
    assert len([e for e in uow.committed.entries if e.kind is EntryKind.REQUEST_CHARGE]) == 1


async def test_expire_holds_ends_only_holds_past_their_ttl(uow: FakeUnitOfWork) -> None:
    short = await handlers.place_hold(
        commands.PlaceHold("acct-1", Bucket.CREDIT, 100, "r1", ttl_seconds=10), uow
    )
    await handlers.place_hold(
        commands.PlaceHold("acct-1", Bucket.CREDIT, 200, "r2", ttl_seconds=60), uow
    )
    uow.clock = NOW + timedelta(seconds=30)
    assert await handlers.expire_holds(commands.ExpireHolds(), uow) == 1
    assert await handlers.expire_holds(commands.ExpireHolds(), uow) == 0
    assert uow.committed.holds_[short.hold_id].status is HoldStatus.EXPIRED
    assert uow.committed.balances_[("acct-1", Bucket.CREDIT)].held == 200


async def test_credit_is_once_per_order_and_records_the_event(uow: FakeUnitOfWork) -> None:
    cmd = commands.CreditTopUp("acct-1", Bucket.ROUTED, 500, "order-1", event_id="e-1")
    first = await handlers.credit_topup(cmd, uow)
    again = await handlers.credit_topup(
        commands.CreditTopUp("acct-1", Bucket.ROUTED, 500, "order-1", event_id="e-2"), uow
    )
    assert again.entry_id == first.entry_id
    assert uow.committed.events == {"e-1": first.entry_id, "e-2": first.entry_id}
    with pytest.raises(DomainError) as caught:
        await handlers.credit_topup(
            commands.CreditTopUp("acct-2", Bucket.ROUTED, 500, "order-1"), uow
        )
    assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert uow.committed.balances_[("acct-1", Bucket.ROUTED)].posted == 500


async def test_credit_opens_the_wallet_of_a_new_account(uow: FakeUnitOfWork) -> None:
    entry = await handlers.credit_topup(
        commands.CreditTopUp("acct-new", Bucket.CREDIT, 42, "order-new"), uow
    )
    assert entry.balance_after == 42
    assert "acct-new" in uow.committed.accounts


async def test_adjust_replays_by_key_and_conflicts_on_other_args(uow: FakeUnitOfWork) -> None:
    cmd = commands.AdjustBalance("acct-1", Bucket.CREDIT, -5, "refund", "ops", "k-1")
    first = await handlers.adjust_balance(cmd, uow)
    assert (await handlers.adjust_balance(cmd, uow)).entry_id == first.entry_id
    with pytest.raises(DomainError) as caught:
        await handlers.adjust_balance(
            commands.AdjustBalance("acct-1", Bucket.CREDIT, -5, "other", "ops", "k-1"), uow
        )
    assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert uow.committed.balances_[("acct-1", Bucket.CREDIT)].posted == 999_995


async def test_ledger_pages_carry_an_opaque_cursor(uow: FakeUnitOfWork) -> None:
    page = await handlers.list_ledger(commands.ListLedger("acct-1", page_size=600), uow)
    assert len(page.entries) == 1 and page.next_page_token == ""
    with pytest.raises(DomainError) as caught:
        await handlers.list_ledger(commands.ListLedger("ghost"), uow)
    assert caught.value.reason is Reason.ACCOUNT_NOT_FOUND
    with pytest.raises(DomainError) as caught:
        await handlers.list_ledger(commands.ListLedger("acct-1", page_token="!!"), uow)
    assert caught.value.reason is Reason.INVALID_ARGUMENT


@dataclass
class FakeMsg:
    data: bytes
    subject: str = "tokenforge.payments.v1.topup.succeeded"
    headers: dict[str, str] | None = None
    outcome: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.outcome.append("ack")

    async def term(self) -> None:
        self.outcome.append("term")

    async def nak(self, delay: float | None = None) -> None:
        self.outcome.append("nak")


class Orders:
    """Payments' orders as the consumer reads them (an in-memory OrderReader)."""

    def __init__(self, *orders: payments_pb2.TopUp, down: bool = False) -> None:
        self.orders = {o.order_id: o for o in orders}
        self.down = down

    async def get_top_up(
        self, account_id: str, order_id: str, *, request_id: str = ""
    ) -> payments_pb2.TopUp:
        if self.down:
            raise DomainError(Reason.SERVICE_UNAVAILABLE, "payments is not answering")
        order = self.orders.get(order_id)
        if order is None or order.account_id != account_id:
            raise DomainError(Reason.NOT_FOUND, f"No top-up {order_id!r} on this account.")
        return order


PAID = payments_pb2.TopUp(
    order_id="order-9",
    account_id="acct-1",
    bucket=common_pb2.BUCKET_CREDIT,
    received_micros=7,
    status=payments_pb2.TOP_UP_STATUS_SUCCEEDED,
)


def event(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "event_id": "evt-1",
        "order_id": "order-9",
        "account_id": "acct-1",
        "bucket": common_pb2.BUCKET_CREDIT,
        "received_micros": 7,
        "status": payments_pb2.TOP_UP_STATUS_SUCCEEDED,
        **overrides,
    }
    return payments_pb2.TopUpEvent(**fields).SerializeToString()


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",
        event(bucket=common_pb2.BUCKET_UNSPECIFIED),
        event(received_micros=0),
        event(order_id=""),
        event(status=payments_pb2.TOP_UP_STATUS_FAILED),
    ],
)
async def test_a_message_that_can_never_credit_is_terminated(
    uow: FakeUnitOfWork, data: bytes
) -> None:
    msg = FakeMsg(data)
    await TopUpConsumer(None, lambda: uow, Orders(PAID)).handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["term"]
    assert len(uow.committed.entries) == 1


async def test_a_message_is_acked_after_its_credit_and_a_conflict_is_terminated(
    uow: FakeUnitOfWork,
) -> None:
    consumer = TopUpConsumer(None, lambda: uow, Orders(PAID))  # type: ignore[arg-type]
    first, again, conflicting = (
        FakeMsg(event()),
        FakeMsg(event()),
        FakeMsg(event(received_micros=8)),
    )
    for msg in (first, again, conflicting):
        await consumer.handle(msg)  # type: ignore[arg-type]
    assert (first.outcome, again.outcome, conflicting.outcome) == (["ack"], ["ack"], ["term"])
    assert uow.committed.balances_[("acct-1", Bucket.CREDIT)].posted == 1_000_007


@pytest.mark.parametrize(
    "data",
    [
        event(order_id="order-404", received_micros=777_000_000),
        event(received_micros=777_000_000),
        event(bucket=common_pb2.BUCKET_ROUTED),
        event(account_id="acct-2"),
    ],
)
async def test_an_event_payments_does_not_confirm_is_terminated_and_credits_nothing(
    uow: FakeUnitOfWork, data: bytes
) -> None:
    msg = FakeMsg(data)
    await TopUpConsumer(None, lambda: uow, Orders(PAID)).handle(msg)  # type: ignore[arg-type]

    assert msg.outcome == ["term"]
    assert len(uow.committed.entries) == 1  # the fixture's opening entry only


async def test_an_unpaid_order_confirms_no_credit(uow: FakeUnitOfWork) -> None:
    pending = payments_pb2.TopUp()
    pending.CopyFrom(PAID)
    pending.status = payments_pb2.TOP_UP_STATUS_PENDING
    msg = FakeMsg(event())
    await TopUpConsumer(None, lambda: uow, Orders(pending)).handle(msg)  # type: ignore[arg-type]

    assert msg.outcome == ["term"]
    assert len(uow.committed.entries) == 1


async def test_while_payments_cannot_answer_an_event_is_nacked_not_credited_not_dropped(
    uow: FakeUnitOfWork,
) -> None:
    msg = FakeMsg(event())
    down = Orders(PAID, down=True)
    await TopUpConsumer(None, lambda: uow, down).handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["nak"]
    assert len(uow.committed.entries) == 1

    down.down = False
    await TopUpConsumer(None, lambda: uow, down).handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["nak", "ack"]
    assert uow.committed.balances_[("acct-1", Bucket.CREDIT)].posted == 1_000_007
