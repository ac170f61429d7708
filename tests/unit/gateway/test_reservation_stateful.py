"""Hypothesis drives reservations through take / finish / cancel / give back / a slow
queue in any order and checks, when everything has settled, that each ended exactly
once and that the money taken equals the money finished plus the money given back;
draws never end their budget's hold."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.gateway.budgets import Budgets
from services.gateway.domain.budgets import BudgetPolicy
from services.gateway.domain.settlement import Rule, Settlement, Status, Usage
from services.gateway.flow.ends import PeerEnds
from services.gateway.flow.reservation import BudgetDraw, OwnHold, Reservation, State
from tests.unit.gateway.fakes import Queue, RecordingUsage, Wallet, peers_with
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.money import Bucket, Money

BUDGET = 100_000


class GatedQueue(Queue):
    """Takes finishes only while open: finishes wait in between (a slow database)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.rows: list[tuple[str, str, str]] = []  # (request id, hold id, finish)

    async def put(self, request_id: str, receipt: bytes, **where: Any) -> None:
        await self.open.wait()
        assert request_id not in self.kept, f"{request_id} queued twice"
        await super().put(request_id, receipt)
        self.rows.append((request_id, str(where["hold_id"]), str(where["finish"])))


class Reservations(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.wallet = Wallet()
        self.queue = GatedQueue()

        async def peers() -> Any:  # in the loop: the fakes' gRPC channels bind to it
            return peers_with(RecordingUsage(), self.queue)

        peers = self.loop.run_until_complete(peers())
        peers.__dict__["wallet_client"] = self.wallet
        self.ends = PeerEnds(peers)
        self.budgets = Budgets(self.wallet, BudgetPolicy())  # type: ignore[arg-type]
        self.budget = self.budgets.book.opened(
            ("acct-1", Bucket.CREDIT), "hold-budget", "budget-1", BUDGET, 0.0, 600
        )
        self.taken: list[Reservation] = []
        self.callers: list[asyncio.Task[Any]] = []
        self.charges: dict[int, int] = {}  # reservation index -> charge of its first finish

    def teardown(self) -> None:
        if not hasattr(self, "loop"):
            return

        async def everything_settles() -> None:
            self.queue.open.set()
            waits = [r.wait() for r in self.taken]
            await asyncio.gather(*self.callers, *waits, return_exceptions=True)

        self.run(everything_settles())
        self.check_conservation()
        self.loop.close()

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def settle_a_little(self) -> None:
        self.run(asyncio.sleep(0))

    @rule(amount=st.integers(1, 5_000))
    def take_own_hold(self, amount: int) -> None:
        self.taken.append(
            OwnHold(f"hold-{len(self.taken)}", "acct-1", Money(amount, Bucket.CREDIT))
        )

    @rule(amount=st.integers(1, 5_000))
    def take_draw(self, amount: int) -> None:
        if self.budget.room < amount:
            return
        self.budget.take(amount, 0.0)
        budget = self.budget

        def on_end(charge: int, worst: int = amount) -> None:
            self.budgets.give_back(budget, worst, charge)

        self.taken.append(BudgetDraw(budget, Money(amount, Bucket.CREDIT), on_end))

    @precondition(lambda self: bool(self.taken))
    @rule(data=st.data(), share=st.integers(0, 100))
    def finish(self, data: st.DataObject, share: int) -> None:
        i = data.draw(st.integers(0, len(self.taken) - 1))
        reservation = self.taken[i]
        charge = reservation.amount.micros * share // 100
        receipt = usage_pb2.Receipt(
            request_id=f"req-{i}",
            account_id="acct-1",
            hold_id=reservation.hold_id,
            bucket=common_pb2.BUCKET_CREDIT,
        )
        usage = Usage(1, 1, 0, True) if charge else None
        settlement = Settlement(
            Rule.FINISHED_WITH_USAGE,
            Status.SUCCEEDED,
            usage,
            Money(charge, Bucket.CREDIT),
            False,
        )
        if reservation.state is State.TAKEN:
            self.charges.setdefault(i, charge)
        self.callers.append(
            self.loop.create_task(reservation.finish(self.ends, receipt, settlement))
        )
        self.settle_a_little()

    @precondition(lambda self: bool(self.taken))
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.taken) - 1))
        self.callers.append(self.loop.create_task(self.taken[i].give_back(self.ends, "fallback")))
        self.settle_a_little()

    @precondition(lambda self: bool(self.callers))
    @rule(data=st.data())
    def cancel_a_caller(self, data: st.DataObject) -> None:
        """A client that goes away: its wait is cancelled, never the end itself."""
        self.callers[data.draw(st.integers(0, len(self.callers) - 1))].cancel()
        self.settle_a_little()

    @rule()
    def queue_opens(self) -> None:
        self.queue.open.set()
        self.settle_a_little()

    @rule()
    def queue_closes(self) -> None:
        self.queue.open.clear()

    @invariant()
    def the_budget_never_pays_more_than_it_holds(self) -> None:
        if hasattr(self, "budget"):
            assert self.budget.reserved + self.budget.spent <= BUDGET
            assert ("hold-budget", "") not in self.wallet.settles

    def check_conservation(self) -> None:
        taken = finished = given_back = 0
        for i, reservation in enumerate(self.taken):
            taken += reservation.amount.micros
            if reservation.state is State.TAKEN:
                given_back += reservation.amount.micros  # never ended: nothing charged
                if isinstance(reservation, BudgetDraw):
                    # The request flow ends every reservation; here it is the test's.
                    self.run(reservation.give_back(self.ends, "test over"))
                continue
            assert reservation.state is State.FINISHED
            ended = reservation.ended
            assert ended is not None
            if reservation.given_back:
                assert ended.charge.micros == 0
                given_back += reservation.amount.micros
            else:
                assert ended.charge.micros == self.charges[i]
                finished += ended.charge.micros
                given_back += reservation.amount.micros - ended.charge.micros
        assert taken == finished + given_back
        # Each reservation ended once: one queued row or one release, never both.
        queued = [row[0] for row in self.queue.rows]
        assert len(queued) == len(set(queued))
        released = [hold for hold, _ in self.wallet.releases]
        assert len(released) == len(set(released))
        assert "hold-budget" not in released and not self.wallet.settles
        for request_id, hold_id, finish in self.queue.rows:
            i = int(request_id.removeprefix("req-"))
            assert self.taken[i].hold_id == hold_id and hold_id not in released
            assert finish == ("part" if isinstance(self.taken[i], BudgetDraw) else finish)
        # The budget: every draw returned; what it paid out is what the draws were charged.
        spent = sum(
            r.ended.charge.micros
            for r in self.taken
            if isinstance(r, BudgetDraw) and r.ended is not None
        )
        assert (self.budget.draws, self.budget.reserved, self.budget.spent) == (0, 0, spent)


Reservations.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_reservations_end_once_and_conserve_money = Reservations.TestCase
