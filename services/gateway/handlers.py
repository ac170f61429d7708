"""The gateway's use cases: one request through resolve, hold, upstream, settle, receipt.

Every step is keyed by the request id the gateway made first. A charge or a receipt
id is only shown to the client once the request's finish (the settle, release or part
of a budget, and the receipt) is durably queued, for the relay (relay.py), or, for a
run's request, recorded.

When every allowed channel of the route fails before the first byte and the API key
allows other routes (Resolve answered `fallback_routes`), the request moves to the
next route: a new hold on that route's bucket at its prices (its own idempotency key,
the same request id), then the old hold is released; the receipt lists every route
tried (`route_attempts`) and names the route that paid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

from services.gateway.adapters.health import report_outcome, request_shape
from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Attempt, Upstream, UpstreamAnswer, retryable
from services.gateway.adapters.upstream_stream import STREAM_ERRORS, UpstreamStream, open_stream
from services.gateway.domain.budgets import Budget
from services.gateway.domain.planning import (
    Plan,
    Usage,
    counted_usage,
    plan_chat,
    plan_embeddings,
    shrink_to_budget,
    usage_from_response,
)
from services.gateway.domain.presenting import route_attempts_json
from services.gateway.domain.settlement import (
    FINISH_MARGIN_S,
    Rule,
    Settlement,
    Status,
    settle,
)
from services.gateway.relay import finish_hold
from services.gateway.storage.receipt_queue import PART, RELEASE, SETTLE
from tokenforge.errors import DomainError, Reason
from tokenforge.holds import part_entry_id, settle_entry_id
from tokenforge.money import Bucket, Money, Price, format_amount
from tokenforge.routing.v1 import routing_pb2
from tokenforge.runtime import metrics
from tokenforge.runtime.telemetry import current_traceparent
from tokenforge.usage.v1 import usage_pb2
from tokenforge.wallet.v1 import wallet_pb2
from tokenforge.wire import (
    bucket_from_proto,
    bucket_to_proto,
    price_from_proto,
    price_to_proto,
    route_kind_from_proto,
    timestamp,
)

log = logging.getLogger(__name__)

HOLD_MARGIN_S = 30
CHAT = routing_pb2.ENDPOINT_CHAT_COMPLETIONS
EMBEDDINGS = routing_pb2.ENDPOINT_EMBEDDINGS
ENDPOINT_PATH = {CHAT: "/chat/completions", EMBEDDINGS: "/embeddings"}
ENDPOINT_NAME = {CHAT: "chat.completions", EMBEDDINGS: "embeddings"}

# Settlements started while a client went away: kept referenced until done.
_background: set[asyncio.Task[Any]] = set()


@dataclass
class ChatCommand:
    request_id: str
    api_key: str
    body: dict[str, Any]
    trace_id: str
    client_ip: str = ""
    # `x-tokenforge-run`: draw from that run's hold instead of placing one.
    run_id: str = ""


@dataclass
class ChatOutcome:
    """What the client gets back: the upstream body and the receipt."""

    status: int
    payload: dict[str, Any]
    receipt: usage_pb2.Receipt
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Prepared:
    """A request resolved and held for, ready to call upstream."""

    cmd: ChatCommand
    endpoint: routing_pb2.Endpoint
    resolved: routing_pb2.ResolveResponse
    price: Price
    plan: Plan
    hold: wallet_pb2.Hold
    upstream_body: dict[str, Any]
    started: datetime
    # Set once the request fell back to another route: the route it is on now.
    fallback_route: routing_pb2.Route | None = None
    # The next of `resolved.fallback_routes` to try.
    next_fallback: int = 0
    # The routes left behind (or not payable), in order; empty while on the first.
    route_attempts: list[usage_pb2.RouteAttempt] = field(default_factory=list)
    # Channel attempts that ran on the routes left behind.
    earlier_attempts: int = 0
    # The budget the hold is drawn from (`hold` then names the budget's hold and the
    # draw's worst case); None once the draw gave back.
    budget: Budget | None = None

    @property
    def route(self) -> routing_pb2.Route:
        route: routing_pb2.Route = self.fallback_route or self.resolved.route
        return route

    @property
    def fell_back(self) -> bool:
        return self.fallback_route is not None

    @property
    def held(self) -> Money:
        return Money(self.hold.amount_micros, self.price.bucket)

    def end_draw(self, peers: Peers, charge: int = 0) -> None:
        """The budget draw ends (once): its worst case is no longer reserved and
        `charge` (queued or captured) is spent. Nothing when the hold is the request's
        own."""
        budget, self.budget = self.budget, None
        if budget is not None and peers.budgets is not None:
            peers.budgets.give_back(budget, self.hold.amount_micros, charge)


async def resolve(
    peers: Peers,
    api_key: str,
    model: str,
    client_ip: str,
    request_id: str,
    endpoint: routing_pb2.Endpoint,
    shape: tuple[int, int] = (0, 0),
    preview: bool = False,
) -> routing_pb2.ResolveResponse:
    request = routing_pb2.ResolveRequest(
        api_key=api_key,
        model=model,
        endpoint=endpoint,
        client_ip=client_ip,
        estimated_prompt_tokens=shape[0],
        output_tokens_cap=shape[1],
        preview=preview,
    )
    return await peers.routing_client.resolve(request, request_id=request_id)


async def place_hold(
    peers: Peers,
    account_id: str,
    price: Price,
    plan: Plan,
    cmd: ChatCommand,
    ttl_s: int,
    idempotency_key: str = "",
) -> tuple[wallet_pb2.Hold, Plan]:
    """Hold the worst case; when the gateway chose the output cap, lower it to what the
    available balance pays for rather than refuse. `idempotency_key` (default: the
    request id) names a request's second hold, on a fallback route."""
    for _ in range(2):
        try:
            hold = await peers.wallet_client.hold(
                account_id,
                price.bucket,
                plan.worst_case.micros,
                cmd.request_id,
                ttl_seconds=ttl_s,
                trace_id=cmd.trace_id,
                idempotency_key=idempotency_key,
            )
            return hold, plan
        except DomainError as error:
            if error.reason is not Reason.INSUFFICIENT_BALANCE:
                raise
            available = Money(
                int((error.metadata or {}).get("available_micros", "0")), price.bucket
            )
            smaller = shrink_to_budget(plan, price, available)
            if smaller is None or smaller == plan:
                raise insufficient(price.bucket, available, plan.worst_case) from None
            # A refused hold leaves no record, so the same request id may ask again.
            plan = smaller
    raise insufficient(price.bucket, Money(0, price.bucket), plan.worst_case)


async def draw_from_budget(
    peers: Peers,
    account_id: str,
    price: Price,
    plan: Plan,
    cmd: ChatCommand,
    request_ttl_s: int,
) -> tuple[wallet_pb2.Hold, Budget] | None:
    """The worst case taken from a budget of the account's bucket (in memory: the
    budget's wallet hold already pays for it), when the bucket is busy; None when the
    request holds for itself."""
    if peers.budgets is None:
        return None
    budget = await peers.budgets.draw(
        account_id, price.bucket, plan.worst_case.micros, request_ttl_s, cmd.trace_id
    )
    if budget is None:
        return None
    hold = wallet_pb2.Hold(
        hold_id=budget.hold_id,
        account_id=account_id,
        bucket=bucket_to_proto(price.bucket),
        amount_micros=plan.worst_case.micros,
        request_id=budget.request_id,
    )
    return hold, budget


async def draw_from_run(
    peers: Peers, account_id: str, price: Price, plan: Plan, cmd: ChatCommand
) -> tuple[wallet_pb2.Hold, Plan]:
    """Reserve the worst case from the run's remaining budget (the run's wallet hold
    already pays for it); when the gateway chose the output cap, lower it to the rest
    of the budget rather than refuse. Answers the run's hold with the slice's amount,
    so the settlement table caps the charge at the slice."""
    for _ in range(2):
        try:
            answer = await peers.usage.call(
                peers.usage_stub.ReserveFromRun,
                usage_pb2.ReserveFromRunRequest(
                    account_id=account_id,
                    run_id=cmd.run_id,
                    request_id=cmd.request_id,
                    amount_micros=plan.worst_case.micros,
                    bucket=bucket_to_proto(price.bucket),
                ),
                request_id=cmd.request_id,
            )
        except DomainError as error:
            if error.reason is not Reason.INSUFFICIENT_BALANCE:
                raise
            left = Money(int((error.metadata or {}).get("available_micros", "0")), price.bucket)
            smaller = shrink_to_budget(plan, price, left)
            if smaller is None or smaller == plan:
                raise
            plan = smaller
            continue
        run = answer.run
        hold = wallet_pb2.Hold(
            hold_id=run.hold_id,
            account_id=account_id,
            bucket=run.bucket,
            amount_micros=plan.worst_case.micros,
            request_id=run.run_id,
        )
        return hold, plan
    raise DomainError(Reason.INSUFFICIENT_BALANCE, f"Run {cmd.run_id} budget spent.")


async def record_rejected(
    peers: Peers,
    cmd: ChatCommand,
    resolved: routing_pb2.ResolveResponse,
    endpoint: routing_pb2.Endpoint,
    error: DomainError,
    started: datetime,
) -> None:
    """A request refused for money gets a `rejected` receipt (nothing charged), so the
    history shows it; best effort: the refusal reaches the client either way."""
    route = resolved.route
    receipt = usage_pb2.Receipt(
        request_id=cmd.request_id,
        account_id=resolved.principal.account_id,
        project_id=resolved.principal.project_id,
        key_id=resolved.principal.key_id,
        selected_model=resolved.selected_model or str(cmd.body.get("model")),
        upstream_model=route.upstream_model,
        route_kind=route.kind,
        bucket=route.bucket,
        prices=route.prices,
        status=usage_pb2.RECEIPT_STATUS_REJECTED,
        trace_id=cmd.trace_id,
        catalog_version=resolved.catalog_version,
        endpoint=ENDPOINT_NAME[endpoint],
        run_id=cmd.run_id,
        error_code=error.reason.value.lower(),
    )
    receipt.started_at.CopyFrom(timestamp(started))
    receipt.finished_at.CopyFrom(timestamp(datetime.now(UTC)))
    try:
        await peers.usage_client.record_receipt(receipt)
    except DomainError as failure:
        log.warning("rejected receipt not recorded: %s", failure.reason.value)


def insufficient(bucket: Bucket, available: Money, worst: Money) -> DomainError:
    other = "official" if bucket is Bucket.ROUTED else "routed"
    return DomainError(
        Reason.INSUFFICIENT_BALANCE,
        f"{bucket.label} too low: {format_amount(available.micros, bucket)} available, "
        f"this request may cost up to {format_amount(worst.micros, bucket)}. "
        f"Top up the {bucket.label} or use `model@{other}`.",
        {
            "bucket": bucket.value,
            "available_micros": str(available.micros),
            "requested_micros": str(worst.micros),
        },
    )


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "`model` is required: a model id from GET /v1/models.",
            {"param": "model"},
        )
    return model


def _require_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "`messages` must be a non-empty list of chat messages.",
            {"param": "messages"},
        )


async def prepare(peers: Peers, cmd: ChatCommand, endpoint: routing_pb2.Endpoint) -> Prepared:
    """Validate, resolve the route, plan the worst case and hold it."""
    started = datetime.now(UTC)
    model = _require_model(cmd.body)
    if endpoint == CHAT:
        _require_messages(cmd.body)
    resolved = await resolve(
        peers,
        cmd.api_key,
        model,
        cmd.client_ip,
        cmd.request_id,
        endpoint,
        request_shape(cmd.body),
    )
    route = resolved.route
    price = price_from_proto(bucket_from_proto(route.bucket), route.prices)
    plan = plan_for(cmd, endpoint, resolved, price)
    account_id = resolved.principal.account_id
    budget: Budget | None = None
    try:
        if cmd.run_id:
            hold, plan = await draw_from_run(peers, account_id, price, plan, cmd)
        elif drawn := await draw_from_budget(
            peers, account_id, price, plan, cmd, request_bound_s(route)
        ):
            hold, budget = drawn
        else:
            metrics.BUDGET_DRAWS.labels("hold").inc()
            hold, plan = await place_hold(peers, account_id, price, plan, cmd, hold_ttl(route))
    except DomainError as error:
        report_outcome(peers, resolved, cmd.request_id, [], None)  # ends the lease
        if error.reason is Reason.INSUFFICIENT_BALANCE:
            if peers.budgets is not None and not cmd.run_id:
                peers.budgets.refused(account_id, price.bucket)
            await record_rejected(peers, cmd, resolved, endpoint, error, started)
        raise
    body = upstream_body(cmd, endpoint, route, plan)
    return Prepared(cmd, endpoint, resolved, price, plan, hold, body, started, budget=budget)


def plan_for(
    cmd: ChatCommand,
    endpoint: routing_pb2.Endpoint,
    resolved: routing_pb2.ResolveResponse,
    price: Price,
) -> Plan:
    if endpoint == CHAT:
        return plan_chat(cmd.body, price, resolved.max_output_tokens)
    return plan_embeddings(cmd.body, price)


def request_bound_s(route: routing_pb2.Route) -> int:
    """How long a request on the route may run: every channel's total timeout, and a
    margin."""
    return sum((c.total_timeout_ms or 60_000) for c in route.channels) // 1000 + HOLD_MARGIN_S


def hold_ttl(route: routing_pb2.Route) -> int:
    """A request's own hold outlives the request, and then its queued finish's wait."""
    return request_bound_s(route) + FINISH_MARGIN_S


def upstream_body(
    cmd: ChatCommand, endpoint: routing_pb2.Endpoint, route: routing_pb2.Route, plan: Plan
) -> dict[str, Any]:
    body = dict(cmd.body)
    body["model"] = route.upstream_model
    if endpoint == CHAT and plan.output_cap_set_by_gateway:
        body["max_tokens"] = plan.max_output_tokens
    return body


def channels_to_try(p: Prepared) -> list[routing_pb2.Channel]:
    return list(p.route.channels)[: max(p.route.retry.max_attempts, 1)]


def route_attempt(
    route: routing_pb2.Route, hold_id: str, outcome: str, channel_attempts: int
) -> usage_pb2.RouteAttempt:
    return usage_pb2.RouteAttempt(
        route_kind=route.kind,
        bucket=route.bucket,
        upstream_model=route.upstream_model,
        prices=route.prices,
        hold_id=hold_id,
        outcome=outcome,
        channel_attempts=channel_attempts,
    )


def may_fall_back(p: Prepared, attempts: list[Attempt]) -> bool:
    """Every allowed channel of the route failed before the first byte, for a reason the
    route retries on, and the key allowed other routes (a run's requests stay on the
    run's bucket)."""
    return (
        not p.cmd.run_id
        and bool(attempts)
        and attempts[-1].outcome != "ok"
        and retryable(attempts[-1].outcome, list(p.route.retry.retry_on))
        and p.next_fallback < len(p.resolved.fallback_routes)
    )


async def fall_back(peers: Peers, p: Prepared, attempts: list[Attempt]) -> bool:
    """Move the request to the next route the key allows: hold its worst case on that
    route's bucket at its prices first (its own idempotency key, the same request id),
    then release the hold of the route left behind (nothing is charged for it). A route
    whose bucket cannot pay is skipped (listed, no hold). False when no route is left:
    the request then ends on the route it is on."""
    account_id = p.resolved.principal.account_id
    while p.next_fallback < len(p.resolved.fallback_routes):
        route: routing_pb2.Route = p.resolved.fallback_routes[p.next_fallback]
        p.next_fallback += 1
        price = price_from_proto(bucket_from_proto(route.bucket), route.prices)
        plan = plan_for(p.cmd, p.endpoint, p.resolved, price)
        key = f"{p.cmd.request_id}/route-{p.next_fallback + 1}"
        try:
            hold, plan = await place_hold(
                peers, account_id, price, plan, p.cmd, hold_ttl(route), key
            )
        except DomainError as error:
            if error.reason is not Reason.INSUFFICIENT_BALANCE:
                raise
            p.route_attempts.append(route_attempt(route, "", "insufficient_balance", 0))
            continue
        left = p.route
        if p.budget is not None:
            p.end_draw(peers)  # nothing taken from the budget for the route left behind
        else:
            await peers.wallet_client.release(
                p.hold.hold_id,
                reason=f"fallback_to_{route_kind_from_proto(route.kind)}",
                account_id=account_id,
            )
        on_left = len(attempts) - p.earlier_attempts
        p.route_attempts.append(route_attempt(left, p.hold.hold_id, "fell_back", on_left))
        p.earlier_attempts = len(attempts)
        log.info(
            "request %s falls back from the %s route to the %s route",
            p.cmd.request_id,
            route_kind_from_proto(left.kind),
            route_kind_from_proto(route.kind),
        )
        p.fallback_route = route
        p.price, p.plan, p.hold = price, plan, hold
        p.upstream_body = upstream_body(p.cmd, p.endpoint, route, plan)
        return True
    return False


def new_receipt(p: Prepared, attempts: list[Attempt]) -> usage_pb2.Receipt:
    receipt = usage_pb2.Receipt(
        request_id=p.cmd.request_id,
        account_id=p.resolved.principal.account_id,
        project_id=p.resolved.principal.project_id,
        key_id=p.resolved.principal.key_id,
        selected_model=p.resolved.selected_model or str(p.cmd.body.get("model")),
        upstream_model=p.route.upstream_model,
        route_kind=p.route.kind,
        bucket=p.route.bucket,
        attempts=[
            usage_pb2.Attempt(channel_id=a.channel_id, outcome=a.outcome, latency_ms=a.latency_ms)
            for a in attempts
        ],
        prices=price_to_proto(p.price),
        hold_id=p.hold.hold_id,
        trace_id=p.cmd.trace_id,
        catalog_version=p.resolved.catalog_version,
        endpoint=ENDPOINT_NAME[p.endpoint],
        fallback_used=len(attempts) > 1 or p.fell_back,
        run_id=p.cmd.run_id,
    )
    if p.route_attempts:
        receipt.route_attempts.extend(p.route_attempts)
        receipt.route_attempts.append(
            route_attempt(p.route, p.hold.hold_id, "final", len(attempts) - p.earlier_attempts)
        )
    receipt.started_at.CopyFrom(timestamp(p.started))
    return receipt


RECEIPT_STATUS = {
    Status.SUCCEEDED: usage_pb2.RECEIPT_STATUS_SUCCEEDED,
    Status.FAILED: usage_pb2.RECEIPT_STATUS_FAILED,
    Status.PARTIAL: usage_pb2.RECEIPT_STATUS_PARTIAL,
}


async def finish(
    peers: Peers,
    p: Prepared,
    attempts: list[Attempt],
    rule: Rule,
    reported: Usage | None,
    counted: Usage,
    error_code: str = "",
) -> tuple[usage_pb2.Receipt, Money]:
    """Apply the settlement table, then finish: the charge (or the release) and the
    receipt durably queued, or done (a run's request). Only then may the client see
    the charge. The outcome report to routing (channel attempts, the charge, the
    lease's end) leaves after, off the answer's path."""
    outcome = settle(
        rule,
        p.price,
        p.held,
        max_output_tokens=p.plan.max_output_tokens * p.plan.choices,
        reported=reported,
        counted=counted,
        charge_policy=charge_policy_name(p.route.charge_policy),
    )
    charged: Money | None = None
    receipt = new_receipt(p, attempts)
    try:
        if p.cmd.run_id:
            # A run's request: the run's hold pays; the receipt ends the draw (usage).
            receipt, charged = await finish_run_request(peers, receipt, outcome, rule, error_code)
        else:
            receipt, charged = await finish_request(peers, p, receipt, outcome, rule, error_code)
        return receipt, charged
    finally:
        report_outcome(peers, p.resolved, p.cmd.request_id, attempts, charged)


async def record_receipt(peers: Peers, receipt: usage_pb2.Receipt) -> None:
    """Record the receipt of a request whose charge (or release) is already done. If
    the usage service cannot be reached (after the client's retries), the receipt
    waits in the gateway's queue and the request is answered: its charge is recorded
    and its receipt durably queued. Only if that fails too is the request refused, and
    then with the truth: the charge stands, so it must not be sent again."""
    try:
        await peers.usage_client.record_receipt(receipt)
        return
    except DomainError as error:
        if error.reason is not Reason.SERVICE_UNAVAILABLE:
            raise
        unreachable = error
    queue = peers.receipt_queue
    try:
        if queue is None:
            raise unreachable
        await queue.put(
            receipt.request_id,
            receipt.SerializeToString(),
            account_id=receipt.account_id,
            hold_id=receipt.hold_id,
            traceparent=current_traceparent(),
        )
    except Exception as failure:
        raise receipt_not_recorded(receipt) from failure
    metrics.RECEIPTS_QUEUED.inc()
    log.warning("usage unreachable: receipt of %s queued for delivery", receipt.request_id)


def receipt_not_recorded(receipt: usage_pb2.Receipt) -> DomainError:
    bucket = bucket_from_proto(receipt.bucket)
    if receipt.charge_micros:
        story = (
            f"{format_amount(receipt.charge_micros, bucket)} was taken from {bucket.label} "
            f"(ledger entry {receipt.entry_id}), but its receipt could not be recorded "
            "right now. Do not send it again; the ledger shows the charge."
        )
    else:
        story = (
            "nothing was charged, but its receipt could not be recorded right now. "
            "You may send it again."
        )
    return DomainError(
        Reason.SERVICE_UNAVAILABLE,
        f"Request {receipt.request_id} ran and {story}",
        {"request_id": receipt.request_id, "charge_micros": str(receipt.charge_micros)},
    )


def charged_anyway(error: DomainError) -> bool:
    """A refusal that comes after a charge was taken (`receipt_not_recorded`, or an
    upstream failure the route's policy charges for): the request must not run again
    under the same Idempotency-Key."""
    return (error.metadata or {}).get("charge_micros", "0") not in ("", "0")


def fill_receipt(
    receipt: usage_pb2.Receipt,
    outcome: Settlement,
    rule: Rule,
    error_code: str,
    charge: Money,
) -> None:
    """The receipt's tokens, charge, status and rule, as the settlement decided."""
    if outcome.usage is not None:
        receipt.prompt_tokens = outcome.usage.prompt_tokens
        receipt.completion_tokens = outcome.usage.completion_tokens
        receipt.cached_tokens = outcome.usage.cached_tokens
        receipt.tokens_reported = outcome.usage.reported
    receipt.charge_micros = charge.micros
    receipt.status = RECEIPT_STATUS[outcome.status]
    receipt.error_code = error_code
    receipt.settlement_rule = rule.value
    receipt.finished_at.CopyFrom(timestamp(datetime.now(UTC)))


async def finish_request(
    peers: Peers,
    p: Prepared,
    receipt: usage_pb2.Receipt,
    outcome: Settlement,
    rule: Rule,
    error_code: str,
) -> tuple[usage_pb2.Receipt, Money]:
    """Queue the request's finish durably, then let the client see it: the receipt,
    with what is left to do with the hold (its part of a budget captured, its own hold
    settled for the charge, or released) and the ledger entry id the wallet will give
    the charge (derived from the hold, `tokenforge.holds`). The relay does the wallet's
    side, then records the receipt. If the queue cannot take it, both are done now."""
    charge = outcome.charge
    if outcome.usage is not None and outcome.capped_at_hold:
        error_code = error_code or "charge_capped_at_hold"
    if p.budget is not None:
        finish = PART
        entry_id = part_entry_id(receipt.hold_id, receipt.request_id)
    else:
        finish = SETTLE if outcome.usage is not None else RELEASE
        entry_id = settle_entry_id(receipt.hold_id)
    receipt.entry_id = str(entry_id) if charge.micros > 0 else ""
    fill_receipt(receipt, outcome, rule, error_code, charge)
    try:
        await queue_finish(peers, receipt, finish)
    except asyncio.CancelledError:
        p.end_draw(peers, charge.micros)  # the insert may still commit: counted as spent
        raise
    except Exception as failure:  # noqa: BLE001 - the finish goes the direct way
        log.warning("finish of %s not queued (%r); finishing now", receipt.request_id, failure)
        try:
            await finish_hold(peers, receipt, finish)
        except BaseException:
            p.end_draw(peers, charge.micros)  # it may have been taken: counted as spent
            raise
        taken = Money(receipt.charge_micros, charge.bucket)
        p.end_draw(peers, taken.micros)
        count_finish(p, outcome, rule, taken)
        await record_receipt(peers, receipt)
        return receipt, taken
    p.end_draw(peers, charge.micros)
    count_finish(p, outcome, rule, charge)
    return receipt, charge


async def queue_finish(peers: Peers, receipt: usage_pb2.Receipt, finish: str) -> None:
    """One durable insert in the gateway's schema (shared by the finishes that arrive
    together), in the request's trace for the relay to continue."""
    if peers.receipt_queue is None:
        raise RuntimeError("the gateway has no database to queue finishes in")
    await peers.receipt_queue.put(
        receipt.request_id,
        receipt.SerializeToString(),
        account_id=receipt.account_id,
        hold_id=receipt.hold_id,
        finish=finish,
        traceparent=current_traceparent(),
    )


def count_finish(p: Prepared, outcome: Settlement, rule: Rule, charge: Money) -> None:
    metrics.RECEIPTS.labels(outcome.status.value, rule.value).inc()
    if charge.micros:
        metrics.CHARGES.labels(charge.bucket.value, route_kind_from_proto(p.route.kind)).inc(
            charge.micros
        )


async def finish_run_request(
    peers: Peers,
    receipt: usage_pb2.Receipt,
    outcome: Settlement,
    rule: Rule,
    error_code: str,
) -> tuple[usage_pb2.Receipt, Money]:
    """Take the charge from the run's hold as this request's own ledger row (wallet
    CapturePart), then record the receipt naming that row: usage adds the charge to
    the run in the same transaction. If the run's hold ended first (the run was closed
    or expired under the request), nothing was taken and the request is recorded with
    no charge."""
    charge: Money = outcome.charge
    if charge.micros > 0:
        try:
            captured = await peers.wallet_client.capture_part(
                receipt.hold_id,
                charge.micros,
                receipt.request_id,
                account_id=receipt.account_id,
                trace_id=receipt.trace_id,
            )
            receipt.entry_id = captured.entry.entry_id
        except DomainError as error:
            if error.reason not in (Reason.HOLD_NOT_OPEN, Reason.HOLD_EXPIRED):
                raise
            charge = Money(0, charge.bucket)
            error_code = "run_settled_first"
    fill_receipt(receipt, outcome, rule, error_code, charge)
    try:
        await record_receipt(peers, receipt)
    except DomainError as error:
        if error.reason is not Reason.HOLD_NOT_OPEN:
            raise
        receipt.charge_micros = 0
        receipt.error_code = "run_settled_first"
        charge = Money(0, charge.bucket)
        await record_receipt(peers, receipt)
    return receipt, charge


def failure_rule(attempts: list[Attempt]) -> Rule:
    if attempts and attempts[-1].outcome == "timeout":
        return Rule.TIMEOUT_BEFORE_FIRST_BYTE
    return Rule.ERROR_BEFORE_FIRST_BYTE


def upstream_failed(p: Prepared, attempts: list[Attempt], charged: Money) -> DomainError:
    tried = ", ".join(f"{a.channel_id}: {a.outcome}" for a in attempts) or "no channel"
    timed_out = failure_rule(attempts) is Rule.TIMEOUT_BEFORE_FIRST_BYTE
    charge_words = (
        "Nothing was charged"
        if charged.micros == 0
        else f"Charged {format_amount(charged.micros, charged.bucket)} by the route's policy"
    )
    return DomainError(
        Reason.UPSTREAM_TIMEOUT if timed_out else Reason.UPSTREAM_FAILED,
        f"The upstream did not answer ({tried}). {charge_words} "
        f"(if the request fails: {policy_words(p.route.charge_policy)}). Try again.",
        # A charge taken by the policy keeps the Idempotency-Key (see charged_anyway).
        {"request_id": p.cmd.request_id, "charge_micros": str(charged.micros)},
    )


async def complete(
    peers: Peers, upstream: Upstream, cmd: ChatCommand, endpoint: routing_pb2.Endpoint
) -> ChatOutcome:
    """A non-streaming chat completion or embeddings request."""
    p = await prepare(peers, cmd, endpoint)
    try:
        return await complete_prepared(peers, upstream, p)
    finally:
        p.end_draw(peers)  # cut short (the client went away): nothing was charged


async def complete_prepared(peers: Peers, upstream: Upstream, p: Prepared) -> ChatOutcome:
    endpoint = p.endpoint
    attempts: list[Attempt] = []
    answer: UpstreamAnswer | None = None
    while True:
        for channel in channels_to_try(p):
            answer = await upstream.post_json(channel, ENDPOINT_PATH[endpoint], p.upstream_body)
            attempts.append(answer.attempt)
            if answer.attempt.outcome == "ok" or not retryable(
                answer.attempt.outcome, list(p.route.retry.retry_on)
            ):
                break
        if not may_fall_back(p, attempts) or not await fall_back(peers, p, attempts):
            break
    reported = usage_from_response(answer.payload) if answer and answer.payload else None
    if answer is None or answer.attempt.outcome != "ok":
        code = attempts[-1].outcome if attempts else "no_channel"
        counted = counted_usage(p.cmd.body, 0)
        _, charged = await finish(
            peers, p, attempts, failure_rule(attempts), reported, counted, code
        )
        raise upstream_failed(p, attempts, charged)
    rule = Rule.FINISHED_WITH_USAGE if reported else Rule.FINISHED_WITHOUT_USAGE
    counted = counted_usage(p.cmd.body, answer_text_tokens(answer.payload or {}))
    receipt, charge = await finish(peers, p, attempts, rule, reported, counted)
    payload = dict(answer.payload or {})
    payload["model"] = receipt.selected_model
    payload["usage"] = {**payload.get("usage", {}), **cost_fields(charge)}
    payload["receipt"] = receipt_summary(receipt)
    return ChatOutcome(200, payload, receipt, receipt_headers(receipt))


def answer_text_tokens(payload: dict[str, Any]) -> int:
    """Counted completion tokens of a finished answer: about four characters a token."""
    chars = 0
    for choice in payload.get("choices") or []:
        message = choice.get("message") or {}
        chars += len(str(message.get("content") or ""))
        if message.get("tool_calls"):
            chars += len(orjson.dumps(message["tool_calls"]))
    return -(-chars // 4)


def annotate_span(span: trace.Span, receipt: usage_pb2.Receipt, operation: str) -> None:
    """The request span's GenAI semantic-convention attributes, with the route, the
    bucket and the charge (an operator finds the money story in the trace)."""
    span.set_attributes(
        {
            "gen_ai.system": "openai",
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": receipt.selected_model,
            "gen_ai.response.model": receipt.upstream_model,
            "gen_ai.usage.input_tokens": receipt.prompt_tokens,
            "gen_ai.usage.output_tokens": receipt.completion_tokens,
            "tokenforge.request_id": receipt.request_id,
            "tokenforge.route": route_kind_from_proto(receipt.route_kind),
            "tokenforge.bucket": bucket_from_proto(receipt.bucket).value,
            "tokenforge.charge_micros": receipt.charge_micros,
            "tokenforge.receipt_status": usage_pb2.ReceiptStatus.Name(receipt.status),
        }
    )


@dataclass
class ChatStream:
    """An open upstream stream, passed through chunk by chunk, settled at its end."""

    peers: Peers
    prepared: Prepared
    response: UpstreamStream
    attempts: list[Attempt]
    headers: dict[str, str]
    client_wants_usage: bool
    settled: bool = False
    opened_at: float = field(default_factory=time.monotonic)
    # The HTTP request's span (current when the stream opens), annotated at the end.
    span: trace.Span = field(default_factory=trace.get_current_span)

    async def events(self) -> AsyncIterator[bytes]:
        p = self.prepared
        usage: Usage | None = None
        usage_chunk: dict[str, Any] | None = None
        content_chunks = 0
        done = False
        cut = False
        try:
            try:
                async for line in self.response.lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = orjson.loads(data)
                    if isinstance(chunk.get("usage"), dict):
                        usage = usage_from_response(chunk)
                        if not chunk.get("choices"):
                            usage_chunk = chunk
                            continue
                    for choice in chunk.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            if content_chunks == 0:
                                metrics.UPSTREAM_TTFT.labels(self.attempts[-1].channel_id).observe(
                                    time.monotonic() - self.opened_at
                                )
                            content_chunks += 1
                    chunk["model"] = p.resolved.selected_model
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            except (*STREAM_ERRORS, orjson.JSONDecodeError) as error:
                log.warning("upstream stream broke: %s", type(error).__name__)
                cut = True
            counted = counted_usage(p.cmd.body, content_chunks)
            if done and not cut:
                rule = Rule.FINISHED_WITH_USAGE if usage else Rule.FINISHED_WITHOUT_USAGE
            else:
                rule = Rule.ERROR_MID_STREAM
            receipt, charge = await finish(
                self.peers,
                p,
                self.attempts,
                rule,
                usage,
                counted,
                "" if done and not cut else "upstream_cut",
            )
            self.settled = True
            annotate_span(self.span, receipt, "chat")
            charged = receipt.prompt_tokens, receipt.completion_tokens
            if self.client_wants_usage:
                final = usage_chunk or {
                    "id": f"chatcmpl-{p.cmd.request_id}",
                    "object": "chat.completion.chunk",
                    "choices": [],
                }
                final["model"] = receipt.selected_model
                final["usage"] = {
                    "prompt_tokens": charged[0],
                    "completion_tokens": charged[1],
                    "total_tokens": charged[0] + charged[1],
                    **(usage_chunk or {}).get("usage", {}),
                    **cost_fields(charge),
                }
                final["receipt"] = receipt_summary(receipt)
                yield b"data: " + orjson.dumps(final) + b"\n\n"
            if cut:
                notice = {
                    "error": {
                        "message": "The upstream stream ended early; you were charged only "
                        "for what was generated.",
                        "type": "api_error",
                        "code": "upstream_cut",
                    }
                }
                yield b"data: " + orjson.dumps(notice) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            await self.response.close()
            if not self.settled:
                # The client went away mid-stream: settle what was generated, off the
                # cancelled task, and say `partial` on the receipt.
                task = asyncio.create_task(
                    finish(
                        self.peers,
                        p,
                        self.attempts,
                        Rule.CLIENT_DISCONNECT,
                        usage,
                        counted_usage(p.cmd.body, content_chunks),
                        "client_disconnected",
                    )
                )
                _background.add(task)
                task.add_done_callback(_background.discard)


async def start_chat_stream(peers: Peers, upstream: Upstream, cmd: ChatCommand) -> ChatStream:
    """Resolve, hold, and open the upstream stream, moving to backup channels on
    retryable failures while nothing has reached the client yet."""
    p = await prepare(peers, cmd, CHAT)
    try:
        return await open_chat_stream(peers, upstream, p)
    except BaseException:
        p.end_draw(peers)  # no stream: finished (a no-op then) or cut short
        raise


async def open_chat_stream(peers: Peers, upstream: Upstream, p: Prepared) -> ChatStream:
    options = p.upstream_body.get("stream_options")
    client_wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    attempts: list[Attempt] = []
    while True:
        p.upstream_body["stream_options"] = {**(options or {}), "include_usage": True}
        for channel in channels_to_try(p):
            response, attempt = await open_stream(
                upstream, channel, "/chat/completions", p.upstream_body
            )
            attempts.append(attempt)
            if response is not None:
                receipt = new_receipt(p, attempts)
                return ChatStream(
                    peers,
                    p,
                    response,
                    attempts,
                    receipt_headers(receipt, final=False),
                    client_wants_usage,
                )
            if not retryable(attempt.outcome, list(p.route.retry.retry_on)):
                break
        # Nothing has reached the client yet: another route may still be tried.
        if not may_fall_back(p, attempts) or not await fall_back(peers, p, attempts):
            break
    code = attempts[-1].outcome if attempts else "no_channel"
    _, charged = await finish(
        peers, p, attempts, failure_rule(attempts), None, counted_usage(p.cmd.body, 0), code
    )
    raise upstream_failed(p, attempts, charged)


def policy_words(policy: int) -> str:
    words = {
        routing_pb2.CHARGE_POLICY_PROMPT_ONLY: "the prompt is charged",
        routing_pb2.CHARGE_POLICY_AS_REPORTED: "what the upstream reports is charged",
    }
    return str(words.get(policy, "failed requests are free"))  # type: ignore[call-overload]


def cost_fields(charge: Money) -> dict[str, Any]:
    """`usage.cost` as an exact decimal string (no float near money) with its unit."""
    text = format_amount(charge.micros, charge.bucket)
    amount, symbol = text.rsplit(" ", 1)
    return {
        "cost": amount,
        "cost_micros": charge.micros,
        "cost_currency": symbol,
        "cost_bucket": charge.bucket.value,
    }


def receipt_summary(receipt: usage_pb2.Receipt) -> dict[str, Any]:
    bucket = bucket_from_proto(receipt.bucket)
    return {
        "request_id": receipt.request_id,
        "route": route_kind_from_proto(receipt.route_kind),
        "bucket": bucket.value,
        "bucket_label": bucket.label,
        "upstream_model": receipt.upstream_model,
        "charge": format_amount(receipt.charge_micros, bucket),
        "charge_micros": receipt.charge_micros,
        "ledger_entry_id": receipt.entry_id,
        "fallback_used": receipt.fallback_used,
        "attempts": [
            {"channel": a.channel_id, "outcome": a.outcome, "latency_ms": a.latency_ms}
            for a in receipt.attempts
        ],
        "route_attempts": route_attempts_json(receipt),
        "prices": {
            "input_per_million": format_amount(receipt.prices.input_per_million_micros, bucket),
            "cached_input_per_million": format_amount(
                receipt.prices.cached_input_per_million_micros, bucket
            ),
            "output_per_million": format_amount(receipt.prices.output_per_million_micros, bucket),
        },
        "settlement_rule": receipt.settlement_rule,
        "receipt_url": f"/v1/usage/{receipt.request_id}",
        "trace_id": receipt.trace_id,
    }


def receipt_headers(receipt: usage_pb2.Receipt, final: bool = True) -> dict[str, str]:
    """Route and bucket are known before the first byte; the charge only at the end."""
    bucket = bucket_from_proto(receipt.bucket)
    headers = {
        "x-tokenforge-route": route_kind_from_proto(receipt.route_kind),
        "x-tokenforge-bucket": bucket.value,
        "x-tokenforge-upstream-model": receipt.upstream_model,
        "x-tokenforge-receipt": f"/v1/usage/{receipt.request_id}",
    }
    left = [a for a in receipt.route_attempts if a.outcome == "fell_back"]
    if left:
        # The route (and bucket) that paid is the one above; this names the way here.
        path = [route_kind_from_proto(a.route_kind) for a in left]
        headers["x-tokenforge-fallback-route"] = "->".join(
            [*path, route_kind_from_proto(receipt.route_kind)]
        )
    if final:
        headers["x-tokenforge-charge"] = format_amount(receipt.charge_micros, bucket)
        headers["x-tokenforge-charge-micros"] = str(receipt.charge_micros)
    return headers


@dataclass
class Preview:
    """The "before" list of a request, without calling upstream."""

    resolved: routing_pb2.ResolveResponse
    plan: Plan
    price: Price
    available: Money


async def preview(peers: Peers, api_key: str, body: dict[str, Any], request_id: str) -> Preview:
    model = _require_model(body)
    endpoint = EMBEDDINGS if "input" in body else CHAT
    resolved = await resolve(
        peers, api_key, model, "", request_id, endpoint, request_shape(body), preview=True
    )
    bucket = bucket_from_proto(resolved.route.bucket)
    price = price_from_proto(bucket, resolved.route.prices)
    if endpoint == CHAT:
        plan = plan_chat(body, price, resolved.max_output_tokens)
    else:
        plan = plan_embeddings(body, price)
    balances = await peers.wallet.call(
        peers.wallet_stub.GetBalances,
        wallet_pb2.GetBalancesRequest(account_id=resolved.principal.account_id),
        request_id=request_id,
    )
    available = next(
        (b.available_micros for b in balances.balances if b.bucket == resolved.route.bucket), 0
    )
    return Preview(resolved, plan, price, Money(available, bucket))


def charge_policy_name(policy: int) -> str:
    names = {
        routing_pb2.CHARGE_POLICY_PROMPT_ONLY: "prompt_only",
        routing_pb2.CHARGE_POLICY_AS_REPORTED: "as_reported",
    }
    return str(names.get(policy, "none"))  # type: ignore[call-overload]
