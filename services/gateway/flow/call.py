"""Stage 3, call: the route's channels in order (backups on retryable failures before
the first byte), and, when every allowed channel of the route failed before the first
byte and the API key allows other routes (Resolve answered `fallback_routes`), the next
route: a new hold on that route's bucket at its prices (its own idempotency key, the
same request id), then the reservation of the route left behind is given back; the
receipt lists every route tried (`route_attempts`) and names the route that paid.
No retry after the first byte has gone to the client.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Attempt, Upstream, UpstreamAnswer, retryable
from services.gateway.adapters.upstream_stream import UpstreamStream, open_stream
from services.gateway.domain.protocols import OPENAI_CHAT, protocol_for
from services.gateway.domain.settlement import Rule
from services.gateway.flow.admit import CHAT, ENDPOINT_PATH, hold_ttl, plan_for, upstream_body
from services.gateway.flow.ends import PeerEnds
from services.gateway.flow.reserve import HoldInDoubt, Prepared, give_back_in_doubt, take_hold
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.holds import HOLD_IN_DOUBT
from tokenforge.money import Money, format_amount
from tokenforge.wire import bucket_from_proto, price_from_proto, route_kind_from_proto

log = logging.getLogger("tokenforge.gateway.call")

# How long a fallback waits for the release of the hold it leaves behind before going on.
GIVE_BACK_WAIT_S = 1.0


async def call_json(
    peers: Peers, upstream: Upstream, p: Prepared, attempts: list[Attempt]
) -> UpstreamAnswer | None:
    """A non-streamed call: the last answer (None when no channel was tried)."""
    answer: UpstreamAnswer | None = None
    while True:
        for channel in channels_to_try(p):
            answer = await post_in_protocol(
                upstream, channel, ENDPOINT_PATH[p.endpoint], p.upstream_body
            )
            attempts.append(answer.attempt)
            if answer.attempt.outcome == "ok" or not retryable(
                answer.attempt.outcome, list(p.route.retry.retry_on)
            ):
                break
        if not may_fall_back(p, attempts) or not await fall_back(peers, p, attempts):
            return answer


async def call_stream(
    peers: Peers, upstream: Upstream, p: Prepared, attempts: list[Attempt]
) -> UpstreamStream | None:
    """A streamed call: the open upstream stream (usage always asked for: the charge
    needs it), or None when every channel (and route) failed before the first byte."""
    options = p.upstream_body.get("stream_options")
    while True:
        p.upstream_body["stream_options"] = {**(options or {}), "include_usage": True}
        for channel in channels_to_try(p):
            # In the channel's protocol, its stream read back as chat chunks.
            call = protocol_for(channel.protocol)
            body = call.request(p.upstream_body)
            reader = None if call.name == OPENAI_CHAT else call.reader()
            response, attempt = await open_stream(upstream, channel, call.path, body, reader)
            attempts.append(attempt)
            if response is not None:
                return response
            if not retryable(attempt.outcome, list(p.route.retry.retry_on)):
                break
        # Nothing has reached the client yet: another route may still be tried.
        if not may_fall_back(p, attempts) or not await fall_back(peers, p, attempts):
            return None


async def post_in_protocol(
    upstream: Upstream, channel: routing_pb2.Channel, path: str, body: dict[str, Any]
) -> UpstreamAnswer:
    """One call that is not streamed, in the channel's protocol (domain/protocols/), its
    answer read back as a chat completion (an answer the protocol does not recognise is
    the attempt's failure, `bad_answer`)."""
    if path != ENDPOINT_PATH[CHAT]:
        return await upstream.post_json(channel, path, body)
    call = protocol_for(channel.protocol)
    answer = await upstream.post_json(channel, call.path, call.request(body))
    if call.name == OPENAI_CHAT or answer.attempt.outcome != "ok" or answer.payload is None:
        return answer
    chat = call.answer(answer.payload)
    if chat is None:
        return UpstreamAnswer(answer.status, None, replace(answer.attempt, outcome="bad_answer"))
    return UpstreamAnswer(answer.status, chat, answer.attempt)


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
    route's bucket at its prices first, then give back the reservation of the route
    left behind (nothing is charged for it). A route whose bucket cannot pay is skipped
    (listed, no hold). False when no route is left: the request then ends on the route
    it is on."""
    admitted = p.admitted
    while p.next_fallback < len(p.resolved.fallback_routes):
        route: routing_pb2.Route = p.resolved.fallback_routes[p.next_fallback]
        p.next_fallback += 1
        price = price_from_proto(bucket_from_proto(route.bucket), route.prices)
        plan = plan_for(p.cmd.body, p.endpoint, p.resolved, price)
        key = f"{p.cmd.request_id}/route-{p.next_fallback + 1}"
        try:
            hold, plan = await take_hold(peers, admitted, price, plan, hold_ttl(route), key)
        except HoldInDoubt as doubt:
            # The request ends on the route it is on; its receipt lists this one as
            # asked for and not answered, and the hold, if placed, is released.
            p.route_attempts.append(route_attempt(route, "", HOLD_IN_DOUBT, 0))
            give_back_in_doubt(peers, doubt)
            raise
        except DomainError as error:
            if error.reason is not Reason.INSUFFICIENT_BALANCE:
                raise
            p.route_attempts.append(route_attempt(route, "", "insufficient_balance", 0))
            continue
        left, given_back = p.route, p.reservation
        # From here the new hold is the request's: whatever happens next ends it.
        p.fallback_route, p.reservation = route, hold
        p.price, p.plan = price, plan
        p.upstream_body = upstream_body(p.cmd, p.endpoint, route, plan)
        on_left = len(attempts) - p.earlier_attempts
        p.route_attempts.append(route_attempt(left, given_back.hold_id, "fell_back", on_left))
        p.earlier_attempts = len(attempts)
        reason = f"fallback_to_{route_kind_from_proto(route.kind)}"
        try:
            # Waited for a moment only: with the wallet away, the release goes on in its
            # own task until the wallet answers (flow/reservation.py OwnHold).
            await asyncio.wait_for(given_back.give_back(PeerEnds(peers), reason), GIVE_BACK_WAIT_S)
        except TimeoutError:
            log.warning(
                "hold %s left behind by %s: released once the wallet answers",
                given_back.hold_id,
                p.cmd.request_id,
            )
        except Exception as error:  # noqa: BLE001 - the request goes on; the hold expires
            log.warning(
                "hold %s left behind by %s not released (%r); it ends by its TTL",
                given_back.hold_id,
                p.cmd.request_id,
                error,
            )
        log.info(
            "request %s falls back from the %s route to the %s route",
            p.cmd.request_id,
            route_kind_from_proto(left.kind),
            route_kind_from_proto(route.kind),
        )
        return True
    return False


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


def policy_words(policy: int) -> str:
    words = {
        routing_pb2.CHARGE_POLICY_PROMPT_ONLY: "the prompt is charged",
        routing_pb2.CHARGE_POLICY_AS_REPORTED: "what the upstream reports is charged",
    }
    return str(words.get(policy, "failed requests are free"))  # type: ignore[call-overload]


def charge_policy_name(policy: int) -> str:
    names = {
        routing_pb2.CHARGE_POLICY_PROMPT_ONLY: "prompt_only",
        routing_pb2.CHARGE_POLICY_AS_REPORTED: "as_reported",
    }
    return str(names.get(policy, "none"))  # type: ignore[call-overload]
