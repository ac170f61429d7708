"""`usage.cost` is a JSON number made from integer micros: written by orjson and read
back as a Decimal, it is exactly micros / 10**6, for every amount money can hold. Error
details carry amounts and counts as JSON integers."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.presenting import cost_fields, cost_number
from tokenforge.errors import DomainError, Reason, anthropic_error_body, openai_error_body
from tokenforge.money import MAX_AMOUNT_MICROS, Bucket, Money


def read_back(micros: int) -> Decimal:
    """What a client that parses numbers as decimals reads from the serialized cost."""
    text = orjson.dumps({"cost": cost_number(micros)})
    value = json.loads(text, parse_float=Decimal, parse_int=Decimal)["cost"]
    assert isinstance(value, Decimal)
    return value


@settings(max_examples=3000)
@given(st.integers(min_value=-MAX_AMOUNT_MICROS, max_value=MAX_AMOUNT_MICROS))
def test_the_number_parses_back_to_exactly_the_micros(micros: int) -> None:
    assert read_back(micros) == Decimal(micros).scaleb(-6)


EDGES = [
    0,
    1,
    9,
    10,
    170,
    999_999,
    1_000_000,
    1_000_001,
    123_456_789,
    999_999_999_999_999,
    123_456_789_012_345,
    MAX_AMOUNT_MICROS - 1,
    MAX_AMOUNT_MICROS,
    -1,
    -MAX_AMOUNT_MICROS,
]


@pytest.mark.parametrize("micros", EDGES)
def test_edges_parse_back_exactly(micros: int) -> None:
    assert read_back(micros) == Decimal(micros).scaleb(-6)


def test_every_micro_in_a_dense_range_parses_back_exactly() -> None:
    # Every cost below 0.2 units, and a run of micros near the largest amount.
    for micros in [*range(0, 200_000), *range(MAX_AMOUNT_MICROS - 50_000, MAX_AMOUNT_MICROS + 1)]:
        assert read_back(micros) == Decimal(micros).scaleb(-6), micros


def test_an_amount_beyond_what_money_holds_is_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match="MAX_AMOUNT_MICROS"):
        cost_number(MAX_AMOUNT_MICROS + 1)


def test_cost_fields_are_a_number_an_integer_and_the_unit() -> None:
    fields = cost_fields(Money(170, Bucket.CREDIT))
    assert fields == {
        "cost": 0.00017,
        "cost_micros": 170,
        "cost_currency": Bucket.CREDIT.symbol,
        "cost_bucket": "credit",
    }
    wire = json.loads(orjson.dumps(fields))
    assert type(wire["cost"]) is float and type(wire["cost_micros"]) is int


def test_error_details_carry_amounts_and_counts_as_integers() -> None:
    error = DomainError(
        Reason.INSUFFICIENT_BALANCE,
        "Not enough balance: top up.",
        {
            "bucket": "credit",
            "available_micros": "10",
            "requested_micros": "-25",
            "charge_micros": "0",
            "retry_after_s": "3",
            "request_id": "123",
            "cap_micros": "",
        },
    )
    expected = {
        "bucket": "credit",
        "available_micros": 10,
        "requested_micros": -25,
        "charge_micros": 0,
        "retry_after_s": 3,
        "request_id": "123",  # an id, even when it looks like a number
        "cap_micros": "",  # not a number: left as it came
    }
    openai = json.loads(orjson.dumps(openai_error_body(error)))
    anthropic = json.loads(orjson.dumps(anthropic_error_body(error, "req")))
    assert openai["error"]["details"] == expected
    assert anthropic["error"]["details"] == expected
