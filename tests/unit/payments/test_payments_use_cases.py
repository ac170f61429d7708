"""Use cases against an in-memory repository: idempotency, ownership, replays, paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.payments import handlers
from services.payments.domain import commands
from services.payments.domain.model import TopUpStatus
from services.payments.domain.providers import ProvidersOn
from tests.unit.payments.fakes import FakeUnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SANDBOX_ON = ProvidersOn.configured(sandbox=True, card=False)


@pytest.fixture
def uow() -> FakeUnitOfWork:
    return FakeUnitOfWork()


def create(account: str = "acct-1", key: str = "k1", amount: int = 500) -> commands.CreateTopUp:
    return commands.CreateTopUp(
        account_id=account,
        bucket=Bucket.CREDIT,
        provider="sandbox",
        paid_amount_minor=amount,
        currency="USD",
        idempotency_key=key,
    )


async def test_same_key_and_arguments_return_the_first_order(uow: FakeUnitOfWork) -> None:
    first = await handlers.create_top_up(create(), uow, providers=SANDBOX_ON, now=NOW)
    again = await handlers.create_top_up(
        create(), uow, providers=SANDBOX_ON, now=NOW + timedelta(seconds=5)
    )

    assert again.order_id == first.order_id
    assert again.expires_at == first.expires_at
    assert len(uow.orders.rows) == 1 and uow.commits == 1


async def test_same_key_with_other_arguments_is_an_idempotency_conflict(
    uow: FakeUnitOfWork,
) -> None:
    first = await handlers.create_top_up(create(amount=500), uow, providers=SANDBOX_ON, now=NOW)

    with pytest.raises(DomainError) as caught:
        await handlers.create_top_up(create(amount=900), uow, providers=SANDBOX_ON, now=NOW)

    assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert first.order_id in caught.value.message
    assert len(uow.orders.rows) == 1


async def test_same_key_on_another_account_opens_another_order(uow: FakeUnitOfWork) -> None:
    a = await handlers.create_top_up(create(account="a"), uow, providers=SANDBOX_ON, now=NOW)
    b = await handlers.create_top_up(create(account="b"), uow, providers=SANDBOX_ON, now=NOW)

    assert a.order_id != b.order_id


async def test_another_accounts_order_is_not_found_for_reads_and_outcomes(
    uow: FakeUnitOfWork,
) -> None:
    order = await handlers.create_top_up(
        create(account="owner"), uow, providers=SANDBOX_ON, now=NOW
    )

    with pytest.raises(DomainError) as read:
        await handlers.get_top_up(commands.GetTopUp("intruder", order.order_id), uow)
    with pytest.raises(DomainError) as pay:
        await handlers.simulate_sandbox_outcome(
            commands.SimulateSandboxOutcome(
                "intruder", order.order_id, commands.SandboxOutcome.PAY
            ),
            uow,
            providers=SANDBOX_ON,
            now=NOW,
        )

    assert read.value.reason is Reason.NOT_FOUND and pay.value.reason is Reason.NOT_FOUND
    assert uow.orders.rows[order.order_id].status is TopUpStatus.PENDING
    assert uow.orders.outbox == []


async def test_replayed_pay_returns_the_order_unchanged_and_writes_no_second_event(
    uow: FakeUnitOfWork,
) -> None:
    order = await handlers.create_top_up(create(), uow, providers=SANDBOX_ON, now=NOW)
    pay = commands.SimulateSandboxOutcome("acct-1", order.order_id, commands.SandboxOutcome.PAY)

    first = await handlers.simulate_sandbox_outcome(pay, uow, providers=SANDBOX_ON, now=NOW)
    second = await handlers.simulate_sandbox_outcome(
        pay, uow, providers=SANDBOX_ON, now=NOW + timedelta(seconds=1)
    )

    assert first.status is second.status is TopUpStatus.SUCCEEDED
    assert second.version == first.version
    assert [e.status for e in uow.orders.outbox] == [TopUpStatus.SUCCEEDED]


async def test_sweeper_expires_only_pending_orders_past_their_time(uow: FakeUnitOfWork) -> None:
    due = await handlers.create_top_up(
        create(key="due"), uow, providers=SANDBOX_ON, now=NOW - timedelta(hours=1)
    )
    fresh = await handlers.create_top_up(create(key="fresh"), uow, providers=SANDBOX_ON, now=NOW)
    paid = await handlers.create_top_up(
        create(key="paid"), uow, providers=SANDBOX_ON, now=NOW - timedelta(hours=1)
    )
    paid.confirm_payment(at=NOW - timedelta(hours=1), actor="t")
    await uow.orders.save(paid)

    expired = await handlers.expire_due_orders(uow, now=NOW)

    assert expired == [due.order_id]
    assert uow.orders.rows[due.order_id].status is TopUpStatus.EXPIRED
    assert uow.orders.rows[fresh.order_id].status is TopUpStatus.PENDING
    assert uow.orders.rows[paid.order_id].status is TopUpStatus.SUCCEEDED


async def test_list_pages_newest_first_until_the_token_is_empty(uow: FakeUnitOfWork) -> None:
    made = [
        await handlers.create_top_up(
            create(key=f"k{i}"), uow, providers=SANDBOX_ON, now=NOW + timedelta(minutes=i)
        )
        for i in range(5)
    ]

    seen: list[str] = []
    token = ""
    for _ in range(5):
        page = await handlers.list_top_ups(commands.ListTopUps("acct-1", 2, token), uow)
        seen += [o.order_id for o in page.orders]
        token = page.next_page_token
        if not token:
            break

    assert seen == [o.order_id for o in reversed(made)]


async def test_a_page_token_not_given_out_is_refused(uow: FakeUnitOfWork) -> None:
    with pytest.raises(DomainError) as caught:
        await handlers.list_top_ups(commands.ListTopUps("acct-1", 2, "garbage!"), uow)

    assert caught.value.reason is Reason.INVALID_ARGUMENT
