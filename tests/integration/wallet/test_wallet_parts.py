"""CapturePart on the real PostgreSQL through gRPC: a run's requests each take a part
of the run's hold into a ledger row of their own; the hold stays open, the parts never
add up to more than the hold (under any concurrency), one part per (hold, request)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.wallet import app
from tests.integration.wallet.conftest import Wallet
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.holds import part_entry_id, settle_entry_id

CREDIT = common_pb2.BUCKET_CREDIT


async def open_hold(wallet: Wallet, credit: int, amount: int, ttl: int = 0) -> tuple[str, Any]:
    account = await wallet.open_funded(credit=credit)
    hold = (
        await wallet.call(
            "Hold",
            wallet_pb2.HoldRequest(
                account_id=account,
                bucket=CREDIT,
                amount_micros=amount,
                ttl_seconds=ttl,
                request_id=f"run_{uuid.uuid4().hex}",
            ),
        )
    ).hold
    return account, hold


def part(hold: Any, amount: int, request_id: str, account: str = "") -> Any:
    return wallet_pb2.CapturePartRequest(
        hold_id=hold.hold_id,
        amount_micros=amount,
        request_id=request_id,
        trace_id="trace-part",
        account_id=account,
    )


async def charges(wallet: Wallet, account: str) -> list[Any]:
    page = await wallet.call(
        "ListLedger",
        wallet_pb2.ListLedgerRequest(
            account_id=account, kind=wallet_pb2.ENTRY_KIND_REQUEST_CHARGE, page_size=500
        ),
    )
    return list(page.entries)


async def refused(wallet: Wallet, method: str, request: Any) -> Reason:
    with pytest.raises(DomainError) as caught:
        await wallet.call(method, request)
    return caught.value.reason


async def test_each_part_is_a_ledger_row_with_its_request_id_and_the_hold_stays_open(
    wallet: Wallet,
) -> None:
    account, hold = await open_hold(wallet, 1_000, 400)
    first = await wallet.call("CapturePart", part(hold, 150, "req-a", account))
    second = await wallet.call("CapturePart", part(hold, 50, "req-b"))
    after = await wallet.balance(account)
    rows = await charges(wallet, account)

    assert first.hold.status == second.hold.status == wallet_pb2.HOLD_STATUS_OPEN
    assert (first.hold.captured_micros, second.hold.captured_micros) == (150, 200)
    assert (first.entry.amount_micros, first.entry.balance_after_micros) == (-150, 850)
    assert (second.entry.amount_micros, second.entry.balance_after_micros) == (-50, 800)
    assert first.entry.request_id == "req-a" and first.entry.hold_id == hold.hold_id
    assert first.entry.trace_id == "trace-part"
    assert first.entry.kind == wallet_pb2.ENTRY_KIND_REQUEST_CHARGE
    assert [(e.request_id, e.amount_micros) for e in rows] == [("req-b", -50), ("req-a", -150)]
    assert (after.posted_micros, after.held_micros, after.available_micros) == (800, 200, 600)

    # Ending the hold gives back what is still held; the parts stay charged.
    closed = await wallet.call("Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id))
    ended = await wallet.balance(account)
    assert closed.hold.status == wallet_pb2.HOLD_STATUS_SETTLED
    assert closed.hold.captured_micros == 200 and not closed.HasField("entry")
    assert (ended.posted_micros, ended.held_micros) == (800, 0)
    assert len(await charges(wallet, account)) == 2


async def test_the_same_part_again_answers_the_first_and_another_amount_conflicts(
    wallet: Wallet,
) -> None:
    account, hold = await open_hold(wallet, 1_000, 400)
    first = await wallet.call("CapturePart", part(hold, 70, "req-a"))
    again = await wallet.call("CapturePart", part(hold, 70, "req-a"))
    reason = await refused(wallet, "CapturePart", part(hold, 71, "req-a"))
    after = await wallet.balance(account)
    assert again.entry.entry_id == first.entry.entry_id
    assert again.hold.captured_micros == 70
    assert reason is Reason.IDEMPOTENCY_CONFLICT
    assert (after.posted_micros, after.held_micros) == (930, 330)
    # After the hold ended, the replay still answers the first part.
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))
    late = await wallet.call("CapturePart", part(hold, 70, "req-a"))
    assert late.entry.entry_id == first.entry.entry_id
    assert late.hold.status == wallet_pb2.HOLD_STATUS_RELEASED


async def test_a_parts_entry_id_is_part_entry_id_of_its_hold_and_request_and_replays_answer_it(
    wallet: Wallet,
) -> None:
    account, hold = await open_hold(wallet, 1_000, 400)
    request_id = f"req-{uuid.uuid4()}"
    # Named before the part is captured, as the gateway does.
    named = str(part_entry_id(hold.hold_id, request_id))
    first = await wallet.call("CapturePart", part(hold, 70, request_id, account))
    again = await wallet.call("CapturePart", part(hold, 70, request_id))
    other = await wallet.call("CapturePart", part(hold, 30, "req-other"))
    listed = await wallet.call(
        "ListLedger", wallet_pb2.ListLedgerRequest(account_id=account, request_id=request_id)
    )
    assert first.entry.entry_id == again.entry.entry_id == named
    assert other.entry.entry_id == str(part_entry_id(hold.hold_id, "req-other"))
    assert [e.entry_id for e in listed.entries] == [named]
    # After the hold ended, a replay still answers the row the caller named.
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))
    late = await wallet.call("CapturePart", part(hold, 70, request_id))
    assert late.entry.entry_id == named


async def test_a_settles_entry_id_is_settle_entry_id_of_its_hold_and_a_replay_answers_it(
    wallet: Wallet,
) -> None:
    account, hold = await open_hold(wallet, 1_000, 400)
    named = str(settle_entry_id(hold.hold_id))  # named before the settle, as the gateway does
    settle = wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=150)
    first = await wallet.call("Settle", settle)
    again = await wallet.call("Settle", settle)
    listed = await wallet.call(
        "ListLedger",
        wallet_pb2.ListLedgerRequest(account_id=account, kind=wallet_pb2.ENTRY_KIND_REQUEST_CHARGE),
    )
    assert first.entry.entry_id == again.entry.entry_id == named
    assert [e.entry_id for e in listed.entries] == [named]
    assert first.hold.entry_id == named


async def test_parts_above_what_is_still_held_are_refused_and_change_nothing(
    wallet: Wallet,
) -> None:
    account, hold = await open_hold(wallet, 1_000, 100)
    await wallet.call("CapturePart", part(hold, 60, "req-a"))
    reason = await refused(wallet, "CapturePart", part(hold, 41, "req-b"))
    settle_reason = await refused(
        wallet, "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=41)
    )
    after = await wallet.balance(account)
    assert reason is settle_reason is Reason.SETTLE_ABOVE_HOLD
    assert (after.posted_micros, after.held_micros) == (940, 40)
    assert [e.request_id for e in await charges(wallet, account)] == ["req-a"]
    # The last 40 can still be settled.
    settled = await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=40)
    )
    assert settled.hold.captured_micros == 100 and settled.entry.amount_micros == -40
    replay = await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=40)
    )
    assert replay.entry.entry_id == settled.entry.entry_id
    assert (await wallet.balance(account)).posted_micros == 900


async def test_a_zero_part_writes_no_row_and_parts_need_an_open_hold_of_the_account(
    wallet: Wallet,
) -> None:
    account, hold = await open_hold(wallet, 1_000, 100)
    zero = await wallet.call("CapturePart", part(hold, 0, "req-zero"))
    other = await refused(wallet, "CapturePart", part(hold, 10, "req-x", "acct-someone-else"))
    no_request = await refused(wallet, "CapturePart", part(hold, 10, ""))
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))
    ended = await refused(wallet, "CapturePart", part(hold, 10, "req-late"))
    ended_zero = await refused(wallet, "CapturePart", part(hold, 0, "req-late-zero"))
    assert zero.hold.captured_micros == 0 and not zero.HasField("entry")
    assert other is Reason.NOT_FOUND
    assert no_request is Reason.INVALID_ARGUMENT
    assert ended is ended_zero is Reason.HOLD_NOT_OPEN
    assert await charges(wallet, account) == []
    assert (await wallet.balance(account)).posted_micros == 1_000


async def test_a_part_on_an_expired_hold_is_refused_and_expiry_keeps_the_parts(
    wallet: Wallet, uow_at: Any
) -> None:
    account, hold = await open_hold(wallet, 1_000, 300, ttl=1)
    await wallet.call("CapturePart", part(hold, 100, "req-a"))
    await asyncio.sleep(1.1)
    reason = await refused(wallet, "CapturePart", part(hold, 10, "req-b"))
    await app.sweep_expired_holds(uow_at(timedelta()))
    after = await wallet.balance(account)
    holds = await wallet.call("ListHolds", wallet_pb2.ListHoldsRequest(account_id=account))
    assert reason is Reason.HOLD_EXPIRED
    assert [(h.status, h.captured_micros) for h in holds.holds] == [
        (wallet_pb2.HOLD_STATUS_EXPIRED, 100)
    ]
    assert (after.posted_micros, after.held_micros) == (900, 0)


async def test_50_concurrent_parts_on_one_hold_never_exceed_it(wallet: Wallet) -> None:
    account, hold = await open_hold(wallet, 10_000, 1_000)

    async def one(n: int) -> bool:
        try:
            await wallet.call("CapturePart", part(hold, 30, f"req-{n}"))
        except DomainError as error:
            assert error.reason is Reason.SETTLE_ABOVE_HOLD
            return False
        return True

    won = await asyncio.gather(*(one(n) for n in range(50)))
    after = await wallet.balance(account)
    rows = await charges(wallet, account)
    holds = await wallet.call("ListHolds", wallet_pb2.ListHoldsRequest(account_id=account))
    # 1,000 / 30: exactly 33 parts fit, whatever the order.
    assert sum(won) == 33 == len(rows)
    assert holds.holds[0].captured_micros == 990
    assert (after.posted_micros, after.held_micros) == (10_000 - 990, 10)
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))


async def test_one_part_sent_20_times_at_once_has_one_effect(wallet: Wallet) -> None:
    account, hold = await open_hold(wallet, 1_000, 500)
    answers = await asyncio.gather(
        *(wallet.call("CapturePart", part(hold, 25, "req-same")) for _ in range(20))
    )
    after = await wallet.balance(account)
    assert {a.entry.entry_id for a in answers} == {answers[0].entry.entry_id}
    assert len(await charges(wallet, account)) == 1
    assert (after.posted_micros, after.held_micros) == (975, 475)
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))


async def test_reconcile_reports_a_hold_whose_capture_is_not_the_sum_of_its_parts(
    wallet: Wallet, operator: Wallet, engine: AsyncEngine
) -> None:
    account, hold = await open_hold(wallet, 1_000, 400)
    await wallet.call("CapturePart", part(hold, 100, "req-a"))
    forge = "UPDATE wallet.holds SET captured = captured + :d WHERE hold_id = :h"
    async with engine.begin() as conn:
        await conn.execute(text(forge), {"d": 5, "h": hold.hold_id})
    try:
        report = await operator.call("Reconcile", wallet_pb2.ReconcileRequest())
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(forge), {"d": -5, "h": hold.hold_id})
    found = {(v.rule, v.subject): v.detail for v in report.violations}
    assert not report.ok
    assert "captured 105" in found[("W3", hold.hold_id)]
    assert "1 part rows" in found[("W3", hold.hold_id)]
    # held (300) is no longer the open hold's remaining (400 - 105).
    assert "held 300 but open holds sum to 295" in found[("W7", f"{account}/credit")]
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=hold.hold_id))


async def test_a_second_hold_of_one_request_needs_its_own_idempotency_key(
    wallet: Wallet,
) -> None:
    account = await wallet.open_funded(credit=1_000, routed=1_000)
    request_id = f"req-{uuid.uuid4()}"

    def hold(bucket: int, amount: int, key: str = "") -> Any:
        return wallet_pb2.HoldRequest(
            account_id=account,
            bucket=bucket,
            amount_micros=amount,
            request_id=request_id,
            idempotency_key=key,
        )

    first = (await wallet.call("Hold", hold(CREDIT, 100))).hold
    same_key = await refused(wallet, "Hold", hold(common_pb2.BUCKET_ROUTED, 80))
    second = (
        await wallet.call("Hold", hold(common_pb2.BUCKET_ROUTED, 80, f"{request_id}/route-2"))
    ).hold
    replay = (
        await wallet.call("Hold", hold(common_pb2.BUCKET_ROUTED, 80, f"{request_id}/route-2"))
    ).hold
    other_args = await refused(wallet, "Hold", hold(CREDIT, 80, f"{request_id}/route-2"))
    await wallet.call("Release", wallet_pb2.ReleaseRequest(hold_id=first.hold_id))
    settled = await wallet.call(
        "Settle", wallet_pb2.SettleRequest(hold_id=second.hold_id, amount_micros=30)
    )
    assert same_key is other_args is Reason.IDEMPOTENCY_CONFLICT
    assert second.hold_id != first.hold_id and replay.hold_id == second.hold_id
    assert first.request_id == second.request_id == request_id
    assert settled.entry.request_id == request_id
    assert (await wallet.balance(account)).posted_micros == 1_000
    assert (await wallet.balance(account, common_pb2.BUCKET_ROUTED)).posted_micros == 970
