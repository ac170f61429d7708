"""The settlement table: one rule per way a request ends."""

from __future__ import annotations

import pytest

from services.gateway.domain.planning import Usage
from services.gateway.domain.settlement import Rule, Status, settle
from tokenforge.money import Bucket, Money, Price

PRICE = Price(
    Bucket.CREDIT,
    input_per_million=2_000_000,
    output_per_million=10_000_000,
    cached_input_per_million=500_000,
)
HOLD = Money(1_000_000, Bucket.CREDIT)
REPORTED = Usage(1000, 100, 400, True)
COUNTED = Usage(900, 80, 0, False)


def apply(rule: Rule, policy: str = "none", reported: Usage | None = REPORTED, cap: int = 1024):
    return settle(
        rule,
        PRICE,
        HOLD,
        max_output_tokens=cap,
        reported=reported,
        counted=COUNTED,
        charge_policy=policy,
    )


def test_finished_with_usage_charges_reported_tokens_with_cached_price() -> None:
    s = apply(Rule.FINISHED_WITH_USAGE)
    assert s.status is Status.SUCCEEDED
    # 600 uncached x 2 + 400 cached x 0.5 + 100 x 10 (micro per token) = 1200 + 200 + 1000
    assert s.charge.micros == 2400 and s.usage == REPORTED


def test_finished_without_usage_charges_counted_tokens() -> None:
    s = apply(Rule.FINISHED_WITHOUT_USAGE, reported=None)
    assert s.status is Status.SUCCEEDED
    assert s.usage == COUNTED and not s.usage.reported


@pytest.mark.parametrize("rule", [Rule.ERROR_BEFORE_FIRST_BYTE, Rule.TIMEOUT_BEFORE_FIRST_BYTE])
def test_failure_before_first_byte_follows_the_routes_policy(rule: Rule) -> None:
    free = apply(rule, "none")
    assert free.status is Status.FAILED and free.usage is None and free.charge.micros == 0
    prompt = apply(rule, "prompt_only")
    assert prompt.usage == Usage(900, 0, 0, False)
    assert prompt.charge.micros == 1800
    reported = apply(rule, "as_reported")
    assert reported.usage == REPORTED
    nothing_reported = apply(rule, "as_reported", reported=None)
    assert nothing_reported.usage is None


@pytest.mark.parametrize("rule", [Rule.ERROR_MID_STREAM, Rule.CLIENT_DISCONNECT])
def test_broken_streams_are_partial_and_pay_for_what_was_generated(rule: Rule) -> None:
    s = apply(rule, reported=None)
    assert s.status is Status.PARTIAL and s.usage == COUNTED


def test_counted_output_is_capped_at_the_planned_cap_and_the_charge_at_the_hold() -> None:
    s = apply(Rule.FINISHED_WITHOUT_USAGE, reported=None, cap=50)
    assert s.usage is not None and s.usage.completion_tokens == 50
    huge = settle(
        Rule.FINISHED_WITH_USAGE,
        PRICE,
        Money(10, Bucket.CREDIT),
        max_output_tokens=1024,
        reported=REPORTED,
        counted=COUNTED,
    )
    assert huge.charge.micros == 10 and huge.capped_at_hold
