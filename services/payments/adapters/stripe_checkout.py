"""Stripe through the `stripe` library: Checkout Sessions and signed webhooks.

Webhooks are verified from the raw body and its `Stripe-Signature` header
(`t=<unix time>,v1=<HMAC-SHA256 of "t.body">`). Every configured secret is tried, so
a secret can be rotated without refusing events signed with the old one. Stripe's
own tolerance only refuses old timestamps; this module refuses timestamps more
than `tolerance_s` away from now in both directions (a future-dated signature is
as suspect as a stale one).

Configuration (environment):
- TOKENFORGE_STRIPE_API_KEY: the secret API key (`sk_...`); empty turns Stripe off;
- TOKENFORGE_STRIPE_WEBHOOK_SECRETS: comma-separated `whsec_...` secrets;
- TOKENFORGE_STRIPE_API_BASE: another API address (a local fake in tests);
- TOKENFORGE_STRIPE_SUCCESS_URL / TOKENFORGE_STRIPE_CANCEL_URL: where Checkout sends
  the user back; `{ORDER_ID}` is replaced by the order id.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import stripe

from services.payments.domain.checkout import CheckoutPage, CheckoutSession, ProviderEvent
from services.payments.domain.model import Order
from tokenforge.errors import DomainError, Reason

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_S = 300
# Stripe refuses a Checkout Session `expires_at` less than 30 minutes away.
MIN_SESSION_LIFETIME = timedelta(minutes=30)
SIGNATURE_HEADER = "stripe-signature"


@dataclass(frozen=True)
class StripeSettings:
    api_key: str = ""
    webhook_secrets: tuple[str, ...] = ()
    api_base: str = ""
    success_url: str = "http://localhost:8080/console/topups/{ORDER_ID}?paid=1"
    cancel_url: str = "http://localhost:8080/console/topups/{ORDER_ID}?canceled=1"
    tolerance_s: int = DEFAULT_TOLERANCE_S

    @property
    def configured(self) -> bool:
        return bool(self.api_key)

    @classmethod
    def from_env(cls) -> StripeSettings:
        def env(name: str) -> str:
            return os.environ.get(f"TOKENFORGE_STRIPE_{name}", "").strip()

        secrets = tuple(s.strip() for s in env("WEBHOOK_SECRETS").split(",") if s.strip())
        defaults = cls()
        return cls(
            api_key=env("API_KEY"),
            webhook_secrets=secrets,
            api_base=env("API_BASE"),
            success_url=env("SUCCESS_URL") or defaults.success_url,
            cancel_url=env("CANCEL_URL") or defaults.cancel_url,
        )


def refused(message: str) -> DomainError:
    return DomainError(
        Reason.INVALID_ARGUMENT,
        f"Stripe webhook refused: {message} Nothing was changed.",
        {"param": SIGNATURE_HEADER, "provider": "stripe"},
    )


def signed_at(header: str) -> int:
    """The `t=` of a Stripe-Signature header."""
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            return int(value)
    raise refused("the Stripe-Signature header has no timestamp (t=...).")


def verify_signature(
    body: bytes,
    header: str,
    secrets: tuple[str, ...],
    now: datetime,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Refuse unless one of `secrets` signed `body` within `tolerance_s` of `now`."""
    if not header:
        raise refused("no Stripe-Signature header.")
    if not secrets:
        raise refused("no webhook secret is configured (TOKENFORGE_STRIPE_WEBHOOK_SECRETS).")
    skew = signed_at(header) - int(now.timestamp())
    if skew < -tolerance_s:
        raise refused(f"its timestamp is {-skew} s old (more than {tolerance_s} s): a replay?")
    if skew > tolerance_s:
        raise refused(f"its timestamp is {skew} s in the future (more than {tolerance_s} s).")
    for secret in secrets:
        try:
            # Time is checked above in both directions; here only the signature.
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance=None)
        except stripe.SignatureVerificationError:
            continue
        return
    raise refused("the signature matches none of the webhook secrets.")


def parse_event(body: bytes) -> ProviderEvent:
    try:
        data = json.loads(body)
        obj = data["data"]["object"]
        metadata = obj.get("metadata") or {}
        return ProviderEvent(
            event_id=str(data["id"]),
            type=str(data["type"]),
            object_id=str(obj.get("id", "")),
            order_id=str(metadata.get("order_id", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "Stripe webhook refused: the body is not a Stripe event. Nothing was changed.",
            {"provider": "stripe"},
        ) from None


def _unavailable(action: str, error: Exception) -> DomainError:
    return DomainError(
        Reason.SERVICE_UNAVAILABLE,
        f"Stripe could not {action} right now ({error.__class__.__name__}); nothing was "
        "charged. Try again in a moment.",
        {"provider": "stripe"},
    )


class StripeCheckout:
    """The CardCheckout port on the real `stripe` library (async, over httpx)."""

    def __init__(self, settings: StripeSettings) -> None:
        self.settings = settings
        self._client = stripe.StripeClient(
            settings.api_key,
            base_addresses={"api": settings.api_base} if settings.api_base else None,
            http_client=stripe.HTTPXClient(),
            max_network_retries=2,
        )

    async def open_page(self, order: Order) -> CheckoutPage:
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": order.order_id,
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": order.currency.lower(),
                        "unit_amount": order.paid_amount_minor,
                        "product_data": {
                            "name": f"Top-up: {order.describe_received()} to {order.bucket.label}"
                        },
                    },
                }
            ],
            "metadata": {
                "order_id": order.order_id,
                "account_id": order.account_id,
                "amount": str(order.paid_amount_minor),
                "currency": order.currency,
            },
            "payment_intent_data": {"metadata": {"order_id": order.order_id}},
            "success_url": self.settings.success_url.replace("{ORDER_ID}", order.order_id),
            "cancel_url": self.settings.cancel_url.replace("{ORDER_ID}", order.order_id),
        }
        if order.expires_at - order.created_at >= MIN_SESSION_LIFETIME:
            params["expires_at"] = int(order.expires_at.timestamp())
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"topup-{order.order_id}"},
            )
        except stripe.StripeError as error:
            log.warning("stripe: creating a checkout session failed: %s", error)
            raise _unavailable("open a checkout page", error) from error
        return CheckoutPage(session_id=str(session.id), url=str(session.url or ""))

    async def read_session(self, session_id: str) -> CheckoutSession:
        try:
            session = await self._client.v1.checkout.sessions.retrieve_async(session_id)
        except stripe.StripeError as error:
            log.warning("stripe: reading checkout session %s failed: %s", session_id, error)
            raise _unavailable("confirm the payment", error) from error
        data = session.to_dict()
        intent = data.get("payment_intent") or ""
        if isinstance(intent, dict):
            intent = intent.get("id", "")
        return CheckoutSession(
            session_id=str(data.get("id", "")),
            order_id=str((data.get("metadata") or {}).get("order_id", "")),
            payment_status=str(data.get("payment_status", "")),
            amount_total=int(data.get("amount_total") or 0),
            currency=str(data.get("currency", "")).upper(),
            payment_intent=str(intent),
        )

    async def close_page(self, session_id: str) -> None:
        """Expire the Checkout Session: Stripe's page then takes no payment."""
        try:
            await self._client.v1.checkout.sessions.expire_async(session_id)
        except stripe.StripeError as error:
            log.warning("stripe: expiring checkout session %s failed: %s", session_id, error)
            raise _unavailable("close the checkout page", error) from error

    def verify_event(self, body: bytes, headers: Mapping[str, str], now: datetime) -> ProviderEvent:
        verify_signature(
            body,
            headers.get(SIGNATURE_HEADER, ""),
            self.settings.webhook_secrets,
            now,
            self.settings.tolerance_s,
        )
        return parse_event(body)
