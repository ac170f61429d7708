"""A request that is not streamed (chat completion or embeddings), as its stages:
admit -> reserve -> call -> finish. Whatever ends it (an answer, an upstream failure,
a cancellation, an unexpected error), its reservation is ended before it returns or
raises (flow/finish.py `abandon` for the ways that bring no answer)."""

from __future__ import annotations

from typing import Any

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Attempt, Upstream
from services.gateway.domain.commands import ChatCommand
from services.gateway.domain.planning import counted_usage, usage_from_response
from services.gateway.domain.settlement import Rule
from services.gateway.flow.admit import ChatOutcome, admit
from services.gateway.flow.call import call_json, failure_rule, upstream_failed
from services.gateway.flow.finish import (
    abandon,
    answer_text_tokens,
    end_in_doubt,
    ended_by,
    finish,
)
from services.gateway.flow.reserve import HoldInDoubt, reserve
from services.gateway.presenting import cost_fields, receipt_headers, receipt_json
from tokenforge.generated.routing.v1 import routing_pb2


async def complete(
    peers: Peers, upstream: Upstream, cmd: ChatCommand, endpoint: routing_pb2.Endpoint
) -> ChatOutcome:
    upstream.check_capacity()  # refused at once, before anything is reserved
    admitted = await admit(peers, cmd, endpoint)
    try:
        p = await reserve(peers, admitted)
    except HoldInDoubt as doubt:
        end_in_doubt(peers, doubt)  # made true in the background: nothing charged
        raise
    attempts: list[Attempt] = []
    try:
        answer = await call_json(peers, upstream, p, attempts)
        reported = usage_from_response(answer.payload) if answer and answer.payload else None
        if answer is None or answer.attempt.outcome != "ok":
            code = attempts[-1].outcome if attempts else "no_channel"
            counted = counted_usage(cmd.body, 0)
            _, charged = await finish(
                peers, p, attempts, failure_rule(attempts), reported, counted, code
            )
            raise upstream_failed(p, attempts, charged)
        rule = Rule.FINISHED_WITH_USAGE if reported else Rule.FINISHED_WITHOUT_USAGE
        counted = counted_usage(cmd.body, answer_text_tokens(answer.payload or {}))
        receipt, charge = await finish(peers, p, attempts, rule, reported, counted)
    except BaseException as failure:
        # Unless finished already: nothing charged, the receipt naming the answer's code.
        abandon(peers, p, attempts, Rule.NOT_ANSWERED, error_code=ended_by(failure))
        raise
    payload: dict[str, Any] = dict(answer.payload or {})
    payload["model"] = receipt.selected_model
    payload["usage"] = {**payload.get("usage", {}), **cost_fields(charge)}
    payload["receipt"] = receipt_json(receipt)
    return ChatOutcome(200, payload, receipt, receipt_headers(receipt))
