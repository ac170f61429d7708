"""Run use cases: open (one wallet hold for the whole budget), close (release what
the run's hold still holds), and the sweeper that closes runs nobody closed. Requests
take a slice of a run in the reserve stage (flow/reserve.py, usage.ReserveFromRun)
and pay as a `RunSlice` (flow/reservation.py).

The ledger gets one request-charge row per charged request of the run: each request
takes its charge from the run's hold as a part of its own (wallet CapturePart, the
row carries the request id and the run's hold), and its receipt names that row. The
run has no aggregate row; its lines sum to what its hold captured, and usage adds
each line's charge to the run's `spent` in the same transaction that records it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.gateway.adapters.peers import Peers
from services.gateway.domain.runs import Estimate, parse_budget, parse_estimate
from services.gateway.flow.admit import CHAT, insufficient, resolve
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.holds import RUN_PREFIX
from tokenforge.money import Bucket, Money, Price
from tokenforge.wire import bucket_from_name, bucket_from_proto, bucket_to_proto, price_from_proto

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 900
MIN_TTL_S = 60
MAX_TTL_S = 3000
# The wallet hold outlives the run so the sweeper settles it first.
HOLD_MARGIN_S = 300
# How long a close waits for requests in flight to record their receipts.
CLOSE_WAIT_S = 15.0
SWEEP_EVERY_S = 5.0


@dataclass
class OpenedRun:
    run: usage_pb2.Run
    hold: wallet_pb2.Hold
    available_before: Money
    price: Price | None
    estimate: Estimate | None
    upstream_model: str = ""
    route_kind: int = 0


def _ttl(raw: Any) -> int:
    if raw is None:
        return DEFAULT_TTL_S
    if not isinstance(raw, int) or isinstance(raw, bool) or not MIN_TTL_S <= raw <= MAX_TTL_S:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"`ttl` is a whole number of seconds from {MIN_TTL_S} to {MAX_TTL_S}.",
            {"param": "ttl"},
        )
    return raw


async def open_run(
    peers: Peers,
    api_key: str,
    body: dict[str, Any],
    request_id: str,
    trace_id: str,
    client_ip: str = "",
) -> OpenedRun:
    """Resolve what pays (a model's route, or a bucket), size the budget, hold it."""
    ttl = _ttl(body.get("ttl"))
    model = body.get("model")
    price: Price | None = None
    upstream_model = ""
    route_kind = 0
    if isinstance(model, str) and model:
        resolved = await resolve(peers, api_key, model, client_ip, request_id, CHAT)
        principal = resolved.principal
        bucket = bucket_from_proto(resolved.route.bucket)
        price = price_from_proto(bucket, resolved.route.prices)
        model = resolved.selected_model or model
        upstream_model = resolved.route.upstream_model
        route_kind = resolved.route.kind
    else:
        if not isinstance(body.get("bucket"), str):
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "Name the `model` the run will use (or the `bucket` that pays).",
                {"param": "model"},
            )
        try:
            bucket = bucket_from_name(body["bucket"])
        except (KeyError, ValueError):
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "`bucket` is `credit` or `routed`.",
                {"param": "bucket"},
            ) from None
        principal = await peers.routing_client.authenticate(
            api_key, routing_pb2.SCOPE_INFERENCE, client_ip, request_id=request_id
        )
        model = ""
    estimate: Estimate | None = None
    if body.get("budget") is not None:
        budget = parse_budget(body["budget"], bucket)
    elif body.get("estimate") is not None:
        if price is None:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "An `estimate` needs the `model` whose prices size it.",
                {"param": "model"},
            )
        estimate = parse_estimate(body["estimate"])
        budget = estimate.budget(price)
    else:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            'Give the run a `budget` ("2.5") or an `estimate` '
            "({requests, prompt_tokens, max_tokens}).",
            {"param": "budget"},
        )
    balances = await peers.wallet_client.balances(principal.account_id)
    available = next(
        (b.available_micros for b in balances if bucket_from_proto(b.bucket) is bucket), 0
    )
    run_id = RUN_PREFIX + uuid.uuid4().hex
    try:
        hold = await peers.wallet_client.hold(
            principal.account_id,
            bucket,
            budget,
            run_id,
            ttl_seconds=ttl + HOLD_MARGIN_S,
            trace_id=trace_id,
        )
    except DomainError as error:
        if error.reason is Reason.INSUFFICIENT_BALANCE:
            raise insufficient(bucket, Money(available, bucket), Money(budget, bucket)) from None
        raise
    now = datetime.now(UTC)
    run = usage_pb2.Run(
        run_id=run_id,
        account_id=principal.account_id,
        project_id=principal.project_id,
        key_id=principal.key_id,
        bucket=bucket_to_proto(bucket),
        model=model,
        budget_micros=budget,
        hold_id=hold.hold_id,
        trace_id=trace_id,
    )
    run.created_at.FromDatetime(now)
    run.expires_at.FromDatetime(now + timedelta(seconds=ttl))
    try:
        stored = await peers.usage_client.open_run(run, request_id=request_id)
    except BaseException:
        await peers.wallet_client.release(hold.hold_id, reason="run_not_opened")
        raise
    return OpenedRun(
        stored,
        hold,
        Money(available, bucket),
        price,
        estimate,
        upstream_model,
        route_kind,
    )


async def settle_run(peers: Peers, run: usage_pb2.Run, request_id: str) -> usage_pb2.RunReceipt:
    """A closing run: wait (a little) for requests in flight, then release what the
    run's hold still holds (its requests' parts stay charged: a part taken before the
    release counts, one tried after it is refused), and record on the run what the
    hold captured."""
    deadline = asyncio.get_running_loop().time() + CLOSE_WAIT_S
    while run.reserved_micros > 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        run = await peers.usage_client.get_run(run.run_id, request_id=request_id)
    captured = 0
    try:
        # Releasing an expired hold answers it too (its parts stay, the rest is back).
        released = await peers.wallet_client.release(
            run.hold_id, reason="run_closed", account_id=run.account_id
        )
        captured = released.captured_micros
    except DomainError as error:
        # Settled by someone else (an operator): the reconciliation reports the run.
        if error.reason is not Reason.HOLD_NOT_OPEN:
            raise
        log.error("run %s: hold %s not released: %s", run.run_id, run.hold_id, error.message)
    return await peers.usage_client.finish_run(run.run_id, captured, request_id=request_id)


async def close_run(
    peers: Peers, account_id: str, run_id: str, request_id: str
) -> usage_pb2.RunReceipt:
    run = await peers.usage_client.close_run(account_id, run_id, request_id=request_id)
    if run.status in (usage_pb2.RUN_STATUS_CLOSED, usage_pb2.RUN_STATUS_EXPIRED):
        return await peers.usage_client.get_run_receipt(account_id, run_id, request_id=request_id)
    return await settle_run(peers, run, request_id)


async def sweep_runs(peers: Peers) -> int:
    """Close every run past its expiry (and runs a dead gateway left closing)."""
    runs = await peers.usage_client.expire_runs(limit=100)
    for run in runs:
        try:
            await settle_run(peers, run, f"sweep-{run.run_id}")
        except DomainError as error:
            log.warning("run %s not swept: %s", run.run_id, error.message)
    return len(runs)


async def run_sweeper(peers: Peers, every_s: float = SWEEP_EVERY_S) -> None:
    """Forever: expire forgotten runs and release their holds."""
    while True:
        try:
            await sweep_runs(peers)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the sweeper must outlive a failing peer
            log.warning("run sweeper: %s", type(error).__name__)
        await asyncio.sleep(every_s)


def bucket_of(run: usage_pb2.Run) -> Bucket:
    return bucket_from_proto(run.bucket)
