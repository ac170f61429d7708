"""A top-up event is credited only when payments' order says the same thing (S1)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.wallet.domain.commands import CreditTopUp
from services.wallet.domain.topups import ConfirmedOrder, refusal
from tokenforge.money import Bucket

CLAIM = CreditTopUp(
    account_id="acct-1", bucket=Bucket.CREDIT, amount=1_000_000, order_id="o-1", event_id="e-1"
)
ORDER = ConfirmedOrder(
    order_id="o-1",
    account_id="acct-1",
    bucket=Bucket.CREDIT,
    received_micros=1_000_000,
    status="succeeded",
)


def test_an_order_payments_confirms_is_no_refusal() -> None:
    assert refusal(CLAIM, ORDER) == ""


def test_an_order_payments_does_not_have_is_refused() -> None:
    assert refusal(CLAIM, None) == (
        "payments has no order o-1 on account acct-1: the event was not published by payments"
    )


@pytest.mark.parametrize(
    ("order", "words"),
    [
        (replace(ORDER, received_micros=777_000_000), "the order credits 777000000 micro-units"),
        (replace(ORDER, bucket=Bucket.ROUTED), "the order credits routed, the event credit"),
        (replace(ORDER, bucket=None), "the order credits no bucket"),
        (replace(ORDER, status="pending"), "the order is pending, not succeeded"),
        (replace(ORDER, status="awaiting_review"), "the order is awaiting_review"),
        (replace(ORDER, account_id="acct-2"), "payments answered order o-1 of acct-2"),
    ],
)
def test_any_difference_from_payments_order_is_refused_with_what_differs(
    order: ConfirmedOrder, words: str
) -> None:
    reason = refusal(CLAIM, order)

    assert reason.startswith("payments does not confirm order o-1: ")
    assert words in reason
