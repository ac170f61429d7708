"""A reservation ends exactly once. A budget draw or an own hold ends by queueing its
finish (its part of the budget, or its hold's settle or release, under the entry id the
wallet derives); when the queue cannot take it, the wallet's side is done and the
receipt recorded at once, and a draw gives back to its budget either way. A second end
answers the first and touches no money; a caller cancelled mid-finish never cuts the
finish short; a draw never ends its budget's hold."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.gateway.budgets import Budgets
from services.gateway.domain.budgets import Budget, BudgetPolicy
from services.gateway.domain.settlement import Rule, Settlement, Status, Usage
from services.gateway.flow import reservation
from services.gateway.flow.ends import PeerEnds
from services.gateway.flow.reservation import BudgetDraw, OwnHold, RunSlice, State
from tests.unit.gateway.fakes import Queue, RecordingUsage, Wallet, peers_with
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.holds import part_entry_id, settle_entry_id
from tokenforge.money import Bucket, Money

WORST = Money(500, Bucket.CREDIT)


class KeepingQueue(Queue):
    async def put(self, request_id: str, receipt: bytes, **where: Any) -> None:
        await super().put(request_id, receipt)
        self.where = where


class SlowQueue(KeepingQueue):
    """Takes a finish only once `go` is set (a client may leave meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def put(self, request_id: str, receipt: bytes, **where: Any) -> None:
        await self.go.wait()
        await super().put(request_id, receipt, **where)


def ends_with(queue: Any, wallet: Wallet, usage: RecordingUsage) -> PeerEnds:
    peers = peers_with(usage, queue)
    peers.__dict__["wallet_client"] = wallet
    return PeerEnds(peers)


def a_draw(wallet: Wallet) -> tuple[BudgetDraw, Budget]:
    budgets = Budgets(wallet, BudgetPolicy())  # type: ignore[arg-type]
    budget = budgets.book.opened(("acct-1", Bucket.CREDIT), "hold-b", "budget-1", 10_000, 0.0, 600)
    budget.take(WORST.micros, 0.0)
    draw = BudgetDraw(budget, WORST, lambda charge: budgets.give_back(budget, WORST.micros, charge))
    return draw, budget


def a_receipt(hold_id: str, request_id: str = "req-1") -> usage_pb2.Receipt:
    return usage_pb2.Receipt(
        request_id=request_id,
        account_id="acct-1",
        hold_id=hold_id,
        bucket=common_pb2.BUCKET_CREDIT,
        trace_id="trace-1",
    )


def settled(charge: int, rule: Rule = Rule.FINISHED_WITH_USAGE) -> Settlement:
    usage = Usage(10, 20, 0, True) if charge else None
    status = Status.SUCCEEDED if charge else Status.FAILED
    return Settlement(rule, status, usage, Money(charge, Bucket.CREDIT), False)


async def test_a_draw_is_queued_with_its_part_to_capture_and_gives_back() -> None:
    queue, wallet, usage = KeepingQueue(), Wallet(), RecordingUsage()
    draw, budget = a_draw(wallet)
    with TracerProvider().get_tracer(__name__).start_as_current_span("request") as span:
        ended = await draw.finish(
            ends_with(queue, wallet, usage), a_receipt("hold-b"), settled(120)
        )
    receipt = ended.receipt
    assert receipt is not None and ended.charge == Money(120, Bucket.CREDIT)
    assert receipt.entry_id == str(part_entry_id("hold-b", "req-1"))
    assert receipt.charge_micros == 120 and receipt.status == usage_pb2.RECEIPT_STATUS_SUCCEEDED
    traceparent = queue.where.pop("traceparent")  # its delivery joins the request's trace
    assert format(span.get_span_context().span_id, "016x") in traceparent
    assert queue.where == {"account_id": "acct-1", "hold_id": "hold-b", "finish": "part"}
    assert wallet.parts == [] and usage.receipts == []  # the relay does those
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)
    assert draw.state is State.FINISHED


async def test_a_draw_the_queue_cannot_take_is_captured_and_recorded_at_once() -> None:
    wallet, usage = Wallet(), RecordingUsage()
    draw, budget = a_draw(wallet)
    ended = await draw.finish(
        ends_with(Queue(broken=True), wallet, usage), a_receipt("hold-b"), settled(120)
    )
    assert wallet.parts == [("hold-b", 120, "req-1")]
    assert [r.entry_id for r in usage.receipts] == [str(part_entry_id("hold-b", "req-1"))]
    assert ended.charge.micros == 120
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)


async def test_when_neither_can_take_it_the_draw_still_gives_back_and_the_error_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reservation, "FINISH_RETRY_MAX_S", 0.0)  # its retries at once
    monkeypatch.setattr(reservation, "FINISH_RETRY_S", 0.05)  # and given up soon
    down = DomainError(Reason.SERVICE_UNAVAILABLE, "The wallet is not answering right now.")
    wallet = Wallet(down)
    draw, budget = a_draw(wallet)
    ends = ends_with(Queue(broken=True), wallet, RecordingUsage())
    with pytest.raises(DomainError):
        await draw.finish(ends, a_receipt("hold-b"), settled(120))
    # It may have been taken: counted as spent, so the budget never pays it twice.
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)
    with pytest.raises(DomainError):  # a second end answers the first: the same failure
        await draw.finish(ends, a_receipt("hold-b"), settled(0, Rule.CLIENT_DISCONNECT))
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)


class WalletBackAfter(Wallet):
    """Down (as in a PostgreSQL restart) for its first `down_for` calls."""

    def __init__(self, down_for: int) -> None:
        super().__init__()
        self.down_for = down_for

    async def capture_part(self, *args: Any, **kwargs: Any) -> Any:
        if self.down_for > 0:
            self.down_for -= 1
            raise DomainError(Reason.SERVICE_UNAVAILABLE, "The wallet is not answering.")
        return await super().capture_part(*args, **kwargs)


async def test_when_neither_can_take_it_for_a_moment_the_finish_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 21 (make chaos, PostgreSQL restarted): the queue and the wallet both down
    for a moment; the finish is tried again rather than the hold left to its TTL."""
    monkeypatch.setattr(reservation, "FINISH_RETRY_MAX_S", 0.0)
    wallet, usage = WalletBackAfter(down_for=3), RecordingUsage()
    draw, budget = a_draw(wallet)
    ended = await draw.finish(
        ends_with(Queue(broken=True), wallet, usage), a_receipt("hold-b"), settled(120)
    )
    assert ended.charge.micros == 120
    assert wallet.parts == [("hold-b", 120, "req-1")]  # taken once, on the fourth try
    assert [r.request_id for r in usage.receipts] == ["req-1"]
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)


async def test_an_own_hold_queues_a_settle_naming_the_derived_entry() -> None:
    queue, wallet, usage = KeepingQueue(), Wallet(), RecordingUsage()
    hold = OwnHold("hold-own", "acct-1", WORST)
    ended = await hold.finish(ends_with(queue, wallet, usage), a_receipt("hold-own"), settled(120))
    assert ended.receipt is not None
    assert ended.receipt.entry_id == str(settle_entry_id("hold-own")) and ended.charge.micros == 120
    queue.where.pop("traceparent")
    assert queue.where == {"account_id": "acct-1", "hold_id": "hold-own", "finish": "settle"}
    assert wallet.settles == [] and usage.receipts == []  # the relay does those


async def test_an_own_hold_that_charged_nothing_queues_a_release() -> None:
    queue, wallet, usage = KeepingQueue(), Wallet(), RecordingUsage()
    hold = OwnHold("hold-own", "acct-1", WORST)
    failed = settled(0, Rule.ERROR_BEFORE_FIRST_BYTE)
    ended = await hold.finish(ends_with(queue, wallet, usage), a_receipt("hold-own"), failed)
    assert ended.receipt is not None and ended.receipt.entry_id == ""
    assert queue.where["finish"] == "release"


async def test_a_client_that_leaves_mid_finish_cuts_nothing_and_a_second_finish_answers_it() -> (
    None
):
    """The issue's path: the disconnect cancels the caller while its finish is queued,
    then the stream finishes again for the disconnect. One part is queued, under the
    draw's own entry id, and the budget's hold is never settled."""
    queue, wallet, usage = SlowQueue(), Wallet(), RecordingUsage()
    draw, budget = a_draw(wallet)
    ends = ends_with(queue, wallet, usage)
    first = asyncio.create_task(draw.finish(ends, a_receipt("hold-b"), settled(120)))
    await asyncio.sleep(0)
    first.cancel()  # the client went away while its finish is being queued
    with pytest.raises(asyncio.CancelledError):
        await first
    assert draw.state is State.FINISHING
    second = asyncio.create_task(
        draw.finish(ends, a_receipt("hold-b"), settled(7, Rule.CLIENT_DISCONNECT))
    )
    queue.go.set()
    ended = await second
    assert ended.charge.micros == 120  # the first finish's outcome
    assert list(queue.kept) == ["req-1"] and queue.where["finish"] == "part"
    assert wallet.settles == [] and wallet.releases == []  # the budget's hold untouched
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 120)


async def test_a_draw_given_back_returns_its_worst_case_and_a_later_finish_charges_nothing() -> (
    None
):
    wallet = Wallet()
    draw, budget = a_draw(wallet)
    ends = ends_with(KeepingQueue(), wallet, RecordingUsage())
    given = await draw.give_back(ends, "fallback_to_routed")
    assert given.receipt is None and given.charge.micros == 0
    assert (budget.draws, budget.reserved, budget.spent) == (0, 0, 0)
    again = await draw.finish(ends, a_receipt("hold-b"), settled(120))
    assert again == given and (budget.draws, budget.reserved, budget.spent) == (0, 0, 0)
    assert wallet.releases == []  # a draw never releases the budget's hold


async def test_an_own_hold_given_back_is_released_once() -> None:
    wallet = Wallet()
    hold = OwnHold("hold-own", "acct-1", WORST)
    ends = ends_with(KeepingQueue(), wallet, RecordingUsage())
    await asyncio.gather(hold.give_back(ends, "fallback"), hold.give_back(ends, "again"))
    assert wallet.releases == [("hold-own", "fallback")]


class AwayWallet(Wallet):
    """Not answering for its first `away` releases (the wallet went away)."""

    def __init__(self, away: int) -> None:
        super().__init__()
        self.away, self.tried = away, 0

    async def release(self, hold_id: str, *, reason: str = "", **_: str) -> Any:
        self.tried += 1
        if self.tried <= self.away:
            raise DomainError(Reason.SERVICE_UNAVAILABLE, "The wallet is not answering.")
        return await super().release(hold_id, reason=reason)


async def test_an_own_hold_given_back_while_the_wallet_is_away_is_released_once_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reservation, "FINISH_RETRY_MAX_S", 0.05)  # its retries soon
    wallet = AwayWallet(away=3)
    hold = OwnHold("hold-left", "acct-1", WORST)
    ends = ends_with(KeepingQueue(), wallet, RecordingUsage())
    # The request waits only a moment (flow/call.py); the release goes on without it.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hold.give_back(ends, "fallback_to_routed"), 0.01)
    assert hold.state is State.FINISHING
    ended = await hold.wait()
    assert ended is not None and ended.receipt is None and ended.charge.micros == 0
    assert wallet.tried == 4 and wallet.releases == [("hold-left", "fallback_to_routed")]


async def test_an_own_hold_whose_release_is_refused_or_never_answered_ends_by_its_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reservation, "FINISH_RETRY_MAX_S", 0.0)
    monkeypatch.setattr(reservation, "FINISH_RETRY_S", 0.05)  # given up soon
    away = AwayWallet(away=10**9)
    with pytest.raises(DomainError, match="not answering"):
        await OwnHold("hold-a", "acct-1", WORST).give_back(
            ends_with(KeepingQueue(), away, RecordingUsage()), "fallback"
        )
    assert away.tried > 1 and away.releases == []
    refused = Wallet(DomainError(Reason.HOLD_NOT_OPEN, "The hold expired."))
    with pytest.raises(DomainError, match="expired"):  # tried once: nothing to release
        await OwnHold("hold-b", "acct-1", WORST).give_back(
            ends_with(KeepingQueue(), refused, RecordingUsage()), "fallback"
        )


class DoubtWallet(AwayWallet):
    """Names the hold it placed for a Hold in doubt, then is away for `away` releases."""

    async def hold_in_doubt(self, *_: Any, **__: Any) -> wallet_pb2.Hold:
        return wallet_pb2.Hold(hold_id="hold-budget", amount_micros=10_000)


async def test_a_budget_hold_in_doubt_is_released_though_the_wallet_goes_away_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reservation, "FINISH_RETRY_MAX_S", 0.0)
    wallet = DoubtWallet(away=2)
    budgets = Budgets(wallet, BudgetPolicy())  # type: ignore[arg-type]
    budgets._end_in_doubt("acct-1", Bucket.CREDIT, 10_000, "budget-1", 600, "trace-1")
    await asyncio.gather(*budgets._in_doubt)
    assert wallet.tried == 3 and wallet.releases == [("hold-budget", "budget_not_opened")]


async def test_a_slice_captures_its_part_then_records_and_cannot_be_given_back() -> None:
    wallet, usage = Wallet(), RecordingUsage()
    piece = RunSlice("hold-run", "acct-1", "run-1", WORST)
    ends = ends_with(Queue(), wallet, usage)
    ended = await piece.finish(ends, a_receipt("hold-run"), settled(120))
    assert wallet.parts == [("hold-run", 120, "req-1")]
    assert [r.entry_id for r in usage.receipts] == [str(part_entry_id("hold-run", "req-1"))]
    assert ended.charge.micros == 120
    other = RunSlice("hold-run", "acct-1", "run-1", WORST)
    with pytest.raises(RuntimeError, match="runs never fall back"):
        await other.give_back(ends, "fallback")


async def test_a_slice_whose_run_ended_first_is_recorded_with_nothing_charged() -> None:
    gone = DomainError(Reason.HOLD_NOT_OPEN, "The run's hold is settled.")
    usage = RecordingUsage()
    piece = RunSlice("hold-run", "acct-1", "run-1", WORST)
    ended = await piece.finish(
        ends_with(Queue(), Wallet(gone), usage), a_receipt("hold-run"), settled(120)
    )
    assert ended.charge.micros == 0 and usage.receipts[0].error_code == "run_settled_first"
