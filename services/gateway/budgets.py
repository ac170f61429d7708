"""Budgets at work: drawing a busy account's requests from one wallet hold.

The rules live in services/gateway/domain/budgets.py; this module talks to the wallet
(one balance read and one Hold per budget). Each request's finish is queued like any
other (flow/finish.py, a `BudgetDraw`); the relay (services/gateway/relay.py) captures the
queued parts, records the receipts and closes the budgets that are done (one Release
each).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from services.gateway import metrics
from services.gateway.domain.budgets import Budget, BudgetBook, BudgetPolicy, Key
from services.gateway.flow.reservation import until_answered
from services.wallet.client import WalletClient
from tokenforge.errors import DomainError, Reason
from tokenforge.holds import new_budget_request_id
from tokenforge.money import Bucket

log = logging.getLogger("tokenforge.gateway.budgets")

# The next budget is opened in the background once the open ones have less room than
# this share of a new one.
PRE_OPEN_SHARE = 4


class Budgets:
    """One gateway replica's budgets."""

    def __init__(
        self,
        wallet: WalletClient,
        policy: BudgetPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wallet = wallet
        self.book = BudgetBook(policy)
        self.clock = clock
        # Retired budgets whose parts could not all be delivered yet (wallet or usage
        # down): closed on a later round.
        self.closing: list[Budget] = []
        self._opening: dict[Key, asyncio.Task[bool]] = {}
        # Budgets' Holds the wallet never answered, being ended (`_end_in_doubt`).
        self._in_doubt: set[asyncio.Task[None]] = set()

    async def draw(
        self, account_id: str, bucket: Bucket, worst: int, request_ttl_s: int, trace_id: str
    ) -> Budget | None:
        """Take the request's worst case from a budget of the account's bucket, opening
        one when the bucket is busy; None when the request should hold for itself.
        `request_ttl_s` is what the request's own hold would live."""
        key = (account_id, bucket)
        now = self.clock()
        budget = self.book.draw(key, worst, now, request_ttl_s)
        busy = self.book.wants_budget(key, now)
        opening = (key, worst, request_ttl_s, trace_id)
        if budget is None and busy and await self._open(*opening):
            budget = self.book.draw(key, worst, self.clock(), request_ttl_s)
        if budget is not None:
            metrics.BUDGET_DRAWS.labels("budget").inc()
            if self.book.room(key) < self.book.nominal_size(worst) // PRE_OPEN_SHARE:
                self._start_opening(*opening)
        return budget

    def refused(self, account_id: str, bucket: Bucket) -> None:
        """The wallet refused a request's own hold for want of balance: the bucket goes
        hold by hold for a while, and its budgets take no new draw."""
        self.book.refused((account_id, bucket), self.clock())

    def give_back(self, budget: Budget, worst: int, charge: int) -> None:
        budget.give_back(worst, charge, self.clock())

    def _start_opening(
        self, key: Key, worst: int, request_ttl_s: int, trace_id: str
    ) -> asyncio.Task[bool]:
        task = self._opening.get(key)
        if task is None:
            task = asyncio.create_task(self._place(key, worst, request_ttl_s, trace_id))
            self._opening[key] = task
            task.add_done_callback(lambda _: self._opening.pop(key, None))
        return task

    async def _open(self, key: Key, worst: int, request_ttl_s: int, trace_id: str) -> bool:
        # Shielded: a request that goes away does not cancel the others' budget.
        return await asyncio.shield(self._start_opening(key, worst, request_ttl_s, trace_id))

    async def _place(self, key: Key, worst: int, request_ttl_s: int, trace_id: str) -> bool:
        account_id, bucket = key
        request_id = new_budget_request_id()
        ttl_s = self.book.ttl_for(request_ttl_s)
        placed_at = self.clock()
        try:
            balance = await self.wallet.balance(account_id, bucket)
            size = self.book.size_for(worst, balance.available_micros)
            if size == 0:
                metrics.BUDGETS.labels("refused").inc()
                self.book.refused(key, self.clock())
                return False
            try:
                hold = await self.wallet.hold(
                    account_id, bucket, size, request_id, ttl_seconds=ttl_s, trace_id=trace_id
                )
            except DomainError as error:
                if error.reason is Reason.SERVICE_UNAVAILABLE:  # placed or not: find out
                    self._end_in_doubt(account_id, bucket, size, request_id, ttl_s, trace_id)
                raise
        except DomainError as error:
            if error.reason is Reason.INSUFFICIENT_BALANCE:
                metrics.BUDGETS.labels("refused").inc()
                self.book.refused(key, self.clock())
            else:
                log.warning("budget for %s not opened: %s", account_id, error.reason.value)
            return False
        except Exception:  # noqa: BLE001 - the requests hold for themselves instead
            log.exception("budget for %s not opened", account_id)
            return False
        # Its expiry counted from before the call: the wallet's clock started later.
        self.book.opened(key, hold.hold_id, request_id, hold.amount_micros, placed_at, ttl_s)
        metrics.BUDGETS.labels("opened").inc()
        return True

    def _end_in_doubt(
        self, account_id: str, bucket: Bucket, size: int, request_id: str, ttl_s: int, trace: str
    ) -> None:
        """A budget's Hold the wallet did not answer may have been placed: once the
        wallet answers, ask the same Hold again (its request id is its idempotency key)
        and release what it names, which no request drew from (the budget was never
        opened). Given up at the hold's TTL, or when the wallet places none."""

        async def end() -> None:
            hold = await self.wallet.hold_in_doubt(
                account_id, bucket, size, request_id, ttl_seconds=ttl_s, trace_id=trace
            )
            if hold is None:
                log.info("budget %s: no hold in doubt placed, or left to its TTL", request_id)
                return
            await until_answered(  # the wallet may go away again meanwhile
                lambda: self.wallet.release(
                    hold.hold_id, reason="budget_not_opened", account_id=account_id
                )
            )
            log.info("budget hold in doubt %s released", hold.hold_id)

        task = asyncio.create_task(end())
        self._in_doubt.add(task)
        task.add_done_callback(self._in_doubt.discard)

    def due(self, account_id: str = "") -> list[Budget]:
        """The budgets to close now (all of an account's idle ones when given), with
        those that could not close before."""
        fresh = self.book.idle_of(account_id) if account_id else self.book.due(self.clock())
        closing, self.closing = [*self.closing, *fresh], []
        return closing

    def retire_all(self) -> None:
        for budget in self.book.all():
            budget.retired = True
