"""The gateway's use cases: one request through resolve, hold, upstream, settle, receipt.

Every step is keyed by the request id the gateway made first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Attempt, Upstream, retryable
from services.gateway.domain.planning import (
    Plan,
    charge_for,
    plan_chat,
    shrink_to_budget,
    usage_from_response,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket, Money, Price, format_amount
from tokenforge.routing.v1 import routing_pb2
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


@dataclass
class ChatCommand:
    request_id: str
    api_key: str
    body: dict[str, Any]
    trace_id: str
    client_ip: str = ""


@dataclass
class ChatOutcome:
    """What the client gets back: the upstream body (or an error) and the receipt."""

    status: int
    payload: dict[str, Any]
    receipt: usage_pb2.Receipt
    headers: dict[str, str] = field(default_factory=dict)


async def resolve(
    peers: Peers,
    api_key: str,
    model: str,
    client_ip: str,
    request_id: str,
    endpoint: routing_pb2.Endpoint,
) -> routing_pb2.ResolveResponse:
    request = routing_pb2.ResolveRequest(
        api_key=api_key,
        model=model,
        endpoint=endpoint,
        client_ip=client_ip,
    )
    return await peers.routing.call(peers.routing_stub.Resolve, request, request_id=request_id)


async def place_hold(
    peers: Peers, account_id: str, price: Price, plan: Plan, cmd: ChatCommand, ttl_s: int
) -> tuple[wallet_pb2.Hold, Plan]:
    """Hold the worst case; when the gateway chose the output cap, lower it to what the
    available balance pays for rather than refuse."""
    for _ in range(2):
        request = wallet_pb2.HoldRequest(
            account_id=account_id,
            bucket=bucket_to_proto(price.bucket),
            amount_micros=plan.worst_case.micros,
            ttl_seconds=ttl_s,
            request_id=cmd.request_id,
            trace_id=cmd.trace_id,
        )
        try:
            response = await peers.wallet.call(
                peers.wallet_stub.Hold, request, request_id=cmd.request_id
            )
            return response.hold, plan
        except DomainError as error:
            if error.reason is not Reason.INSUFFICIENT_BALANCE:
                raise
            available = Money(
                int((error.metadata or {}).get("available_micros", "0")), price.bucket
            )
            smaller = shrink_to_budget(plan, price, available)
            if smaller is None or smaller == plan:
                raise _insufficient(price.bucket, available, plan.worst_case) from None
            # A refused hold leaves no record, so the same request id may ask again.
            plan = smaller
    raise _insufficient(price.bucket, Money(0, price.bucket), plan.worst_case)


def _insufficient(bucket: Bucket, available: Money, worst: Money) -> DomainError:
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


async def complete_chat(peers: Peers, upstream: Upstream, cmd: ChatCommand) -> ChatOutcome:
    started = datetime.now(UTC)
    model = cmd.body.get("model")
    if not isinstance(model, str) or not model:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "`model` is required: a model id from GET /v1/models.",
            {"param": "model"},
        )
    messages = cmd.body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "`messages` must be a non-empty list of chat messages.",
            {"param": "messages"},
        )
    if cmd.body.get("stream"):
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "Streaming is not available yet on this gateway; send `stream: false`.",
            {"param": "stream"},
        )

    resolved = await resolve(
        peers,
        cmd.api_key,
        model,
        cmd.client_ip,
        cmd.request_id,
        routing_pb2.ENDPOINT_CHAT_COMPLETIONS,
    )
    route = resolved.route
    bucket = bucket_from_proto(route.bucket)
    price = price_from_proto(bucket, route.prices)
    plan = plan_chat(cmd.body, price, resolved.max_output_tokens)
    total_timeout_s = sum((c.total_timeout_ms or 60_000) for c in route.channels) // 1000
    hold, plan = await place_hold(
        peers, resolved.principal.account_id, price, plan, cmd, total_timeout_s + HOLD_MARGIN_S
    )
    held = Money(hold.amount_micros, bucket)

    body = dict(cmd.body)
    body["model"] = route.upstream_model
    if plan.output_cap_set_by_gateway:
        body["max_tokens"] = plan.max_output_tokens
    attempts: list[Attempt] = []
    answer = None
    max_attempts = max(route.retry.max_attempts, 1)
    for channel in list(route.channels)[:max_attempts]:
        answer = await upstream.post_json(channel, "/chat/completions", body)
        attempts.append(answer.attempt)
        if answer.attempt.outcome == "ok" or not retryable(
            answer.attempt.outcome, list(route.retry.retry_on)
        ):
            break

    receipt = usage_pb2.Receipt(
        request_id=cmd.request_id,
        account_id=resolved.principal.account_id,
        project_id=resolved.principal.project_id,
        key_id=resolved.principal.key_id,
        selected_model=resolved.selected_model or model,
        upstream_model=route.upstream_model,
        route_kind=route.kind,
        bucket=route.bucket,
        attempts=[
            usage_pb2.Attempt(channel_id=a.channel_id, outcome=a.outcome, latency_ms=a.latency_ms)
            for a in attempts
        ],
        prices=price_to_proto(price),
        hold_id=hold.hold_id,
        trace_id=cmd.trace_id,
        catalog_version=resolved.catalog_version,
        endpoint="chat.completions",
        fallback_used=len(attempts) > 1,
    )
    receipt.started_at.CopyFrom(timestamp(started))

    usage = usage_from_response(answer.payload) if answer and answer.payload else None
    if answer is None or answer.attempt.outcome != "ok" or usage is None:
        await peers.wallet.call(
            peers.wallet_stub.Release,
            wallet_pb2.ReleaseRequest(hold_id=hold.hold_id, reason="upstream failed"),
            request_id=cmd.request_id,
        )
        receipt.status = usage_pb2.RECEIPT_STATUS_FAILED
        receipt.error_code = attempts[-1].outcome if attempts else "no_channel"
        receipt.finished_at.CopyFrom(timestamp(datetime.now(UTC)))
        await _record(peers, receipt)
        tried = ", ".join(f"{a.channel_id}: {a.outcome}" for a in attempts)
        raise DomainError(
            Reason.UPSTREAM_FAILED,
            f"The upstream did not answer ({tried}). Nothing was charged "
            f"(if the request fails: {_policy_words(route.charge_policy)}). Try again.",
            {"request_id": cmd.request_id},
        )

    charge, capped = charge_for(price, usage, held)
    settled = await peers.wallet.call(
        peers.wallet_stub.Settle,
        wallet_pb2.SettleRequest(
            hold_id=hold.hold_id, amount_micros=charge.micros, trace_id=cmd.trace_id
        ),
        request_id=cmd.request_id,
    )
    receipt.prompt_tokens = usage.prompt_tokens
    receipt.completion_tokens = usage.completion_tokens
    receipt.cached_tokens = usage.cached_tokens
    receipt.tokens_reported = usage.reported
    receipt.charge_micros = charge.micros
    receipt.entry_id = settled.entry.entry_id if settled.HasField("entry") else ""
    receipt.status = usage_pb2.RECEIPT_STATUS_SUCCEEDED
    if capped:
        receipt.error_code = "charge_capped_at_hold"
    receipt.finished_at.CopyFrom(timestamp(datetime.now(UTC)))
    await _record(peers, receipt)

    payload = dict(answer.payload or {})
    payload["model"] = receipt.selected_model
    payload["usage"] = {**payload.get("usage", {}), **cost_fields(charge)}
    payload["tokenforge"] = receipt_summary(receipt)
    return ChatOutcome(200, payload, receipt, receipt_headers(receipt))


async def _record(peers: Peers, receipt: usage_pb2.Receipt) -> None:
    await peers.usage.call(
        peers.usage_stub.RecordReceipt,
        usage_pb2.RecordReceiptRequest(receipt=receipt),
        request_id=receipt.request_id,
    )


def _policy_words(policy: int) -> str:
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
        "receipt_url": f"/v1/usage/{receipt.request_id}",
        "trace_id": receipt.trace_id,
    }


def receipt_headers(receipt: usage_pb2.Receipt) -> dict[str, str]:
    bucket = bucket_from_proto(receipt.bucket)
    return {
        "x-tokenforge-route": route_kind_from_proto(receipt.route_kind),
        "x-tokenforge-bucket": bucket.value,
        "x-tokenforge-charge": format_amount(receipt.charge_micros, bucket),
        "x-tokenforge-charge-micros": str(receipt.charge_micros),
        "x-tokenforge-receipt": f"/v1/usage/{receipt.request_id}",
    }


@dataclass
class Preview:
    """The "before" list of a request, without calling upstream."""

    resolved: routing_pb2.ResolveResponse
    plan: Plan
    price: Price
    available: Money


async def preview(peers: Peers, api_key: str, body: dict[str, Any], request_id: str) -> Preview:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "`model` is required: a model id from GET /v1/models."
        )
    endpoint = (
        routing_pb2.ENDPOINT_EMBEDDINGS
        if "input" in body
        else routing_pb2.ENDPOINT_CHAT_COMPLETIONS
    )
    resolved = await resolve(peers, api_key, model, "", request_id, endpoint)
    bucket = bucket_from_proto(resolved.route.bucket)
    price = price_from_proto(bucket, resolved.route.prices)
    plan = plan_chat(body, price, resolved.max_output_tokens)
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
