"""The one money type and the one rounding rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenforge.money import Bucket, Money, MoneyError, Price, format_amount, parse_amount

PRICE = Price(Bucket.CREDIT, input_per_million=2_500_000, output_per_million=10_000_000)


def test_amounts_read_with_symbol_and_trimmed_decimals() -> None:
    assert format_amount(12_500_000, Bucket.CREDIT) == "12.5 CR"
    assert format_amount(42, Bucket.ROUTED) == "0.000042 RB"
    assert format_amount(-1_000_000, Bucket.CREDIT) == "-1 CR"
    assert format_amount(0, Bucket.ROUTED) == "0 RB"


def test_parse_amount_is_exact_and_refuses_more_than_six_decimals() -> None:
    assert parse_amount("12.5") == 12_500_000
    assert parse_amount("-0.000001") == -1
    with pytest.raises(MoneyError):
        parse_amount("0.0000001")
    with pytest.raises(MoneyError):
        parse_amount("ten")


def test_buckets_never_mix_in_arithmetic() -> None:
    with pytest.raises(MoneyError):
        _ = Money(1, Bucket.CREDIT) + Money(1, Bucket.ROUTED)


def test_floats_are_refused_as_amounts() -> None:
    with pytest.raises(MoneyError):
        Money(1.5, Bucket.CREDIT)  # type: ignore[arg-type]


def test_charge_rounds_up_once_at_the_end() -> None:
    # 3 input tokens at 2.5 CR/1M = 7.5 micro-CR -> 8; never 3 x ceil(2.5).
    assert PRICE.charge(3, 0).micros == 8
    assert PRICE.charge(1_000_000, 1_000_000).micros == 12_500_000


def test_cached_tokens_use_the_cached_price() -> None:
    price = Price(Bucket.CREDIT, 2_000_000, 0, cached_input_per_million=500_000)
    assert price.charge(1000, 0, cached_tokens=400).micros == (600 * 2 + 400 // 2)


@given(
    prompt=st.integers(0, 10**7),
    completion=st.integers(0, 10**6),
    inp=st.integers(0, 10**8),
    out=st.integers(0, 10**8),
)
def test_charge_is_within_one_micro_above_the_exact_figure(
    prompt: int, completion: int, inp: int, out: int
) -> None:
    price = Price(Bucket.ROUTED, inp, out)
    exact_times_million = prompt * inp + completion * out
    charged = price.charge(prompt, completion).micros
    assert charged * 1_000_000 >= exact_times_million
    assert (charged - 1) * 1_000_000 < exact_times_million or charged == 0


@given(budget=st.integers(0, 10**9), prompt=st.integers(0, 10**5))
def test_max_output_for_budget_never_exceeds_the_budget(budget: int, prompt: int) -> None:
    cap = PRICE.max_output_for(Money(budget, Bucket.CREDIT), prompt)
    if cap > 0:
        assert PRICE.worst_case(prompt, cap).micros <= budget
        assert PRICE.worst_case(prompt, cap + 1).micros > budget or cap == 0


def test_cache_writes_use_the_cache_write_price_and_default_to_the_input_price() -> None:
    price = Price(Bucket.CREDIT, 2_000_000, 0, 500_000, cache_write_per_million=3_000_000)
    # 1000 prompt tokens: 400 read from the cache, 100 written to it, 500 fresh.
    assert price.charge(1000, 0, cached_tokens=400, cache_write_tokens=100).micros == (
        500 * 2 + 400 // 2 + 100 * 3
    )
    assert Price(Bucket.CREDIT, 2_000_000, 0).cache_write == 2_000_000


@given(
    prompt=st.integers(0, 10**6),
    cap=st.integers(0, 10**5),
    cached=st.integers(0, 10**6),
    written=st.integers(0, 10**6),
    completion=st.integers(0, 10**5),
    prices=st.tuples(*(st.integers(0, 10**8) for _ in range(4))),
)
def test_the_worst_case_covers_any_split_of_the_prompt_into_token_classes(
    prompt: int,
    cap: int,
    cached: int,
    written: int,
    completion: int,
    prices: tuple[int, int, int, int],
) -> None:
    price = Price(Bucket.CREDIT, prices[0], prices[1], prices[2], 0, prices[3])
    charged = price.charge(prompt, min(completion, cap), cached, written)
    assert charged.micros <= price.worst_case(prompt, cap).micros
