"""Payment providers behind one small interface.

A provider says which buckets and currencies it takes and what a confirmed payment
means for an order. Today only `sandbox` exists (dev and demos, driven by
SimulateSandboxOutcome). Adding one is a subclass plus a line in `PROVIDERS`:
`manual_transfer` would set `needs_review` (a bank transfer is checked by an
operator), `stripe` would not (a card payment never needs review); webhook signature
checks belong to the transport layer, not here.
"""

from __future__ import annotations

from typing import ClassVar

from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

# A sensible cap per order: 10,000.00 in the currency's major unit.
MAX_PAID_AMOUNT_MINOR = 1_000_000


class Provider:
    """What every provider answers. Subclasses set the class attributes."""

    name: ClassVar[str]
    label: ClassVar[str]
    currencies: ClassVar[frozenset[str]]
    buckets: ClassVar[frozenset[Bucket]]
    # Whether SimulateSandboxOutcome may drive its orders.
    simulated: ClassVar[bool] = False
    # Whether a confirmed payment waits for an operator (a bank transfer) instead of
    # succeeding at once (a card payment never needs review).
    needs_review: ClassVar[bool] = False

    @property
    def default_currency(self) -> str:
        return sorted(self.currencies)[0]

    def check_order(self, bucket: Bucket, currency: str, paid_amount_minor: int) -> None:
        """Refuse an order this provider cannot take, saying what would work."""
        if bucket not in self.buckets:
            names = ", ".join(f"`{b.value}`" for b in sorted(self.buckets))
            raise DomainError(
                Reason.PROVIDER_NOT_ALLOWED,
                f"{self.label} cannot fund {bucket.label}; it funds {names}.",
                {"provider": self.name, "bucket": bucket.value},
            )
        if currency not in self.currencies:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"{self.label} takes {', '.join(sorted(self.currencies))}, not {currency!r}.",
                {"param": "currency", "provider": self.name},
            )
        if paid_amount_minor <= 0 or paid_amount_minor > MAX_PAID_AMOUNT_MINOR:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"The top-up amount must be between 1 and {MAX_PAID_AMOUNT_MINOR} minor units "
                f"(cents) of {currency}; got {paid_amount_minor}.",
                {"param": "paid_amount_minor"},
            )


class SandboxProvider(Provider):
    """Fake money for dev and demos: funds both buckets in USD."""

    name = "sandbox"
    label = "Sandbox"
    currencies = frozenset({"USD"})
    buckets = frozenset({Bucket.CREDIT, Bucket.ROUTED})
    simulated = True


PROVIDERS: dict[str, Provider] = {p.name: p for p in (SandboxProvider(),)}


def provider_named(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise DomainError(
            Reason.PROVIDER_NOT_ALLOWED,
            f"Unknown payment provider {name!r}; use one of: {', '.join(sorted(PROVIDERS))}.",
            {"provider": name},
        ) from None
