"""Planning a request before it runs: the prompt estimate, the output cap, the hold."""

from __future__ import annotations

import pytest

from services.gateway.domain.planning import (
    Usage,
    charge_for,
    estimate_prompt_tokens,
    plan_chat,
    shrink_to_budget,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket, Money, Price

PRICE = Price(Bucket.CREDIT, input_per_million=2_500_000, output_per_million=10_000_000)


def body(text: str = "hello world", **extra: object) -> dict[str, object]:
    return {"model": "demo-chat", "messages": [{"role": "user", "content": text}], **extra}


def test_prompt_estimate_is_an_upper_bound_of_one_token_per_byte() -> None:
    small = estimate_prompt_tokens(body("hi"))
    large = estimate_prompt_tokens(body("hi" * 100))
    assert large - small == 198
    assert estimate_prompt_tokens(body("é")) > estimate_prompt_tokens(body("e"))


def test_client_cap_is_kept_and_the_worst_case_covers_every_choice() -> None:
    plan = plan_chat(body(max_tokens=100, n=3), PRICE, 1024)
    assert plan.max_output_tokens == 100 and not plan.output_cap_set_by_gateway
    assert plan.worst_case == PRICE.charge(plan.prompt_estimate, 300)


def test_without_a_cap_the_gateway_uses_the_models_max_output() -> None:
    plan = plan_chat(body(), PRICE, 1024)
    assert plan.output_cap_set_by_gateway and plan.max_output_tokens == 1024


def test_a_cap_above_the_models_max_is_refused_with_the_param() -> None:
    with pytest.raises(DomainError) as refused:
        plan_chat(body(max_tokens=5000), PRICE, 1024)
    assert refused.value.reason is Reason.INVALID_ARGUMENT
    assert (refused.value.metadata or {})["param"] == "max_tokens"


@pytest.mark.parametrize("bad", [0, -1, "10", 1.5, True])
def test_bad_max_tokens_is_refused(bad: object) -> None:
    with pytest.raises(DomainError):
        plan_chat(body(max_tokens=bad), PRICE, 1024)


def test_shrink_fits_the_available_balance_only_when_the_gateway_chose_the_cap() -> None:
    plan = plan_chat(body(), PRICE, 1024)
    available = Money(plan.worst_case.micros // 2, Bucket.CREDIT)
    smaller = shrink_to_budget(plan, PRICE, available)
    assert smaller is not None
    assert smaller.worst_case.micros <= available.micros
    assert 0 < smaller.max_output_tokens < 1024
    assert shrink_to_budget(plan_chat(body(max_tokens=10), PRICE, 1024), PRICE, available) is None
    assert shrink_to_budget(plan, PRICE, Money(0, Bucket.CREDIT)) is None


def test_shrink_never_goes_below_the_least_cap_the_channels_take() -> None:
    plan = plan_chat(body(), PRICE, 1024)
    # What pays for 10 output tokens (and the prompt) but not 16.
    ten = Money(PRICE.worst_case(plan.prompt_estimate, 10).micros, Bucket.CREDIT)
    smaller = shrink_to_budget(plan, PRICE, ten)
    assert smaller is not None and smaller.max_output_tokens == 10
    # An OpenAI Responses channel takes at least 16: the balance is too low instead.
    assert shrink_to_budget(plan, PRICE, ten, least=16) is None


def test_charge_never_exceeds_the_hold() -> None:
    hold = Money(100, Bucket.CREDIT)
    charge, capped = charge_for(PRICE, Usage(10**6, 0, 0, True), hold)
    assert charge == hold and capped
    charge, capped = charge_for(PRICE, Usage(10, 2, 0, True), hold)
    assert charge.micros == 45 and not capped
