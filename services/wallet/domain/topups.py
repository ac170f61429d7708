"""Whether payments confirms a top-up credit (S1: only payments create balance).

A `topup.succeeded` event is a claim; the wallet credits it only when the order
payments keeps says the same thing: it exists on that account, it succeeded (paid,
or approved by an operator), and it credits the same bucket with the same amount.
Anything else is a forged or corrupted event: it credits nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenforge.money import Bucket

from .commands import CreditTopUp

SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class ConfirmedOrder:
    """The order as payments answers it (GetTopUp)."""

    order_id: str
    account_id: str
    bucket: Bucket | None
    received_micros: int
    status: str


def refusal(credit: CreditTopUp, order: ConfirmedOrder | None) -> str:
    """Why payments' order does not confirm `credit`; empty when it does."""
    if order is None:
        return (
            f"payments has no order {credit.order_id} on account {credit.account_id}: "
            "the event was not published by payments"
        )
    problems = []
    if order.order_id != credit.order_id or order.account_id != credit.account_id:
        problems.append(f"payments answered order {order.order_id} of {order.account_id}")
    if order.status != SUCCEEDED:
        problems.append(f"the order is {order.status or 'of no status'}, not {SUCCEEDED}")
    if order.bucket is not credit.bucket:
        named = order.bucket.value if order.bucket else "no bucket"
        problems.append(f"the order credits {named}, the event {credit.bucket.value}")
    if order.received_micros != credit.amount:
        problems.append(
            f"the order credits {order.received_micros} micro-units, the event {credit.amount} "
            "micro-units"
        )
    if not problems:
        return ""
    return f"payments does not confirm order {credit.order_id}: " + "; ".join(problems)
