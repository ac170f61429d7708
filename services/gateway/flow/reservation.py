"""Reservations: the money a request has set aside before it runs, and how it ends.

A request is never sent upstream without money set aside for its worst case. That
money is one of three things, each a `Reservation`:

- `OwnHold`: a wallet **hold** the request placed for itself (wallet Hold). Its finish
  settles the hold for the charge (or releases it when nothing is charged); giving it
  back releases it.
- `BudgetDraw`: a **draw** from a budget, one wallet hold a gateway replica placed for a
  busy account's bucket (services/gateway/domain/budgets.py). Its finish is the
  request's own part of the budget's hold (wallet CapturePart); giving it back returns
  the worst case to the budget in memory. A draw never ends the budget's hold: only the
  budget does (relay.close_budget).
- `RunSlice`: a **slice** of a run's budget (usage ReserveFromRun). Its finish captures
  the charge from the run's hold as the request's own part and records the receipt,
  which ends the slice in usage; a run's request never moves to another route, so a
  slice is never given back (asking to is a programming error).

Each ends **exactly once**, through a small state machine:

    taken --finish(receipt, settlement)--> finishing --> finished
    taken --give_back(reason)-------------> finishing --> finished

The work of ending runs in its own task, shielded from the caller: a client that goes
away while the finish is being queued cancels its wait, never the finish. A second
`finish` or `give_back` (a stream's disconnect after its last chunk, a cancellation
racing the answer) waits for the first and answers the first outcome; it never
touches money again, and never another reservation's money.

Where a finish goes (`Ends`): durably queued in the gateway's finish queue for the
relay (the answer then names the ledger entry id the wallet derives from the hold,
tokenforge.holds), or, when the queue cannot take it, done now (the wallet's side, then
the receipt).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from services.gateway.domain.settlement import Settlement, Status
from services.gateway.storage.finish_queue import PART, RELEASE, SETTLE
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.holds import part_entry_id, settle_entry_id
from tokenforge.money import Money

if TYPE_CHECKING:
    from services.gateway.domain.budgets import Budget

log = logging.getLogger("tokenforge.gateway.reservation")

T = TypeVar("T")


class State(enum.StrEnum):
    TAKEN = "taken"
    FINISHING = "finishing"
    FINISHED = "finished"


@dataclass(frozen=True)
class Ended:
    """How a reservation ended: the receipt it was finished with (None when given
    back) and the charge taken (zero when given back)."""

    receipt: usage_pb2.Receipt | None
    charge: Money


class Ends(Protocol):
    """Where a reservation's end goes: the gateway's side of the wallet, usage and the
    finish queue (services/gateway/flow/ends.py on the real services; a fake in unit
    tests)."""

    async def enqueue(self, receipt: usage_pb2.Receipt, finish: str) -> None:
        """Durably queue the receipt with what is left to do with its hold."""

    async def apply(self, receipt: usage_pb2.Receipt, finish: str) -> None:
        """Do the wallet's side of `finish` now (a receipt whose charge could not be
        collected is rewritten to say so), then record the receipt."""

    async def release(self, hold_id: str, reason: str, account_id: str) -> None:
        """Release a hold whole (nothing charged)."""

    async def capture_part(self, receipt: usage_pb2.Receipt, micros: int) -> str:
        """Capture `micros` of the receipt's hold as the request's own part; answers the
        ledger entry id."""

    async def record(self, receipt: usage_pb2.Receipt) -> None:
        """Record the receipt (usage)."""


class Reservation(ABC):
    """Money set aside for one request's worst case, ended exactly once."""

    # The word the product uses for it: "hold", "draw" or "slice".
    kind: str = ""

    def __init__(self, hold_id: str, account_id: str, amount: Money) -> None:
        self.hold_id = hold_id  # the wallet hold that pays (the request's, a budget's, a run's)
        self.account_id = account_id
        self.amount = amount  # the worst case set aside
        self._end: asyncio.Future[Ended] | None = None
        self._given_back = False

    @property
    def state(self) -> State:
        if self._end is None:
            return State.TAKEN
        return State.FINISHED if self._end.done() else State.FINISHING

    @property
    def given_back(self) -> bool:
        return self._given_back

    @property
    def ended(self) -> Ended | None:
        """The outcome once finished (None before, or when the end failed)."""
        end = self._end
        if end is None or not end.done() or end.cancelled() or end.exception() is not None:
            return None
        return end.result()

    async def finish(self, ends: Ends, receipt: usage_pb2.Receipt, settlement: Settlement) -> Ended:
        """End with the settlement's charge and the receipt (filled: tokens, charge,
        status, the ledger entry id). The first end wins; later calls answer it."""
        return await self._once(lambda: self._finish(ends, receipt, settlement))

    async def give_back(self, ends: Ends, reason: str) -> Ended:
        """End with nothing charged and no receipt (the request moved to another route).
        The first end wins; later calls answer it."""

        async def run() -> Ended:
            self._given_back = True
            await self._give_back(ends, reason)
            return Ended(None, Money(0, self.amount.bucket))

        return await self._once(run)

    async def wait(self) -> Ended | None:
        """The end once it is done (None when nothing ended it yet)."""
        if self._end is None:
            return None
        return await asyncio.shield(self._end)

    async def _once(self, start: Callable[[], Coroutine[Any, Any, Ended]]) -> Ended:
        if self._end is None:
            self._end = asyncio.ensure_future(start())
            _ENDS.add(self._end)  # kept until done, though every caller went away
            self._end.add_done_callback(_retrieve)
        # Shielded: a caller that goes away stops waiting; the end itself goes on.
        return await asyncio.shield(self._end)

    @abstractmethod
    async def _finish(
        self, ends: Ends, receipt: usage_pb2.Receipt, settlement: Settlement
    ) -> Ended: ...

    @abstractmethod
    async def _give_back(self, ends: Ends, reason: str) -> None: ...


# The ends under way (asyncio keeps only weak references to tasks).
_ENDS: set[asyncio.Future[Ended]] = set()


def _retrieve(future: asyncio.Future[Ended]) -> None:
    """An end nobody waits for any more still has its failure logged."""
    _ENDS.discard(future)
    if not future.cancelled() and (error := future.exception()) is not None:
        log.error("a reservation's end failed: %r", error)


# A finish that can be neither queued nor done directly is tried again for this long
# (backoff 0.25 s doubling to 4 s), within the hold's margin after its request
# (settlement.FINISH_MARGIN_S), before it is left to the hold's TTL; the request's
# answer does not wait for all of it (flow/finish.py, FINISH_WAIT_S).
FINISH_RETRY_S = 90.0
FINISH_RETRY_MAX_S = 4.0


async def try_again(attempt: int, give_up_at: float) -> bool:
    """Wait before the next try (0.25 s doubling to FINISH_RETRY_MAX_S); False, without
    waiting, once `give_up_at` has passed."""
    if asyncio.get_running_loop().time() >= give_up_at:
        return False
    await asyncio.sleep(min(FINISH_RETRY_MAX_S, 0.25 * 2 ** min(attempt, 8)))
    return True


async def until_answered(call: Callable[[], Awaitable[T]], give_up_s: float | None = None) -> T:
    """`call` (idempotent), tried again while its peer does not answer
    (SERVICE_UNAVAILABLE: the wallet went away) for `give_up_s` (FINISH_RETRY_S),
    rather than leave a hold held until its TTL; any other error at once."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + (FINISH_RETRY_S if give_up_s is None else give_up_s)
    attempt = 0
    while True:
        try:
            return await call()
        except DomainError as error:
            if error.reason is not Reason.SERVICE_UNAVAILABLE:
                raise
            if not await try_again(attempt, give_up_at):
                raise
        attempt += 1


class Queued(Reservation, ABC):
    """A reservation whose finish is durably queued for the relay (or, when the queue
    cannot take it, done now): an own hold or a budget draw."""

    @abstractmethod
    def finish_kind(self, settlement: Settlement) -> str:
        """What is left to do with the hold: PART, SETTLE or RELEASE."""

    @abstractmethod
    def entry_id(self, request_id: str) -> str:
        """The ledger entry id the wallet will give the charge."""

    def spent(self, charge: int) -> None:
        """The finish is done (or may have been): `charge` counts as spent."""

    async def _finish(
        self, ends: Ends, receipt: usage_pb2.Receipt, settlement: Settlement
    ) -> Ended:
        charge = settlement.charge
        finish = self.finish_kind(settlement)
        receipt.entry_id = self.entry_id(receipt.request_id) if charge.micros > 0 else ""
        fill_receipt(receipt, settlement)
        give_up_at = asyncio.get_running_loop().time() + FINISH_RETRY_S
        attempt = 0
        while True:
            try:
                await ends.enqueue(receipt, finish)
            except Exception as failure:  # noqa: BLE001 - the finish goes the direct way
                log.warning(
                    "finish of %s not queued (%r); finishing now", receipt.request_id, failure
                )
                try:
                    await ends.apply(receipt, finish)
                except Exception:
                    # Neither way now (the gateway's database and the wallet's both down:
                    # a PostgreSQL restart): again in a moment, rather than leave the hold
                    # to its TTL. Both ways are idempotent per request and hold.
                    if not await try_again(attempt, give_up_at):
                        self.spent(charge.micros)  # it may have been taken: counted as spent
                        raise
                    attempt += 1
                    continue
                self.spent(charge.micros)
                return Ended(receipt, Money(receipt.charge_micros, charge.bucket))
            break
        self.spent(charge.micros)
        return Ended(receipt, charge)


class OwnHold(Queued):
    """A wallet hold the request placed for itself."""

    kind = "hold"

    def finish_kind(self, settlement: Settlement) -> str:
        return SETTLE if settlement.usage is not None else RELEASE

    def entry_id(self, request_id: str) -> str:
        return str(settle_entry_id(self.hold_id))

    async def _give_back(self, ends: Ends, reason: str) -> None:
        """Released, also when the wallet went away meanwhile (the request moved to
        another route as it did): release is idempotent per hold."""
        await until_answered(lambda: ends.release(self.hold_id, reason, self.account_id))


class BudgetDraw(Queued):
    """A draw from a budget: the budget's wallet hold pays; the request's charge is its
    own part of that hold."""

    kind = "draw"

    def __init__(self, budget: Budget, amount: Money, on_end: Callable[[int], None]) -> None:
        super().__init__(budget.hold_id, budget.account_id, amount)
        self.budget = budget
        self._on_end = on_end  # gives the worst case back to the budget, `charge` spent
        self._returned = False

    def finish_kind(self, settlement: Settlement) -> str:
        return PART

    def entry_id(self, request_id: str) -> str:
        return str(part_entry_id(self.hold_id, request_id))

    def spent(self, charge: int) -> None:
        if not self._returned:
            self._returned = True
            self._on_end(charge)

    async def _give_back(self, ends: Ends, reason: str) -> None:
        self.spent(0)


class RunSlice(Reservation):
    """A slice of a run's budget: the run's hold pays; the request's charge is its own
    part of it, and its receipt ends the slice in usage."""

    kind = "slice"

    def __init__(self, hold_id: str, account_id: str, run_id: str, amount: Money) -> None:
        super().__init__(hold_id, account_id, amount)
        self.run_id = run_id

    async def _finish(
        self, ends: Ends, receipt: usage_pb2.Receipt, settlement: Settlement
    ) -> Ended:
        """Take the charge from the run's hold (its own ledger row), then record the
        receipt naming that row. If the run's hold ended first (the run was closed or
        expired under the request), nothing was taken and the receipt says so."""
        charge = settlement.charge
        error_code = ""
        if charge.micros > 0:
            try:
                receipt.entry_id = await ends.capture_part(receipt, charge.micros)
            except DomainError as error:
                if error.reason not in (Reason.HOLD_NOT_OPEN, Reason.HOLD_EXPIRED):
                    raise
                charge = Money(0, charge.bucket)
                error_code = "run_settled_first"
        fill_receipt(receipt, settlement, charge, error_code)
        try:
            await ends.record(receipt)
        except DomainError as error:
            if error.reason is not Reason.HOLD_NOT_OPEN:
                raise
            receipt.charge_micros = 0
            receipt.error_code = "run_settled_first"
            charge = Money(0, charge.bucket)
            await ends.record(receipt)
        return Ended(receipt, charge)

    async def _give_back(self, ends: Ends, reason: str) -> None:
        raise RuntimeError(
            f"a slice of run {self.run_id} ends only with its receipt (runs never fall back)"
        )


def fill_receipt(
    receipt: usage_pb2.Receipt,
    settlement: Settlement,
    charge: Money | None = None,
    error_code: str = "",
) -> None:
    """The receipt's tokens, charge, status and rule, as the settlement decided."""
    charge = settlement.charge if charge is None else charge
    if settlement.usage is not None:
        receipt.prompt_tokens = settlement.usage.prompt_tokens
        receipt.completion_tokens = settlement.usage.completion_tokens
        receipt.cached_tokens = settlement.usage.cached_tokens
        receipt.cache_write_tokens = settlement.usage.cache_write_tokens
        receipt.reasoning_tokens = settlement.usage.reasoning_tokens
        receipt.tokens_reported = settlement.usage.reported
    if error_code:
        receipt.error_code = error_code
    elif settlement.usage is not None and settlement.capped_at_hold and not receipt.error_code:
        receipt.error_code = "charge_capped_at_hold"
    receipt.charge_micros = charge.micros
    receipt.status = RECEIPT_STATUS[settlement.status]
    receipt.settlement_rule = settlement.rule.value
    receipt.finished_at.GetCurrentTime()


RECEIPT_STATUS = {
    Status.SUCCEEDED: usage_pb2.RECEIPT_STATUS_SUCCEEDED,
    Status.FAILED: usage_pb2.RECEIPT_STATUS_FAILED,
    Status.PARTIAL: usage_pb2.RECEIPT_STATUS_PARTIAL,
}
