"""Holds, settles and releases through gRPC against the real database (W2, W3, W4)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, timedelta

import pytest

from services.wallet import app, handlers
from services.wallet.domain import commands
from services.wallet.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2

CREDIT = common_pb2.BUCKET_CREDIT
ROUTED = common_pb2.BUCKET_ROUTED


def hold_request(account: str, amount: int, request_id: str = "", **kw: object) -> object:
    return wallet_pb2.HoldRequest(
        account_id=account,
        bucket=kw.pop("bucket", CREDIT),
        amount_micros=amount,
        request_id=request_id or f"req-{uuid.uuid4()}",
        **kw,
    )


async def test_open_account_answers_both_buckets_and_is_idempotent(wallet, operator) -> None:
    account = f"acct-{uuid.uuid4()}"
    first = await wallet.call("OpenAccount", wallet_pb2.OpenAccountRequest(account_id=account))
    again = await operator.call("OpenAccount", wallet_pb2.OpenAccountRequest(account_id=account))
    assert [(b.bucket, b.label, b.symbol, b.posted_micros) for b in first.balances] == [
        (CREDIT, "Credit", "CR", 0),
        (ROUTED, "Routed balance", "RB", 0),
    ]
    assert list(again.balances) == list(first.balances)


async def test_get_balances_of_unknown_account_is_account_not_found(wallet) -> None:
    with pytest.raises(DomainError) as caught:
        await wallet.call("GetBalances", wallet_pb2.GetBalancesRequest(account_id="nobody-x"))
    assert caught.value.reason is Reason.ACCOUNT_NOT_FOUND


async def test_hold_reserves_money_and_keeps_buckets_apart(wallet) -> None:
    account = await wallet.open_funded(credit=5_000_000, routed=1_000_000)
    response = await wallet.call("Hold", hold_request(account, 2_000_000))
    assert response.hold.status == wallet_pb2.HOLD_STATUS_OPEN
    credit = await wallet.balance(account, CREDIT)
    routed = await wallet.balance(account, ROUTED)
    assert (credit.posted_micros, credit.held_micros, credit.available_micros) == (
        5_000_000,
        2_000_000,
        3_000_000,
    )
    assert (routed.posted_micros, routed.held_micros) == (1_000_000, 0)


async def test_hold_above_available_is_insufficient_balance_naming_the_bucket(wallet) -> None:
    account = await wallet.open_funded(routed=120_000)
    with pytest.raises(DomainError) as caught:
        await wallet.call("Hold", hold_request(account, 300_000, bucket=ROUTED))
    error = caught.value
    assert error.reason is Reason.INSUFFICIENT_BALANCE
    assert "Routed balance" in error.message
    assert "0.12 RB" in error.message and "0.3 RB" in error.message
    assert "Top up" in error.message
    assert error.metadata == {
        "bucket": "routed",
        "available_micros": "120000",
        "requested_micros": "300000",
    }


async def test_hold_on_unknown_account_is_account_not_found(wallet) -> None:
    with pytest.raises(DomainError) as caught:
        await wallet.call("Hold", hold_request(f"acct-{uuid.uuid4()}", 1))
    assert caught.value.reason is Reason.ACCOUNT_NOT_FOUND


async def test_hold_ttl_defaults_to_300_seconds_and_stops_at_an_hour(wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    response = await wallet.call("Hold", hold_request(account, 10))
    lifetime = response.hold.expires_at.ToDatetime(tzinfo=UTC).timestamp() - time.time()
    assert 295 < lifetime <= 300
    with pytest.raises(DomainError) as caught:
        await wallet.call("Hold", hold_request(account, 10, ttl_seconds=3601))
    assert caught.value.reason is Reason.INVALID_ARGUMENT


async def test_concurrent_holds_never_overdraw_the_bucket(wallet) -> None:
    balance, amount = 1_000_000, 70_000
    account = await wallet.open_funded(credit=balance)

    async def attempt() -> bool:
        try:
            await wallet.call("Hold", hold_request(account, amount))
        except DomainError as error:
            assert error.reason is Reason.INSUFFICIENT_BALANCE
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    after = await wallet.balance(account)
    assert sum(results) == balance // amount
    assert after.available_micros == balance - (balance // amount) * amount
    assert after.available_micros >= 0


async def test_hold_replay_returns_the_first_hold_and_other_args_conflict(wallet) -> None:
    account = await wallet.open_funded(credit=1_000_000)
    first = await wallet.call("Hold", hold_request(account, 100_000, "req-same"))
    again = await wallet.call("Hold", hold_request(account, 100_000, "req-same"))
    assert again.hold.hold_id == first.hold.hold_id
    assert (await wallet.balance(account)).held_micros == 100_000
    with pytest.raises(DomainError) as caught:
        await wallet.call("Hold", hold_request(account, 200_000, "req-same"))
    assert caught.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert (await wallet.balance(account)).held_micros == 100_000


async def test_settle_charges_the_amount_and_releases_the_rest(wallet) -> None:
    account = await wallet.open_funded(credit=1_000_000)
    hold = (await wallet.call("Hold", hold_request(account, 400_000))).hold
    settled = await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=150_000)
    )
    assert settled.hold.status == wallet_pb2.HOLD_STATUS_SETTLED
    assert settled.hold.captured_micros == 150_000
    assert settled.entry.kind == wallet_pb2.ENTRY_KIND_REQUEST_CHARGE
    assert settled.entry.amount_micros == -150_000
    assert settled.entry.balance_after_micros == 850_000
    assert settled.entry.request_id == hold.request_id
    assert settled.hold.entry_id == settled.entry.entry_id
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros, after.available_micros) == (850_000, 0, 850_000)


async def test_settle_replay_returns_the_first_result_and_another_amount_is_refused(
    wallet,
) -> None:
    account = await wallet.open_funded(credit=1_000_000)
    hold = (await wallet.call("Hold", hold_request(account, 400_000))).hold
    request = wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=100_000)
    first = await wallet.call("Settle", request)
    again = await wallet.call("Settle", request)
    assert again.entry.entry_id == first.entry.entry_id
    with pytest.raises(DomainError) as caught:
        await wallet.call(
            "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=90_000)
        )
    assert caught.value.reason is Reason.HOLD_NOT_OPEN
    assert (await wallet.balance(account)).posted_micros == 900_000


async def test_settle_of_zero_ends_the_hold_without_a_ledger_row(wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = (await wallet.call("Hold", hold_request(account, 500))).hold
    settled = await wallet.call("Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id))
    assert settled.hold.status == wallet_pb2.HOLD_STATUS_SETTLED
    assert not settled.HasField("entry")
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros) == (1_000, 0)


async def test_settle_above_hold_is_refused_and_changes_nothing(wallet) -> None:
    account = await wallet.open_funded(credit=1_000_000)
    hold = (await wallet.call("Hold", hold_request(account, 400_000))).hold
    with pytest.raises(DomainError) as caught:
        await wallet.call(
            "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=400_001)
        )
    assert caught.value.reason is Reason.SETTLE_ABOVE_HOLD
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros) == (1_000_000, 400_000)
    settled = await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=400_000)
    )
    assert settled.hold.status == wallet_pb2.HOLD_STATUS_SETTLED


async def test_settle_after_expiry_is_refused_and_changes_nothing(
    wallet, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account = await wallet.open_funded(credit=1_000_000)
    hold = (await wallet.call("Hold", hold_request(account, 400_000, ttl_seconds=60))).hold
    with pytest.raises(DomainError) as caught:
        await handlers.settle_hold(
            commands.SettleHold(hold.hold_id, 100_000), uow_at(timedelta(seconds=61))
        )
    assert caught.value.reason is Reason.HOLD_EXPIRED
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros) == (1_000_000, 400_000)


async def test_release_gives_the_hold_back_whole_and_is_idempotent(wallet) -> None:
    account = await wallet.open_funded(credit=1_000_000)
    hold = (await wallet.call("Hold", hold_request(account, 400_000))).hold
    request = wallet_pb2.ReleaseRequest(hold_id=hold.hold_id, reason="upstream failed")
    first = await wallet.call("Release", request)
    again = await wallet.call("Release", request)
    assert first.hold.status == again.hold.status == wallet_pb2.HOLD_STATUS_RELEASED
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros) == (1_000_000, 0)
    with pytest.raises(DomainError) as caught:
        await wallet.call("Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=1))
    assert caught.value.reason is Reason.HOLD_NOT_OPEN


async def test_release_of_a_settled_hold_is_hold_not_open(wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = (await wallet.call("Hold", hold_request(account, 500))).hold
    await wallet.call("Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=5))
    with pytest.raises(DomainError) as caught:
        await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))
    assert caught.value.reason is Reason.HOLD_NOT_OPEN
    assert (await wallet.balance(account)).posted_micros == 995


async def test_unknown_hold_is_not_found(wallet) -> None:
    for hold_id in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(DomainError) as caught:
            await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold_id))
        assert caught.value.reason is Reason.NOT_FOUND


async def test_sweeper_expires_holds_past_their_ttl_exactly_once(
    wallet, uow_at: Callable[[timedelta], UnitOfWork]
) -> None:
    account = await wallet.open_funded(credit=1_000_000)
    short = (await wallet.call("Hold", hold_request(account, 300_000, ttl_seconds=30))).hold
    long = (await wallet.call("Hold", hold_request(account, 200_000, ttl_seconds=600))).hold
    later = uow_at(timedelta(seconds=31))
    assert await app.sweep_expired_holds(later) >= 1
    assert await app.sweep_expired_holds(later) == 0
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros) == (1_000_000, 200_000)
    with pytest.raises(DomainError) as caught:
        await wallet.call(
            "Settle", wallet_pb2.SettleRequest(hold_id=short.hold_id, amount_micros=1)
        )
    assert caught.value.reason is Reason.HOLD_EXPIRED
    released = await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=short.hold_id))
    assert released.hold.status == wallet_pb2.HOLD_STATUS_EXPIRED
    assert (await wallet.balance(account)).held_micros == 200_000
    assert long.status == wallet_pb2.HOLD_STATUS_OPEN


async def test_background_sweeper_expires_a_one_second_hold(wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    await wallet.call("Hold", hold_request(account, 400, ttl_seconds=1))
    for _ in range(40):
        if (await wallet.balance(account)).held_micros == 0:
            break
        await asyncio.sleep(0.1)
    assert (await wallet.balance(account)).held_micros == 0
