"""Payment providers behind one small interface.

A provider says which buckets and currencies it takes, how long its orders wait
for payment, and what a confirmed payment means for an order:

- `sandbox`: dev and demos, driven by SimulateSandboxOutcome;
- `manual_transfer`: a bank transfer; the user submits its reference and an operator
  approves or rejects it (`takes_transfer_proof`), so its orders live for days;
- `stripe`: a card payment through a Stripe Checkout Session, confirmed by a signed
  webhook (`has_webhooks`); it never needs review unless the amounts disagree.

Adding one is a subclass plus a line in `PROVIDERS`. Talking to the provider (its
API, its webhook signatures) lives in `services.payments.adapters`, not here.
"""

from __future__ import annotations

from datetime import timedelta
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
    # Whether the user submits a bank transfer reference (SubmitTransferProof).
    takes_transfer_proof: ClassVar[bool] = False
    # Whether the provider confirms payments by signed webhooks (HandleProviderEvent).
    has_webhooks: ClassVar[bool] = False
    # How long a pending order waits for its payment (overridable per deployment).
    order_ttl: ClassVar[timedelta] = timedelta(minutes=15)

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


class ManualTransferProvider(Provider):
    """A bank transfer: slow, checked by an operator before any balance is added."""

    name = "manual_transfer"
    label = "Bank transfer"
    currencies = frozenset({"EUR", "USD"})
    buckets = frozenset({Bucket.CREDIT, Bucket.ROUTED})
    needs_review = True
    takes_transfer_proof = True
    order_ttl = timedelta(days=3)


class StripeProvider(Provider):
    """A card payment on a Stripe Checkout page; never reviewed unless amounts disagree."""

    name = "stripe"
    label = "Card (Stripe)"
    currencies = frozenset({"EUR", "USD"})
    buckets = frozenset({Bucket.CREDIT, Bucket.ROUTED})
    has_webhooks = True
    # Stripe keeps a Checkout Session open for 30 minutes at least.
    order_ttl = timedelta(minutes=30)


PROVIDERS: dict[str, Provider] = {
    p.name: p for p in (SandboxProvider(), ManualTransferProvider(), StripeProvider())
}


def provider_named(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise DomainError(
            Reason.PROVIDER_NOT_ALLOWED,
            f"Unknown payment provider {name!r}; use one of: {', '.join(sorted(PROVIDERS))}.",
            {"provider": name},
        ) from None
