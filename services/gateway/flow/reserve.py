"""Stage 2, reserve: set the worst case aside before anything is sent upstream.

Which `Reservation` (services/gateway/flow/reservation.py) a request takes:

- a request on a run (`x-tokenforge-run`) takes a **slice** of the run's budget;
- a request of a busy account's bucket takes a **draw** from a budget (in memory, no
  wallet call), when the replica has or can open one;
- any other request places its own wallet **hold**.

When the gateway chose the output cap, a hold or a slice the balance cannot pay is
lowered to what it can pay rather than refused. A refusal for money records a
`rejected` receipt and ends the routing lease. A Hold the wallet never answered is a
`HoldInDoubt`: ended in the background once the wallet is back (flow/finish.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from services.gateway import metrics
from services.gateway.adapters.peers import Peers
from services.gateway.domain.commands import ChatCommand
from services.gateway.domain.planning import Plan, shrink_to_budget
from services.gateway.domain.protocols import least_output_cap
from services.gateway.flow.admit import (
    Admitted,
    hold_ttl,
    insufficient,
    record_rejected,
    request_bound_s,
    route_protocols,
    upstream_body,
)
from services.gateway.flow.background import in_background
from services.gateway.flow.ends import PeerEnds
from services.gateway.flow.report import report_outcome
from services.gateway.flow.reservation import BudgetDraw, OwnHold, Reservation, RunSlice
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.money import Money, Price

log = logging.getLogger("tokenforge.gateway.reserve")


class HoldInDoubt(DomainError):
    """The wallet did not answer a request's own Hold (it went down, or its database
    did, mid-call): the hold may have been placed or not. The request is answered that
    the wallet is unavailable and nothing was charged, and made true in the background
    (flow/finish.py `end_in_doubt`): the same Hold is asked again, with the same
    idempotency key, once the wallet answers, and the hold it names is released with a
    receipt that charges nothing. A request's second hold, on a fallback route
    (`idempotency_key` set), is released without a receipt of its own: the request's
    first reservation ends with the request's receipt."""

    def __init__(
        self,
        error: DomainError,
        admitted: Admitted,
        price: Price,
        plan: Plan,
        ttl_s: int,
        idempotency_key: str = "",
    ) -> None:
        super().__init__(error.reason, error.message, error.metadata)
        self.admitted, self.price, self.plan, self.ttl_s = admitted, price, plan, ttl_s
        self.idempotency_key = idempotency_key

    async def placed(self, peers: Peers) -> OwnHold | None:
        """Once the wallet answers: the hold it placed for this Hold (placed then, or
        now), or None when it places none or never answered within the hold's TTL."""
        admitted, bucket = self.admitted, self.price.bucket
        hold = await peers.wallet_client.hold_in_doubt(
            admitted.account_id,
            bucket,
            self.plan.worst_case.micros,
            admitted.cmd.request_id,
            ttl_seconds=self.ttl_s,
            trace_id=admitted.cmd.trace_id,
            idempotency_key=self.idempotency_key,
        )
        if hold is None:
            log.info(
                "request %s: no hold in doubt placed, or left to its TTL", admitted.cmd.request_id
            )
            return None
        return OwnHold(hold.hold_id, admitted.account_id, Money(hold.amount_micros, bucket))


def give_back_in_doubt(peers: Peers, doubt: HoldInDoubt) -> None:
    """A fallback route's Hold the wallet did not answer (the request is answered that
    the wallet is unavailable; its first reservation ends with its receipt, nothing
    charged): in the background, once the wallet answers, the hold it names is released,
    rather than held until its TTL."""

    async def give_back() -> None:
        if (held := await doubt.placed(peers)) is not None:
            await held.give_back(PeerEnds(peers), "fallback_hold_in_doubt")
            log.info(
                "request %s: its fallback hold in doubt %s is released",
                doubt.admitted.cmd.request_id,
                held.hold_id,
            )

    in_background(give_back())


@dataclass
class Prepared:
    """A request admitted and reserved for, ready to call upstream; the route it is on
    changes when it falls back to another route (with a new reservation)."""

    admitted: Admitted
    reservation: Reservation
    price: Price
    plan: Plan
    upstream_body: dict[str, Any]
    # Set once the request fell back to another route: the route it is on now.
    fallback_route: routing_pb2.Route | None = None
    # The next of `resolved.fallback_routes` to try.
    next_fallback: int = 0
    # The routes left behind (or not payable), in order; empty while on the first.
    route_attempts: list[usage_pb2.RouteAttempt] = field(default_factory=list)
    # Channel attempts that ran on the routes left behind.
    earlier_attempts: int = 0
    # The request's finish once started (flow/finish.py): a second finish answers it.
    finishing: asyncio.Future[tuple[usage_pb2.Receipt, Money]] | None = None
    # The charge its finish settles for, once the settlement table decided it.
    settled_charge: Money | None = None

    @property
    def cmd(self) -> ChatCommand:
        return self.admitted.cmd

    @property
    def resolved(self) -> routing_pb2.ResolveResponse:
        return self.admitted.resolved

    @property
    def endpoint(self) -> routing_pb2.Endpoint:
        return self.admitted.endpoint

    @property
    def route(self) -> routing_pb2.Route:
        route: routing_pb2.Route = self.fallback_route or self.resolved.route
        return route

    @property
    def fell_back(self) -> bool:
        return self.fallback_route is not None


async def reserve(peers: Peers, admitted: Admitted) -> Prepared:
    """Take the request's reservation: a slice, a draw or its own hold."""
    cmd, route = admitted.cmd, admitted.resolved.route
    price, plan = admitted.price, admitted.plan
    try:
        reservation: Reservation
        if cmd.run_id:
            reservation, plan = await take_slice(peers, admitted)
        elif drawn := await take_draw(peers, admitted):
            reservation = drawn
        else:
            metrics.BUDGET_DRAWS.labels("hold").inc()
            reservation, plan = await take_hold(peers, admitted, price, plan, hold_ttl(route))
    except DomainError as error:
        report_outcome(peers, admitted.resolved, cmd.request_id, [], None)  # ends the lease
        if error.reason is Reason.INSUFFICIENT_BALANCE:
            if peers.budgets is not None and not cmd.run_id:
                peers.budgets.refused(admitted.account_id, price.bucket)
            await record_rejected(peers, admitted, error)
        raise
    body = upstream_body(cmd, admitted.endpoint, route, plan)
    return Prepared(admitted, reservation, price, plan, body)


async def take_hold(
    peers: Peers,
    admitted: Admitted,
    price: Price,
    plan: Plan,
    ttl_s: int,
    idempotency_key: str = "",
) -> tuple[OwnHold, Plan]:
    """Hold the worst case; when the gateway chose the output cap, lower it to what the
    available balance pays for rather than refuse. `idempotency_key` (default: the
    request id) names a request's second hold, on a fallback route."""
    cmd = admitted.cmd
    for _ in range(2):
        try:
            hold = await peers.wallet_client.hold(
                admitted.account_id,
                price.bucket,
                plan.worst_case.micros,
                cmd.request_id,
                ttl_seconds=ttl_s,
                trace_id=cmd.trace_id,
                idempotency_key=idempotency_key,
            )
            amount = Money(hold.amount_micros, price.bucket)
            return OwnHold(hold.hold_id, admitted.account_id, amount), plan
        except DomainError as error:
            if error.reason is Reason.SERVICE_UNAVAILABLE:
                raise HoldInDoubt(error, admitted, price, plan, ttl_s, idempotency_key) from error
            if error.reason is not Reason.INSUFFICIENT_BALANCE:
                raise
            available = Money(
                int((error.metadata or {}).get("available_micros", "0")), price.bucket
            )
            least = least_output_cap(route_protocols(admitted.resolved))
            smaller = shrink_to_budget(plan, price, available, least)
            if smaller is None or smaller == plan:
                raise insufficient(price.bucket, available, plan.worst_case) from None
            # A refused hold leaves no record, so the same request id may ask again.
            plan = smaller
    raise insufficient(price.bucket, Money(0, price.bucket), plan.worst_case)


async def take_draw(peers: Peers, admitted: Admitted) -> BudgetDraw | None:
    """The worst case drawn from a budget of the account's bucket (in memory: the
    budget's wallet hold already pays for it), when the bucket is busy; None when the
    request holds for itself."""
    budgets = peers.budgets
    if budgets is None:
        return None
    price, worst = admitted.price, admitted.plan.worst_case.micros
    budget = await budgets.draw(
        admitted.account_id,
        price.bucket,
        worst,
        request_bound_s(admitted.resolved.route),
        admitted.cmd.trace_id,
    )
    if budget is None:
        return None

    def on_end(charge: int) -> None:
        budgets.give_back(budget, worst, charge)

    return BudgetDraw(budget, Money(worst, price.bucket), on_end)


async def take_slice(peers: Peers, admitted: Admitted) -> tuple[RunSlice, Plan]:
    """Reserve the worst case from the run's remaining budget (the run's wallet hold
    already pays for it); when the gateway chose the output cap, lower it to the rest
    of the budget rather than refuse."""
    cmd, price, plan = admitted.cmd, admitted.price, admitted.plan
    for _ in range(2):
        try:
            run = await peers.usage_client.reserve_from_run(
                admitted.account_id,
                cmd.run_id,
                cmd.request_id,
                plan.worst_case.micros,
                price.bucket,
            )
        except DomainError as error:
            if error.reason is not Reason.INSUFFICIENT_BALANCE:
                raise
            left = Money(int((error.metadata or {}).get("available_micros", "0")), price.bucket)
            least = least_output_cap(route_protocols(admitted.resolved))
            smaller = shrink_to_budget(plan, price, left, least)
            if smaller is None or smaller == plan:
                raise
            plan = smaller
            continue
        amount = Money(plan.worst_case.micros, price.bucket)
        return RunSlice(run.hold_id, admitted.account_id, run.run_id, amount), plan
    raise DomainError(Reason.INSUFFICIENT_BALANCE, f"Run {cmd.run_id} budget spent.")
