"""Stage 4, finish: the settlement table decides the charge, the receipt is made, and
the request's reservation ends with them (queued durably for the relay, or done now:
services/gateway/flow/reservation.py). Only then may the client see the charge.

Every way a request can end comes here exactly once: an answer, an upstream failure, a
client that goes away (`abandon`: charged by the table, or nothing for an unanswered
request), a cancellation, an unexpected error. A second finish answers the first.
The outcome report to routing (channel attempts, the charge, the lease's end) leaves
after, off the answer's path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from opentelemetry import trace

from services.gateway import metrics
from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Attempt
from services.gateway.domain.planning import Usage, counted_usage
from services.gateway.domain.protocols import OPENAI_CHAT
from services.gateway.domain.settlement import Rule, Settlement, settle
from services.gateway.flow.admit import ENDPOINT_NAME
from services.gateway.flow.background import in_background
from services.gateway.flow.call import charge_policy_name, route_attempt
from services.gateway.flow.ends import PeerEnds, receipt_pending
from services.gateway.flow.report import report_outcome
from services.gateway.flow.reservation import Ended, Queued, State
from services.gateway.flow.reserve import HoldInDoubt, Prepared
from tokenforge.errors import DomainError, Reason, error_code
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.money import Money, format_amount
from tokenforge.wire import (
    bucket_from_proto,
    price_to_proto,
    route_kind_from_proto,
    timestamp,
)

log = logging.getLogger("tokenforge.gateway.finish")

# How long a request's answer waits for its finish: longer only when the finish queue and
# the wallet are both unreachable (a PostgreSQL restart), and the finish is tried again
# (flow/reservation.py); the answer then names the charge being settled.
FINISH_WAIT_S = 20.0


def new_receipt(p: Prepared, attempts: list[Attempt]) -> usage_pb2.Receipt:
    hold_id = p.reservation.hold_id
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
        hold_id=hold_id,
        trace_id=p.cmd.trace_id,
        catalog_version=p.resolved.catalog_version,
        endpoint=ENDPOINT_NAME[p.endpoint],
        fallback_used=len(attempts) > 1 or p.fell_back,
        run_id=p.cmd.run_id,
        client_format=p.cmd.client_format,
        channel_protocol=answered_protocol(p, attempts),
    )
    if p.route_attempts:
        receipt.route_attempts.extend(p.route_attempts)
        receipt.route_attempts.append(
            route_attempt(p.route, hold_id, "final", len(attempts) - p.earlier_attempts)
        )
    receipt.started_at.CopyFrom(timestamp(p.admitted.started))
    return receipt


def answered_protocol(p: Prepared, attempts: list[Attempt]) -> str:
    """The protocol of the channel that answered ("" when none did)."""
    if not attempts or attempts[-1].outcome != "ok":
        return ""
    channel = next((c for c in p.route.channels if c.channel_id == attempts[-1].channel_id), None)
    return (channel.protocol or OPENAI_CHAT) if channel is not None else ""


def settlement_of(p: Prepared, rule: Rule, reported: Usage | None, counted: Usage) -> Settlement:
    return settle(
        rule,
        p.price,
        p.reservation.amount,
        max_output_tokens=p.plan.max_output_tokens * p.plan.choices,
        reported=reported,
        counted=counted,
        charge_policy=charge_policy_name(p.route.charge_policy),
    )


async def finish(
    peers: Peers,
    p: Prepared,
    attempts: list[Attempt],
    rule: Rule,
    reported: Usage | None,
    counted: Usage,
    error_code: str = "",
) -> tuple[usage_pb2.Receipt, Money]:
    """End the request's reservation by the settlement table (once; a second finish
    answers the first): the answer's receipt and charge. The first finish runs in its
    own task, so a caller that goes away never cuts it (nor its bookkeeping) short."""
    if p.finishing is None:
        settlement = settlement_of(p, rule, reported, counted)
        p.finishing = asyncio.ensure_future(
            _first_finish(peers, p, attempts, settlement, error_code)
        )
        p.finishing.add_done_callback(_logged)
        p.settled_charge = settlement.charge
    try:
        return await asyncio.wait_for(asyncio.shield(p.finishing), FINISH_WAIT_S)
    except TimeoutError:
        # The finish goes on (tried again until the hold's margin runs out); the client
        # hears now what it will be charged and where the receipt will be.
        raise not_finished_yet(p) from None


def not_finished_yet(p: Prepared) -> DomainError:
    """The answer of a request whose finish is still being tried (its database
    restarting): the charge it is being settled for and where its receipt will be, or
    that nothing is charged."""
    charge, request_id = p.settled_charge, p.cmd.request_id
    if charge is None or charge.micros == 0:
        return DomainError(
            Reason.SERVICE_UNAVAILABLE,
            f"Request {request_id} ended and nothing is charged, but its receipt could not "
            "be recorded yet. You may send it again.",
            {"request_id": request_id, "charge_micros": "0"},
        )
    entry_id = p.reservation.entry_id(request_id) if isinstance(p.reservation, Queued) else ""
    return receipt_pending(
        request_id,
        charge.micros,
        charge.bucket,
        entry_id,
        f"its charge of {format_amount(charge.micros, charge.bucket)} from "
        f"{charge.bucket.label} is being settled (our database is not answering right "
        "now), within minutes.",
    )


async def _first_finish(
    peers: Peers,
    p: Prepared,
    attempts: list[Attempt],
    settlement: Settlement,
    error_code: str,
) -> tuple[usage_pb2.Receipt, Money]:
    ended: Ended | None = None
    try:
        receipt = new_receipt(p, attempts)
        receipt.error_code = error_code
        ended = await p.reservation.finish(PeerEnds(peers), receipt, settlement)
        count_finish(p, ended)
        return _answer(p, ended)
    finally:
        charge = ended.charge if ended else None
        report_outcome(peers, p.resolved, p.cmd.request_id, attempts, charge)


def _logged(done: asyncio.Future[Any]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        if not isinstance(error, DomainError):
            log.error("a request's finish failed: %r", error)


def _answer(p: Prepared, ended: Ended) -> tuple[usage_pb2.Receipt, Money]:
    if ended.receipt is None:  # never expected: the request's reservation was given back
        raise RuntimeError(f"request {p.cmd.request_id} finished a given-back reservation")
    return ended.receipt, ended.charge


def ended_by(failure: BaseException) -> str:
    """The error code the receipt of a request that `failure` ended names: the code of
    the answer the client was given (a refusal's own; `internal_error` for a failure
    nobody planned for), or `cancelled` when the request was cancelled first."""
    if isinstance(failure, asyncio.CancelledError):
        return "cancelled"
    if isinstance(failure, DomainError):
        return error_code(failure)
    return "internal_error"


def abandon(
    peers: Peers,
    p: Prepared,
    attempts: list[Attempt],
    rule: Rule,
    reported: Usage | None = None,
    generated_chunks: int = 0,
    error_code: str = "",
) -> None:
    """The request ends without its answer (the client went away, a cancellation, an
    unexpected error): unless something ended its reservation already, finish it in the
    background, off the cancelled task: charged by the table for what was generated
    (`client_disconnect`), nothing for a request never answered (`not_answered`)."""
    if p.finishing is not None or p.reservation.state is not State.TAKEN:
        return
    in_background(
        finish(
            peers,
            p,
            attempts,
            rule,
            reported,
            counted_usage(p.cmd.body, generated_chunks),
            error_code,
        )
    )


def end_in_doubt(peers: Peers, doubt: HoldInDoubt) -> None:
    """A request answered "the wallet is unavailable, nothing was charged" while its
    Hold may have been placed: in the background, once the wallet answers, ask the same
    Hold again (same idempotency key: the wallet answers the hold it placed, or places
    it now) and release it with a receipt that charges nothing (`not_answered`,
    `service_unavailable`). Given up when the hold's TTL has passed (the wallet ended
    it) or the wallet places none (a refusal: it had placed none). (A fallback route's
    hold in doubt: flow/reserve.py `give_back_in_doubt`.)"""
    in_background(_end_in_doubt(peers, doubt))


async def _end_in_doubt(peers: Peers, doubt: HoldInDoubt) -> None:
    if (held := await doubt.placed(peers)) is None:
        return
    cmd = doubt.admitted.cmd
    p = Prepared(doubt.admitted, held, doubt.price, doubt.plan, {})
    await finish(
        peers, p, [], Rule.NOT_ANSWERED, None, counted_usage(cmd.body, 0), "service_unavailable"
    )
    log.info("request %s: its hold in doubt %s is released", cmd.request_id, held.hold_id)


def count_finish(p: Prepared, ended: Ended) -> None:
    receipt = ended.receipt
    if receipt is None:
        return
    status = usage_pb2.ReceiptStatus.Name(receipt.status).removeprefix("RECEIPT_STATUS_").lower()
    metrics.RECEIPTS.labels(status, receipt.settlement_rule).inc()
    if ended.charge.micros:
        metrics.CHARGES.labels(ended.charge.bucket.value, route_kind_from_proto(p.route.kind)).inc(
            ended.charge.micros
        )


def charged_anyway(error: DomainError) -> bool:
    """A refusal that comes after a charge was taken (`receipt_not_recorded`, or an
    upstream failure the route's policy charges for): the request must not run again
    under the same Idempotency-Key."""
    return (error.metadata or {}).get("charge_micros", "0") not in ("", "0")


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
