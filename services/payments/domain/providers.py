"""Payment providers behind one small interface.

A provider says which buckets and currencies it takes, how long its orders wait
for payment, and what a confirmed payment means for an order:

- `sandbox`: dev and demos, driven by SimulateSandboxOutcome. It pays an order with
  no payment at all, so it mints balance: it is offered only where configured
  (`ProvidersOn`, TOKENFORGE_SANDBOX_PROVIDER=on, set by `tokenforge dev`), and
  production refuses to start with it (tokenforge.config.unsafe_for_prod);
- `manual_transfer`: a bank transfer; the user submits its reference and an operator
  approves or rejects it (`takes_transfer_proof`), so its orders live for days;
- `stripe`: a card payment through a Stripe Checkout Session, confirmed by a signed
  webhook (`has_webhooks`); it never needs review unless the amounts disagree.

Adding one is a subclass plus a line in `PROVIDERS`. Talking to the provider (its
API, its webhook signatures) lives in `services.payments.adapters`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class ProvidersOn:
    """The providers this deployment offers. A provider that is off takes no new order
    and no simulated outcome; its orders already open still move by their own rules.

    - `manual_transfer` is always on: its orders credit only once an operator approves;
    - `stripe` is on when card payments are configured (TOKENFORGE_STRIPE_API_KEY);
    - `sandbox` is on only when configured (TOKENFORGE_SANDBOX_PROVIDER=on): it mints
      balance. When it is on it is also the default of an order that names no
      provider (dev and demos); otherwise such an order is refused, naming the
      providers that are on.
    """

    names: frozenset[str]

    @classmethod
    def configured(cls, *, sandbox: bool, card: bool) -> ProvidersOn:
        names = {ManualTransferProvider.name}
        if sandbox:
            names.add(SandboxProvider.name)
        if card:
            names.add(StripeProvider.name)
        return cls(frozenset(names))

    @property
    def listed(self) -> str:
        return ", ".join(f"`{name}`" for name in sorted(self.names))

    def choose(self, name: str) -> Provider:
        """The provider an order names (the default when it names none), if it is on."""
        if not name:
            if SandboxProvider.name in self.names:
                return PROVIDERS[SandboxProvider.name]
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"Say which payment provider pays this top-up: one of {self.listed}.",
                {"param": "provider", "available": ",".join(sorted(self.names))},
            )
        provider = provider_named(name)
        if provider.name not in self.names:
            raise DomainError(
                Reason.PROVIDER_NOT_ALLOWED,
                f"{provider.label} (`{provider.name}`) is not offered on this deployment; "
                f"top up with one of {self.listed}.",
                {"provider": provider.name, "available": ",".join(sorted(self.names))},
            )
        return provider

    def check_simulated(self) -> None:
        """Refuse a simulated outcome when no simulated provider is on (reads as
        missing, like a route that does not exist here)."""
        if not any(PROVIDERS[name].simulated for name in self.names):
            raise DomainError(
                Reason.NOT_FOUND,
                "Simulated payments (the sandbox provider) are off on this deployment; "
                f"top-ups are paid through {self.listed}.",
                {"provider": SandboxProvider.name},
            )
