"""What the payments use cases need from a card provider with hosted checkout pages
(Stripe), as plain values: open a page for an order, re-read it, and turn a signed
webhook into a verified event. The Stripe implementation is in
`services.payments.adapters.stripe_checkout`; tests use fakes of the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .model import Order

# Event types that say a Checkout Session was paid, expired or failed.
SESSION_PAID = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
SESSION_EXPIRED = "checkout.session.expired"
SESSION_FAILED = "checkout.session.async_payment_failed"


@dataclass(frozen=True)
class CheckoutPage:
    """A hosted payment page opened for one order."""

    session_id: str
    url: str


@dataclass(frozen=True)
class CheckoutSession:
    """A Checkout Session as the provider reports it when asked (never from a webhook)."""

    session_id: str
    order_id: str
    payment_status: str
    amount_total: int
    currency: str
    payment_intent: str

    @property
    def paid(self) -> bool:
        return self.payment_status == "paid"


@dataclass(frozen=True)
class ProviderEvent:
    """A webhook whose signature and timestamp were verified."""

    event_id: str
    type: str
    # The id of the object the event is about (a Checkout Session id).
    object_id: str
    # The order the object names in its metadata ("" when none).
    order_id: str


class CardCheckout(Protocol):
    """A card provider with hosted checkout pages and signed webhooks."""

    async def open_page(self, order: Order) -> CheckoutPage: ...

    async def read_session(self, session_id: str) -> CheckoutSession: ...

    async def close_page(self, session_id: str) -> None:
        """Stop the page taking payments (the order was canceled)."""

    def verify_event(
        self, body: bytes, headers: Mapping[str, str], now: datetime
    ) -> ProviderEvent: ...
