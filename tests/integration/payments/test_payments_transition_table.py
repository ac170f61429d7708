"""Every order status x every event, through the SQL repository on the real PostgreSQL:
allowed moves happen (with one trail line and one outbox event each), replays change
nothing, and every other move is refused and changes nothing (P1)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payments.domain.model import Order, TopUpStatus
from services.payments.domain.orders import open_order
from services.payments.storage.tables import outbox
from services.payments.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

S = TopUpStatus
T0 = datetime.now(UTC).replace(microsecond=0)
AT = T0 + timedelta(minutes=1)

EVENTS: dict[str, Callable[[Order], bool]] = {
    "pay": lambda o: o.confirm_payment(at=AT, actor="t"),
    "pay_needing_review": lambda o: o.confirm_payment(at=AT, actor="t", needs_review=True),
    "fail": lambda o: o.fail(at=AT, actor="t"),
    "expire": lambda o: o.expire(at=AT, actor="t"),
    "cancel": lambda o: o.cancel(at=AT, actor="t"),
    "submit_proof": lambda o: o.submit_transfer_proof("REF-2", at=AT, actor="t"),
    "approve": lambda o: o.approve(reason="seen on statement", operator="op", at=AT),
    "reject": lambda o: o.reject(reason="no such transfer", operator="op", at=AT),
}

# How each starting status is reached from a new pending order.
SETUP: dict[TopUpStatus, Callable[[Order], object]] = {
    S.PENDING: lambda o: None,
    S.AWAITING_REVIEW: lambda o: o.submit_transfer_proof("REF-1", at=T0, actor="t"),
    S.SUCCEEDED: lambda o: o.confirm_payment(at=T0, actor="t"),
    S.FAILED: lambda o: o.fail(at=T0, actor="t"),
    S.EXPIRED: lambda o: o.expire(at=T0, actor="t"),
    S.REJECTED: lambda o: (
        o.submit_transfer_proof("REF-1", at=T0, actor="t"),
        o.reject(reason="r", operator="op", at=T0),
    ),
    S.CANCELED: lambda o: o.cancel(at=T0, actor="t"),
}

SAME = "unchanged"  # a replay: no move, no event
NO = "refused"
# status -> event -> resulting status, SAME or NO.
EXPECTED: dict[TopUpStatus, dict[str, TopUpStatus | str]] = {
    S.PENDING: {
        "pay": S.SUCCEEDED,
        "pay_needing_review": S.AWAITING_REVIEW,
        "fail": S.FAILED,
        "expire": S.EXPIRED,
        "cancel": S.CANCELED,
        "submit_proof": S.AWAITING_REVIEW,
        "approve": NO,
        "reject": NO,
    },
    S.AWAITING_REVIEW: {
        "pay": SAME,
        "pay_needing_review": SAME,
        "fail": NO,
        "expire": NO,
        "cancel": NO,
        "submit_proof": NO,  # another reference while one is being reviewed
        "approve": S.SUCCEEDED,
        "reject": S.REJECTED,
    },
    S.SUCCEEDED: {
        "pay": SAME,
        "pay_needing_review": SAME,
        "fail": NO,
        "expire": NO,
        "cancel": NO,
        "submit_proof": NO,
        "approve": SAME,
        "reject": NO,
    },
    S.FAILED: {
        "pay": NO,
        "pay_needing_review": NO,
        "fail": SAME,
        "expire": NO,
        "cancel": NO,
        "submit_proof": NO,
        "approve": NO,
        "reject": NO,
    },
    S.EXPIRED: {
        "pay": S.AWAITING_REVIEW,  # a late payment: never lost, never auto-credited
        "pay_needing_review": S.AWAITING_REVIEW,
        "fail": NO,
        "expire": SAME,
        "cancel": NO,
        "submit_proof": S.AWAITING_REVIEW,
        "approve": NO,
        "reject": NO,
    },
    S.REJECTED: {
        "pay": NO,
        "pay_needing_review": NO,
        "fail": NO,
        "expire": NO,
        "cancel": NO,
        "submit_proof": NO,
        "approve": NO,
        "reject": SAME,
    },
    S.CANCELED: {
        "pay": NO,
        "pay_needing_review": NO,
        "fail": NO,
        "expire": NO,
        "cancel": SAME,
        "submit_proof": NO,
        "approve": NO,
        "reject": NO,
    },
}

CASES = [(status, event) for status in TopUpStatus for event in EVENTS]


def test_the_table_covers_every_status_and_every_event() -> None:
    assert set(EXPECTED) == set(TopUpStatus)
    assert all(set(row) == set(EVENTS) for row in EXPECTED.values())


async def _in_transaction(
    uow: UnitOfWork, order_id: str, change: Callable[[Order], object]
) -> None:
    async with uow:
        order = await uow.orders.get(order_id, for_update=True)
        assert order is not None
        change(order)
        await uow.orders.save(order)
        await uow.commit()


async def _outbox_rows(engine: AsyncEngine, order_id: str) -> int:
    async with engine.connect() as conn:
        count = await conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.order_id == order_id)
        )
        return int(count.scalar_one())


@pytest.mark.parametrize(("status", "event"), CASES, ids=[f"{s.value}-{e}" for s, e in CASES])
async def test_each_event_in_each_status_moves_replays_or_is_refused(
    status: TopUpStatus,
    event: str,
    payments_uow: Callable[[], UnitOfWork],
    payments_db: AsyncEngine,
) -> None:
    order = open_order(
        account_id=f"acct-{uuid.uuid4()}",
        bucket=Bucket.CREDIT,
        provider="manual_transfer",
        paid_amount_minor=1000,
        currency="EUR",
        idempotency_key=None,
        now=T0 - timedelta(seconds=1),
    )
    async with payments_uow() as uow:
        await uow.orders.add(order)
        await uow.commit()
    await _in_transaction(payments_uow(), order.order_id, SETUP[status])
    events_before = await _outbox_rows(payments_db, order.order_id)
    expected = EXPECTED[status][event]

    if expected == NO:
        with pytest.raises(DomainError) as refused:
            await _in_transaction(payments_uow(), order.order_id, EVENTS[event])
        assert refused.value.reason is Reason.INVALID_TRANSITION
    else:
        await _in_transaction(payments_uow(), order.order_id, EVENTS[event])

    async with payments_uow() as uow:
        stored = await uow.orders.get(order.order_id)
    assert stored is not None
    moved = expected not in (NO, SAME)
    assert stored.status is (expected if moved else status)
    assert await _outbox_rows(payments_db, order.order_id) == events_before + (1 if moved else 0)
    if moved:
        assert stored.transitions[-1].from_status is status
        assert stored.transitions[-1].to_status is expected
