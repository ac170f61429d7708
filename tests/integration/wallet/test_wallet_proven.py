"""The "proven" list of the wallet issue, on the real PostgreSQL through gRPC: no
overdraft under any concurrency (W2), a hold ends once (W3), one effect per key (W4).
The wallet's pool holds 32 connections (64 with overflow), so these races really run
in parallel in the database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from services.wallet import app
from tests.integration.wallet.conftest import Wallet, assert_one_of_settle_or_release_won
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2

CREDIT = common_pb2.BUCKET_CREDIT


def hold_request(account: str, amount: int, request_id: str = "") -> Any:
    return wallet_pb2.HoldRequest(
        account_id=account,
        bucket=CREDIT,
        amount_micros=amount,
        request_id=request_id or f"req-{uuid.uuid4()}",
    )


async def try_hold(wallet: Wallet, account: str, amount: int) -> bool:
    try:
        await wallet.call("Hold", hold_request(account, amount))
    except DomainError as error:
        assert error.reason is Reason.INSUFFICIENT_BALANCE
        return False
    return True


def test_the_wallet_pool_has_at_least_32_connections() -> None:
    assert app.DB_POOL_SIZE >= 32


async def test_balance_100_and_200_concurrent_holds_of_1_exactly_100_succeed(
    wallet: Wallet,
) -> None:
    account = await wallet.open_funded(credit=100)
    results = await asyncio.gather(*(try_hold(wallet, account, 1) for _ in range(200)))
    after = await wallet.balance(account)
    assert sum(results) == 100
    assert (after.posted_micros, after.held_micros, after.available_micros) == (100, 100, 0)


async def test_two_concurrent_holds_of_150_on_200_one_wins_500_times(wallet: Wallet) -> None:
    rounds, batch = 500, 50

    async def one_round() -> tuple[int, int]:
        account = await wallet.open_funded(credit=200)
        won = await asyncio.gather(try_hold(wallet, account, 150), try_hold(wallet, account, 150))
        after = await wallet.balance(account)
        return sum(won), after.available_micros

    outcomes: list[tuple[int, int]] = []
    for _ in range(rounds // batch):
        outcomes += await asyncio.gather(*(one_round() for _ in range(batch)))
    assert len(outcomes) == rounds
    assert set(outcomes) == {(1, 50)}


async def test_50_settles_and_50_releases_of_one_hold_change_the_ledger_once(
    wallet: Wallet,
) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = (await wallet.call("Hold", hold_request(account, 100, "req-race"))).hold

    async def attempt(method: str, request: Any) -> str:
        try:
            response = await wallet.call(method, request)
        except DomainError as error:
            assert error.reason is Reason.HOLD_NOT_OPEN
            return "refused"
        return f"{method}:{wallet_pb2.HoldStatus.Name(response.hold.status)}"

    settle = wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=60)
    release = wallet_pb2.ReleaseRequest(hold_id=hold.hold_id)
    calls = [attempt("Settle", settle) for _ in range(50)]
    calls += [attempt("Release", release) for _ in range(50)]
    outcomes = await asyncio.gather(*calls)

    ledger = await wallet.call(
        "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, request_id="req-race")
    )
    after = await wallet.balance(account)
    assert_one_of_settle_or_release_won(outcomes, ledger.entries, after)


async def test_partial_settle_37_of_100_releases_63(wallet: Wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = (await wallet.call("Hold", hold_request(account, 100))).hold
    settled = await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=37)
    )
    after = await wallet.balance(account)
    assert settled.hold.captured_micros == 37
    assert settled.entry.amount_micros == -37
    assert (after.posted_micros, after.held_micros, after.available_micros) == (963, 0, 963)


async def test_settle_101_of_100_is_refused_with_no_change(wallet: Wallet) -> None:
    account = await wallet.open_funded(credit=1_000)
    hold = (await wallet.call("Hold", hold_request(account, 100))).hold
    with pytest.raises(DomainError) as caught:
        await wallet.call(
            "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=101)
        )
    assert caught.value.reason is Reason.SETTLE_ABOVE_HOLD
    after = await wallet.balance(account)
    ledger = await wallet.call("ListLedger", wallet_pb2.ListLedgerRequest(account_id=account))
    assert (after.posted_micros, after.held_micros) == (1_000, 100)
    assert [e.kind for e in ledger.entries] == [wallet_pb2.ENTRY_KIND_TOPUP_CREDIT]
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))


async def test_one_idempotency_key_sent_20_times_at_once_has_one_effect(
    wallet: Wallet, operator: Wallet
) -> None:
    account = await wallet.open_funded(credit=1_000)
    holds = await asyncio.gather(
        *(wallet.call("Hold", hold_request(account, 300, "req-twenty")) for _ in range(20))
    )
    assert len({h.SerializeToString(deterministic=True) for h in holds}) == 1
    assert (await wallet.balance(account)).held_micros == 300

    key = f"adj-{uuid.uuid4()}"
    adjust = wallet_pb2.AdjustRequest(
        account_id=account,
        bucket=CREDIT,
        amount_micros=-50,
        reason="refund fee",
        idempotency_key=key,
    )
    entries = await asyncio.gather(*(operator.call("Adjust", adjust) for _ in range(20)))
    assert len({e.SerializeToString(deterministic=True) for e in entries}) == 1
    after = await wallet.balance(account)
    assert (after.posted_micros, after.held_micros) == (950, 300)
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=holds[0].hold.hold_id))
