"""Stage 1, admit: validate the request, resolve its route (routing authenticates the
key and picks route, bucket, prices and channels) and plan its worst case.

Nothing is held yet: a request refused here costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.gateway.adapters.peers import Peers
from services.gateway.domain.commands import ChatCommand
from services.gateway.domain.planning import Plan, plan_chat, plan_embeddings, request_shape
from services.gateway.domain.protocols import OPENAI_CHAT, refusal
from services.gateway.domain.protocols.base import cannot_carry
from services.gateway.domain.settlement import FINISH_MARGIN_S
from services.gateway.domain.validation import validate_chat, validate_embeddings
from tokenforge.errors import DomainError, insufficient_balance
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.money import Bucket, Money, Price
from tokenforge.wire import bucket_from_proto, price_from_proto, timestamp

log = logging.getLogger("tokenforge.gateway.admit")

HOLD_MARGIN_S = 30
CHAT = routing_pb2.ENDPOINT_CHAT_COMPLETIONS
EMBEDDINGS = routing_pb2.ENDPOINT_EMBEDDINGS
ENDPOINT_PATH = {CHAT: "/chat/completions", EMBEDDINGS: "/embeddings"}
ENDPOINT_NAME = {CHAT: "chat.completions", EMBEDDINGS: "embeddings"}


@dataclass
class ChatOutcome:
    """What the client gets back: the upstream body and the receipt."""

    status: int
    payload: dict[str, Any]
    receipt: usage_pb2.Receipt
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Admitted:
    """A request validated, resolved and planned: what it may cost, and who pays."""

    cmd: ChatCommand
    endpoint: routing_pb2.Endpoint
    resolved: routing_pb2.ResolveResponse
    price: Price
    plan: Plan
    started: datetime

    @property
    def account_id(self) -> str:
        return str(self.resolved.principal.account_id)


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


def require_model(body: dict[str, Any]) -> str:
    """The model id of a body that passed validation (domain/validation.py)."""
    return str(body["model"])


async def admit(peers: Peers, cmd: ChatCommand, endpoint: routing_pb2.Endpoint) -> Admitted:
    """Validate (every problem a 400 naming its param, before anything is resolved,
    held or sent), resolve the route and plan the worst case."""
    started = datetime.now(UTC)
    if endpoint == CHAT:
        validate_chat(cmd.body)
    else:
        validate_embeddings(cmd.body)
    model = require_model(cmd.body)
    resolved = await resolve(
        peers,
        cmd.api_key,
        model,
        cmd.client_ip,
        cmd.request_id,
        endpoint,
        request_shape(cmd.body),
    )
    refuse_uncarried(cmd.body, endpoint, resolved)
    route = resolved.route
    price = price_from_proto(bucket_from_proto(route.bucket), route.prices)
    plan = plan_for(cmd.body, endpoint, resolved, price)
    return Admitted(cmd, endpoint, resolved, price, plan, started)


def route_protocols(resolved: routing_pb2.ResolveResponse) -> set[str]:
    """The protocols of every channel the request may go to (fallback routes too)."""
    return {
        channel.protocol or OPENAI_CHAT
        for route in (resolved.route, *resolved.fallback_routes)
        for channel in route.channels
    }


def refuse_uncarried(
    body: dict[str, Any], endpoint: routing_pb2.Endpoint, resolved: routing_pb2.ResolveResponse
) -> None:
    """Refuse, before anything is held, what a channel the request may go to (its
    route's, and the routes it may fall back to) cannot carry in its protocol."""
    protocols = route_protocols(resolved)
    if protocols == {OPENAI_CHAT}:
        return
    if endpoint != CHAT:
        other = sorted(protocols - {OPENAI_CHAT})[0]
        raise cannot_carry(other, "input", "embeddings")
    error = refusal(body, protocols)
    if error is not None:
        raise error


def plan_for(
    body: dict[str, Any],
    endpoint: routing_pb2.Endpoint,
    resolved: routing_pb2.ResolveResponse,
    price: Price,
) -> Plan:
    if endpoint == CHAT:
        return plan_chat(body, price, resolved.max_output_tokens)
    return plan_embeddings(body, price)


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


def insufficient(bucket: Bucket, available: Money, worst: Money) -> DomainError:
    other = "official" if bucket is Bucket.ROUTED else "routed"
    return insufficient_balance(
        bucket,
        available.micros,
        worst.micros,
        "this request may cost up to",
        f"Top up the {bucket.label} or use `model@{other}`.",
    )


async def record_rejected(peers: Peers, admitted: Admitted, error: DomainError) -> None:
    """A request refused for money gets a `rejected` receipt (nothing charged), so the
    history shows it; best effort: the refusal reaches the client either way."""
    cmd, resolved = admitted.cmd, admitted.resolved
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
        endpoint=ENDPOINT_NAME[admitted.endpoint],
        run_id=cmd.run_id,
        error_code=error.reason.value.lower(),
        client_format=cmd.client_format,
    )
    receipt.started_at.CopyFrom(timestamp(admitted.started))
    receipt.finished_at.CopyFrom(timestamp(datetime.now(UTC)))
    try:
        await peers.usage_client.record_receipt(receipt)
    except DomainError as failure:
        log.warning("rejected receipt not recorded: %s", failure.reason.value)
