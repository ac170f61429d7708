"""The settlement table: one rule per way a request can end, and what it is charged.

Each rule: when it applies -> receipt status; what is charged.

- finished_with_usage: the upstream finished and reported usage -> succeeded;
  the reported tokens at the route's prices.
- finished_without_usage: the upstream finished without usage -> succeeded;
  counted tokens (the receipt says they were counted, not reported).
- error_before_first_byte: every allowed attempt failed, nothing was sent ->
  failed; by the route's policy: `none` nothing, `prompt_only` the counted
  prompt, `as_reported` what the upstream reported (usually nothing).
- timeout_before_first_byte: the last attempt timed out, nothing was sent ->
  failed; as error_before_first_byte.
- error_mid_stream: the upstream broke after the first byte -> partial; what
  was generated (reported, else counted). Never retried.
- client_disconnect: the client went away mid-stream -> partial; what was
  generated (reported, else counted); the upstream call is cancelled at once.
- not_answered: the request ended before any answer reached the client (the client
  cancelled a request that was not streamed, or the gateway failed) -> failed;
  nothing charged.

Whatever the rule, completion tokens are capped at the output cap the hold was
planned for, and the charge at the hold itself: a settle never exceeds the hold.
Cached prompt tokens are charged at the route's cached-input price.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from services.gateway.domain.planning import Usage, charge_for
from tokenforge.money import Money, Price

# A request's finish is queued before the answer; its hold (or budget) outlives the
# request by this much more, so the relay can still take the charge after a wallet
# outage of about two minutes.
FINISH_MARGIN_S = 120


class Rule(enum.StrEnum):
    FINISHED_WITH_USAGE = "finished_with_usage"
    FINISHED_WITHOUT_USAGE = "finished_without_usage"
    ERROR_BEFORE_FIRST_BYTE = "error_before_first_byte"
    TIMEOUT_BEFORE_FIRST_BYTE = "timeout_before_first_byte"
    ERROR_MID_STREAM = "error_mid_stream"
    CLIENT_DISCONNECT = "client_disconnect"
    NOT_ANSWERED = "not_answered"


class Status(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"


STATUS = {
    Rule.FINISHED_WITH_USAGE: Status.SUCCEEDED,
    Rule.FINISHED_WITHOUT_USAGE: Status.SUCCEEDED,
    Rule.ERROR_BEFORE_FIRST_BYTE: Status.FAILED,
    Rule.TIMEOUT_BEFORE_FIRST_BYTE: Status.FAILED,
    Rule.ERROR_MID_STREAM: Status.PARTIAL,
    Rule.CLIENT_DISCONNECT: Status.PARTIAL,
    Rule.NOT_ANSWERED: Status.FAILED,
}


@dataclass(frozen=True)
class Settlement:
    rule: Rule
    status: Status
    # The tokens charged (None: nothing charged, the hold is released whole).
    usage: Usage | None
    charge: Money
    capped_at_hold: bool


def _capped(usage: Usage, max_output_tokens: int) -> Usage:
    if max_output_tokens > 0 and usage.completion_tokens > max_output_tokens:
        reasoning = min(usage.reasoning_tokens, max_output_tokens)
        return replace(usage, completion_tokens=max_output_tokens, reasoning_tokens=reasoning)
    return usage


def settle(
    rule: Rule,
    price: Price,
    hold: Money,
    *,
    max_output_tokens: int,
    reported: Usage | None,
    counted: Usage,
    charge_policy: str = "none",
) -> Settlement:
    """Apply the table: which tokens are charged, the charge, and the receipt status."""
    usage: Usage | None
    if rule is Rule.NOT_ANSWERED:
        usage = None
    elif rule in (Rule.ERROR_BEFORE_FIRST_BYTE, Rule.TIMEOUT_BEFORE_FIRST_BYTE):
        if charge_policy == "prompt_only":
            usage = Usage(counted.prompt_tokens, 0, 0, False)
        elif charge_policy == "as_reported":
            usage = reported
        else:
            usage = None
    elif rule is Rule.FINISHED_WITH_USAGE:
        usage = reported or counted
    else:
        usage = reported or counted
    if usage is None:
        return Settlement(rule, STATUS[rule], None, Money(0, price.bucket), False)
    usage = _capped(usage, max_output_tokens)
    charge, capped = charge_for(price, usage, hold)
    return Settlement(rule, STATUS[rule], usage, charge, capped)
