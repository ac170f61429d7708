"""What a bucket receives for money paid: the one place rates live.

A rate is an integer number of bucket micro-units per minor unit of the currency
(per cent), so `received_micros = paid_amount_minor x rate` is exact: no floats.
The rate applied is stored on the order at creation and never recomputed.
"""

from __future__ import annotations

from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

# 1 USD = 1 CR and 1 USD = 1 RB: 100 cents -> 1,000,000 micro-units;
# 1 EUR = 1.08 CR and 1.08 RB: 100 euro cents -> 1,080,000 micro-units.
RATES: dict[tuple[Bucket, str], int] = {
    (Bucket.CREDIT, "USD"): 10_000,
    (Bucket.ROUTED, "USD"): 10_000,
    (Bucket.CREDIT, "EUR"): 10_800,
    (Bucket.ROUTED, "EUR"): 10_800,
}


def rate_for(bucket: Bucket, currency: str) -> int:
    """Micro-units of `bucket` per minor unit of `currency`."""
    try:
        return RATES[(bucket, currency)]
    except KeyError:
        known = sorted({c for b, c in RATES if b is bucket})
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"{bucket.label} cannot be bought with {currency}; pay in {', '.join(known)}.",
            {"param": "currency", "currency": currency},
        ) from None


def received_micros(bucket: Bucket, currency: str, paid_amount_minor: int) -> tuple[int, int]:
    """(micro-units the bucket receives, rate applied)."""
    rate = rate_for(bucket, currency)
    return paid_amount_minor * rate, rate
